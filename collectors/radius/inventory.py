"""The NAS table as the collector needs it: source IP -> tenant, NAS name, secret.

Loaded from PostgreSQL (table ``nas``) at start and refreshed in a background thread,
so a NAS added to the inventory is accepted without a restart. The table is swapped as
one reference, so the receive loop never sees half of a refresh.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from collectors.radius.events import nas_prefix
from ispstream.db import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Nas:
    """One NAS allowed to send accounting."""

    tenant_id: str
    nas_id: str
    ip: str
    secret: bytes = field(repr=False)
    require_message_authenticator: bool = False

    @property
    def key_prefix(self) -> str:
        return f"{self.tenant_id}/{self.nas_id}/"


class NasEntry:
    """What the receive loop needs per NAS, precomputed."""

    __slots__ = ("nas", "secret", "require_ma", "json_prefix", "key_prefix")

    def __init__(self, nas: Nas) -> None:
        self.nas = nas
        self.secret = nas.secret
        self.require_ma = nas.require_message_authenticator
        self.json_prefix = nas_prefix(nas.tenant_id, nas.nas_id, nas.ip)
        self.key_prefix = nas.key_prefix


def load_nas_table(dsn: str) -> dict[str, NasEntry]:
    """Every NAS of every tenant, by IP address (as text, e.g. ``10.0.0.1``)."""
    with connect(dsn, autocommit=True, connect_timeout=5,
                 application_name="ispstream-collect-radius") as conn:
        rows = conn.execute(
            "SELECT tenant_id, id, host(ip), secret, require_message_authenticator "
            "FROM nas"
        ).fetchall()
    table = {}
    for tenant_id, nas_id, ip, secret, require_ma in rows:
        table[ip] = NasEntry(Nas(tenant_id, nas_id, ip, secret.encode(), bool(require_ma)))
    return table


class Inventory:
    """The NAS table, refreshed every ``refresh_s`` seconds in a daemon thread."""

    def __init__(self, dsn: str, refresh_s: float) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.by_ip: dict[str, NasEntry] = {}
        self._signature: frozenset = frozenset()

    def load(self) -> None:
        """Load the table now (raises when the database cannot be read)."""
        table = load_nas_table(self._dsn)
        signature = frozenset((ip, e.nas.tenant_id, e.nas.nas_id, e.nas.secret,
                               e.require_ma) for ip, e in table.items())
        if signature != self._signature:
            log.info("NAS table: %d NAS loaded", len(table))
        self._signature = signature
        self.by_ip = table

    def lookup(self, ip: str) -> NasEntry | None:
        entry = self.by_ip.get(ip)
        if entry is None and ip.startswith("::ffff:"):
            entry = self.by_ip.get(ip[7:])  # IPv4 sender on a dual-stack socket
        return entry

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nas-inventory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self._refresh_s):
            try:
                self.load()
            except Exception as exc:  # keep the last good table
                if not failing:
                    log.warning("refreshing the NAS table failed, keeping the last one: "
                                "%s: %s", type(exc).__name__,
                                (str(exc).splitlines() or [""])[0])
                failing = True
            else:
                if failing:
                    log.info("NAS table refresh works again")
                failing = False
