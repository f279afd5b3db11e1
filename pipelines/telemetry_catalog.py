"""The inventory as the fault flow sees it: which subscriber each ONU serves, and the
threshold overrides per tenant, vendor profile and device.

Loaded from PostgreSQL (``onu_links``, ``fault_thresholds``) and refreshed on a
background thread like ``pipelines.catalog``: rows whose ``updated_at`` moved every
``refresh_s``, everything (deletions included) every ``full_reload_s``. The rules stay
pure: the flow looks thresholds up here and hands them over; subscribers are attached
to alerts after detection.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime

from ispstream.db import connect
from pipelines.fault_rules import DEFAULT_THRESHOLDS, Thresholds

log = logging.getLogger(__name__)

_SLACK_S = 30.0  # re-read rows changed this long before the last refresh (late commits)


class TelemetryCatalog:
    """Thread-safe view of ONU -> subscriber links and threshold overrides."""

    def __init__(self, dsn: str | None, refresh_s: float = 5.0,
                 full_reload_s: float = 600.0) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._full_reload_s = full_reload_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # (tenant, olt, pon, onu_id) -> username; (tenant, olt, serial) -> username
        self._by_position: dict[tuple[str, str, str, str], str] = {}
        self._by_serial: dict[tuple[str, str, str], str] = {}
        self._link_of: dict[tuple[str, str], tuple] = {}  # (tenant, username) -> keys
        self._params: dict[tuple[str, str, str], dict] = {}  # (tenant, scope, name)
        self._resolved: dict[tuple, Thresholds] = {}
        self._since: datetime | None = None
        self._last_full = 0.0

    # lookups (called by the flow) ------------------------------------------------------

    def subscriber(self, tenant_id: str, olt_id: str, pon: str, onu_id: str,
                   serial: str | None) -> str | None:
        """The username linked to an ONU, by serial first, else by its position."""
        if serial:
            user = self._by_serial.get((tenant_id, olt_id, serial))
            if user is not None:
                return user
        return self._by_position.get((tenant_id, olt_id, pon, onu_id))

    def thresholds(self, tenant_id: str, device_id: str, profile: str | None) -> Thresholds:
        """Defaults, then the tenant's, the profile's and the device's overrides."""
        key = (tenant_id, device_id, profile)
        th = self._resolved.get(key)
        if th is not None:
            return th
        with self._lock:
            th = DEFAULT_THRESHOLDS
            for scope, name in (("tenant", ""), ("profile", profile), ("device", device_id)):
                params = self._params.get((tenant_id, scope, name or ""))
                if params is not None and (scope == "tenant" or name):
                    th = th.with_overrides(params)
            self._resolved[key] = th
        return th

    # loading ---------------------------------------------------------------------------

    def load_rows(self, links: list[tuple], thresholds: list[tuple], full: bool) -> None:
        """Apply rows read from the database (tests may call this directly).

        links: (tenant, username, olt, serial, pon, onu_id); thresholds: (tenant, scope,
        name, params). A threshold row with an unknown name or a bad value is skipped
        (its previous version, if any, stays) and logged."""
        with self._lock:
            if full:
                self._by_position, self._by_serial, self._link_of = {}, {}, {}
                self._params = {}
            for tenant, user, olt, serial, pon, onu_id in links:
                for k in self._link_of.pop((tenant, user), ()):
                    (self._by_serial if len(k) == 3 else self._by_position).pop(k, None)
                keys = []
                if serial:
                    keys.append((tenant, olt, serial))
                    self._by_serial[(tenant, olt, serial)] = user
                if pon is not None and onu_id is not None:
                    keys.append((tenant, olt, pon, onu_id))
                    self._by_position[(tenant, olt, pon, onu_id)] = user
                self._link_of[(tenant, user)] = tuple(keys)
            for tenant, scope, name, params in thresholds:
                params = json.loads(params) if isinstance(params, str) else params
                try:
                    DEFAULT_THRESHOLDS.with_overrides(params)
                except (ValueError, TypeError, AttributeError) as exc:
                    log.error("fault_thresholds %s/%s/%s is invalid and keeps its previous "
                              "version: %s", tenant, scope, name, exc)
                    continue
                self._params[(tenant, scope, name)] = params
            if thresholds or full:
                self._resolved = {}

    def refresh(self, full: bool = False) -> None:
        """Read rows changed since the last refresh (everything the first time, or when
        ``full``)."""
        if self._dsn is None:
            return
        if full:
            self._since = None
        with connect(self._dsn, autocommit=True) as conn:
            now = conn.execute("SELECT now()").fetchone()[0]
            since = self._since
            cond, args = ("", ()) if since is None else (
                " WHERE updated_at >= %s - make_interval(secs => %s)", (since, _SLACK_S))
            links = conn.execute("SELECT tenant_id, username, olt_id, serial, pon, onu_id "
                                 "FROM onu_links" + cond, args).fetchall()
            thresholds = conn.execute("SELECT tenant_id, scope, name, params "
                                      "FROM fault_thresholds" + cond, args).fetchall()
        self.load_rows(links, thresholds, full=since is None)
        self._since = now
        if since is None:
            self._last_full = time.monotonic()
        if since is None:
            log.info("telemetry catalog loaded: %d ONU link(s), %d threshold row(s)",
                     len(links), len(thresholds))
        elif links or thresholds:
            log.debug("telemetry catalog: %d ONU link(s), %d threshold row(s) re-read",
                      len(links), len(thresholds))

    def start(self) -> None:
        """Load everything now, then keep refreshing on a daemon thread."""
        self.refresh(full=True)
        if self._thread is None and self._dsn is not None:
            self._thread = threading.Thread(target=self._run, name="telemetry-catalog",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._refresh_s)
            try:
                self.refresh(full=time.monotonic() - self._last_full >= self._full_reload_s)
            except Exception:  # noqa: BLE001 - keep detecting with what we know; retry
                log.exception("telemetry catalog refresh failed; using the previous view")
