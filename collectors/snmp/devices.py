"""The monitored devices as the SNMP collectors need them, read from PostgreSQL.

Rows come from the ``devices`` table (written by ``ispstream inventory apply``); the
interface poller and trap receiver take every row, the ONU optics poller the rows of
kind ``olt``. Secrets (community, v3 keys) are held in fields that stay out of ``repr``
and are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ispstream.db import connect


@dataclass(frozen=True)
class Device:
    """One device to poll and to accept traps from."""

    tenant_id: str
    id: str
    kind: str
    address: str
    port: int = 161
    version: str = "2c"
    community: str | None = field(default=None, repr=False)
    v3_user: str | None = None
    v3_auth_protocol: str | None = None
    v3_auth_key: str | None = field(default=None, repr=False)
    v3_priv_protocol: str | None = None
    v3_priv_key: str | None = field(default=None, repr=False)
    v3_engine_id: str | None = None
    interval_if_s: int = 60
    max_inflight: int = 2
    timeout_s: float = 2.0
    retries: int = 1
    # OLTs only, for the ONU optics poller. Not compared: a change of either does not
    # concern the interface poller (which restarts a device whose row changed).
    vendor_profile: str | None = field(default=None, compare=False)
    interval_optical_s: float = field(default=300.0, compare=False)

    @property
    def key(self) -> str:
        """Kafka key and log name: ``tenant/device``."""
        return f"{self.tenant_id}/{self.id}"


_COLUMNS = ("tenant_id, id, kind, host(address), snmp_port, snmp_version, community, v3_user, "
            "v3_auth_protocol, v3_auth_key, v3_priv_protocol, v3_priv_key, v3_engine_id, "
            "interval_if_s, max_inflight, timeout_s, retries, vendor_profile, "
            "interval_optical_s")


def load_devices(dsn: str, kind: str | None = None,
                 application_name: str = "ispstream-collect-snmp"
                 ) -> dict[tuple[str, str], Device]:
    """Every device of every tenant (only those of ``kind`` when given), by
    ``(tenant_id, id)``, in that order."""
    query = f"SELECT {_COLUMNS} FROM devices"
    params: tuple = ()
    if kind is not None:
        query += " WHERE kind = %s ORDER BY tenant_id, id"
        params = (kind,)
    with connect(dsn, autocommit=True, connect_timeout=5,
                 application_name=application_name) as conn:
        rows = conn.execute(query, params).fetchall()
    out = {}
    for row in rows:
        device = Device(*row[:15], timeout_s=float(row[15]), retries=int(row[16]),
                        vendor_profile=row[17], interval_optical_s=float(row[18]))
        out[(device.tenant_id, device.id)] = device
    return out
