"""The OLTs to poll: ``devices`` rows of kind ``olt``, as the optics poller needs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from collectors.onu.snmp import Target
from ispstream.db import connect

_QUERY = (
    "SELECT tenant_id, id, host(address), snmp_port, snmp_version, community, v3_user, "
    "v3_auth_protocol, v3_auth_key, v3_priv_protocol, v3_priv_key, vendor_profile, "
    "interval_optical_s, max_inflight, timeout_s, retries "
    "FROM devices WHERE kind = 'olt' ORDER BY tenant_id, id"
)


@dataclass(frozen=True)
class Olt:
    """One OLT row; secrets stay out of ``repr``."""

    tenant_id: str
    olt_id: str
    host: str
    port: int
    snmp_version: str
    community: str | None = field(repr=False)
    v3_user: str | None
    v3_auth_protocol: str | None
    v3_auth_key: str | None = field(repr=False)
    v3_priv_protocol: str | None
    v3_priv_key: str | None = field(repr=False)
    vendor_profile: str | None
    interval_s: float
    max_inflight: int
    timeout_s: float
    retries: int

    @property
    def key(self) -> str:
        """Kafka key and log name: ``tenant/olt``."""
        return f"{self.tenant_id}/{self.olt_id}"

    def target(self) -> Target:
        return Target(
            host=self.host, port=self.port, version=self.snmp_version,
            community=self.community, v3_user=self.v3_user,
            v3_auth_protocol=self.v3_auth_protocol, v3_auth_key=self.v3_auth_key,
            v3_priv_protocol=self.v3_priv_protocol, v3_priv_key=self.v3_priv_key,
            timeout_s=self.timeout_s, retries=max(0, self.retries),
            max_inflight=self.max_inflight)


def load_olts(dsn: str) -> dict[str, Olt]:
    """Every OLT of every tenant, by ``tenant/olt``."""
    with connect(dsn, autocommit=True, connect_timeout=5,
                 application_name="ispstream-collect-onu") as conn:
        rows = conn.execute(_QUERY).fetchall()
    olts = {}
    for (tenant_id, olt_id, host, port, version, community, v3_user, v3_auth, v3_auth_key,
         v3_priv, v3_priv_key, profile, interval, max_inflight, timeout_s, retries) in rows:
        olt = Olt(tenant_id, olt_id, host, int(port), version, community, v3_user, v3_auth,
                  v3_auth_key, v3_priv, v3_priv_key, profile, float(interval),
                  int(max_inflight), float(timeout_s), int(retries))
        olts[olt.key] = olt
    return olts
