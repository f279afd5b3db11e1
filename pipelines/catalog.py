"""The inventory as the usage flow sees it: tenant, plan and anchor day per subscriber.

Loaded from PostgreSQL and refreshed on a background thread, incrementally (rows whose
``updated_at`` moved) every ``refresh_s`` and in full every ``full_reload_s``, so plan and
subscriber changes apply without restarting the flow and without stalling it. Rating
itself stays pure: the flow looks up a ``Tariff`` here and hands it to ``rating``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, time as dtime
from decimal import Decimal

from ispstream.db import connect
from rating.policies import QuotaPolicy, with_implicit_throttle
from rating.tariff import OffPeakWindow, Plan, Tariff

log = logging.getLogger(__name__)

# Rows changed less than this long before the last refresh are read again, so a
# transaction that committed late with an older updated_at is not missed.
_SLACK_S = 30.0


def _parse_hhmm(s: str) -> dtime:
    return dtime(0) if s == "24:00" else datetime.strptime(s, "%H:%M").time()


def _json(value) -> list:
    return json.loads(value) if isinstance(value, str) else (value or [])


def plan_from_row(row: tuple) -> Plan:
    """Build a ``Plan`` from a ``plans`` row (tenant_id, id, fee, quota, counts, overage,
    throttle, off_peak[, quota_policies, rate_limit]).

    A fair-use plan (``throttle_rate``) without a policy at 100 % throttles there (the
    inventory stores that policy; rows written otherwise get it here too)."""
    tenant_id, plan_id, fee, quota, counts, overage, throttle, off_peak = row[:8]
    policies, rate_limit = row[8:] if len(row) > 8 else ([], None)
    windows = _json(off_peak)
    quota_policies = tuple(QuotaPolicy(p["at"], p["action"], p.get("rate"))
                           for p in _json(policies))
    if quota is not None:
        quota_policies = with_implicit_throttle(quota_policies, throttle)
    return Plan(
        tenant_id=tenant_id,
        plan_id=plan_id,
        monthly_fee=Decimal(fee),
        quota_bytes=quota,
        quota_counts=counts,
        overage_per_gb=None if overage is None else Decimal(overage),
        throttle_rate=throttle,
        off_peak=tuple(
            OffPeakWindow(_parse_hhmm(w["from"]), _parse_hhmm(w["to"]), Decimal(str(w["rate"])))
            for w in windows
        ),
        quota_policies=quota_policies,
        rate_limit=rate_limit,
    )


class Catalog:
    """Thread-safe, incrementally refreshed view of tenants, plans and subscribers."""

    def __init__(self, dsn: str, refresh_s: float = 5.0, full_reload_s: float = 600.0) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._full_reload_s = full_reload_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tenants: dict[str, tuple[str, str]] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        self._subs: dict[tuple[str, str], tuple[str, int]] = {}
        # Tariffs handed out, per (tenant, username); dropped whenever anything changed.
        self._tariffs: dict[tuple[str, str | None], Tariff] = {}
        self._since: datetime | None = None
        self._last_full = 0.0

    def refresh(self, full: bool = False) -> None:
        """Read rows changed since the last refresh (everything the first time, or when
        ``full``)."""
        if full:
            self._since = None
        with connect(self._dsn, autocommit=True) as conn:
            now = conn.execute("SELECT now()").fetchone()[0]
            since = self._since
            cond, args = ("", ()) if since is None else (
                " WHERE updated_at >= %s - make_interval(secs => %s)", (since, _SLACK_S))
            tenants = conn.execute("SELECT id, timezone, currency FROM tenants" + cond,
                                   args).fetchall()
            plans = conn.execute(
                "SELECT tenant_id, id, monthly_fee, quota_bytes, quota_counts, "
                "overage_per_gb, throttle_rate, off_peak, quota_policies, rate_limit "
                "FROM plans" + cond, args).fetchall()
            subs = conn.execute(
                "SELECT tenant_id, username, plan_id, cycle_anchor_day FROM subscribers"
                + cond, args).fetchall()
        with self._lock:
            for tid, tz, cur in tenants:
                self._tenants[tid] = (tz, cur.strip())
            for row in plans:
                try:
                    self._plans[(row[0], row[1])] = plan_from_row(row)
                except (TypeError, ValueError, KeyError) as exc:
                    # One bad row must not stop every other change from applying.
                    log.error("plan %s/%s is invalid and keeps its previous version: %s",
                              row[0], row[1], exc)
            for tid, user, plan_id, anchor in subs:
                self._subs[(tid, user)] = (plan_id, anchor)
            if tenants or plans or subs:
                self._tariffs = {}
            self._since = now
        if since is None:
            self._last_full = time.monotonic()
        if tenants or plans or subs:
            log.info("catalog refreshed: %d tenant(s), %d plan(s), %d subscriber(s) changed",
                     len(tenants), len(plans), len(subs))

    def start(self) -> None:
        """Load everything now, then keep refreshing on a daemon thread."""
        self.refresh(full=True)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="catalog-refresh",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop refreshing (the view keeps what it has)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh(full=time.monotonic() - self._last_full >= self._full_reload_s)
            except Exception:  # noqa: BLE001 - keep rating with what we know; retry later
                log.exception("catalog refresh failed; using the previous inventory")

    def tariff(self, tenant_id: str, username: str | None) -> Tariff:
        """Everything rating needs about one subscriber (plan None when unknown)."""
        key = (tenant_id, username)
        tariffs = self._tariffs  # a new dict after every inventory change
        t = tariffs.get(key)
        if t is None:
            tariffs[key] = t = self._build_tariff(tenant_id, username)
        return t

    def _build_tariff(self, tenant_id: str, username: str | None) -> Tariff:
        tz, currency = self._tenants.get(tenant_id, ("UTC", "XXX"))
        sub = self._subs.get((tenant_id, username)) if username else None
        if sub is None:
            return Tariff(plan=None, timezone=tz, currency=currency, cycle_anchor_day=1)
        plan_id, anchor = sub
        return Tariff(plan=self._plans.get((tenant_id, plan_id)), timezone=tz,
                      currency=currency, cycle_anchor_day=anchor)
