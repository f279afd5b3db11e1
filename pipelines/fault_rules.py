"""Fault detection rules: pure functions and per-device state, no I/O, no clock.

Time is always the event time of the input (a poll's ``at``, a trap's ``received_at``,
a status change's ``at``), passed in; the same inputs in the same order give the same
alerts, with the same ids, on every run.

Two kinds of state, each owned by one key of the fault flow:

- ``DeviceState`` (per ``tenant/device``): interfaces from ``IfStatsPoll`` and link
  traps, and the device's reachability from ``DeviceStatus``. Rules: rates from 64-bit
  counters with discontinuity detection, oper-down, flapping, sustained utilization,
  device unreachable.
- ``OltState`` (per ``tenant/olt``): ONUs from ``OnuOpticalPoll`` and ONU traps
  (the OLT sends them, so the trap's device is the OLT). Rules: class B+ power limits,
  drift from the ONU's own EWMA baseline, offline / LOS / dying gasp; correlation per
  PON port and per OLT, which suppresses the per-ONU alerts it explains.

Every change of an alert (opened, cleared, severity, probable cause, suppression,
affected ONUs) comes out as an ``AlertChange``; the state keeps only live alerts.
An alert's ``key`` is stable (``kind:object``), its ``alert_id`` identifies one
episode: ``alert_id(tenant, key, opened_at)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields, replace
from typing import Iterable

from ispstream.contracts import DeviceStatus, IfStatsPoll, OnuOpticalPoll, OnuReading, TrapEvent

SEVERITIES = ("info", "warning", "minor", "major", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """0 (info) .. 4 (critical)."""
    return _RANK[severity]


# --- thresholds -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every limit the rules use; defaults are GPON class B+ and common NOC practice.

    Override per tenant, vendor profile or device with ``with_overrides`` (the flow
    reads overrides from the ``fault_thresholds`` table)."""

    # GPON class B+ optical budget (dBm)
    onu_rx_min: float = -27.0
    onu_rx_max: float = -8.0
    olt_rx_min: float = -28.0
    olt_rx_max: float = -8.0
    onu_tx_min: float = 0.5
    onu_tx_max: float = 5.0
    hysteresis_db: float = 0.5           # back inside the limit by this much to clear
    critical_margin_db: float = 3.0      # this far below the Rx minimum: critical
    # drift from the ONU's own baseline (EWMA of ONU Rx)
    drift_db: float = 3.0
    drift_clear_db: float = 2.0
    baseline_tau_s: float = 3 * 86400.0
    baseline_min_samples: int = 12
    # correlation
    pon_window_s: float = 120.0
    pon_min_onus: int = 4
    pon_share: float = 0.5
    pon_clear_share: float = 0.5         # cleared when fewer than this share still down
    power_outage_share: float = 0.5      # dying-gasp share naming a power outage
    olt_min_pons: int = 2
    olt_share: float = 0.5
    # interfaces
    flap_transitions: int = 4
    flap_window_s: float = 600.0
    flap_quiet_s: float = 600.0
    util_open: float = 0.90
    util_clear: float = 0.80
    util_min_samples: int = 2
    util_sustain_s: float = 300.0
    max_rate_factor: float = 2.0         # a rate above this x ifHighSpeed is a discontinuity
    # housekeeping
    forget_after_s: float = 7 * 86400.0

    def with_overrides(self, params: dict) -> "Thresholds":
        """A copy with ``params`` (field name -> number) applied; raises ``ValueError``
        naming an unknown field or a value of the wrong type."""
        known = {f.name: f.type for f in fields(self)}
        clean = {}
        for name, value in params.items():
            if name not in known:
                raise ValueError(f"unknown threshold {name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"threshold {name!r} must be a number, not {value!r}")
            clean[name] = int(value) if known[name] == "int" else float(value)
            if known[name] == "int" and value != int(value):
                raise ValueError(f"threshold {name!r} must be a whole number")
        return replace(self, **clean)


DEFAULT_THRESHOLDS = Thresholds()


# --- alerts -----------------------------------------------------------------------------

def alert_id(tenant_id: str, key: str, opened_at: float) -> str:
    """Id of one episode of an alert: BLAKE2b (24 hex) of length-prefixed tenant, key
    and opening time (ms), so a replay opens the same episode with the same id."""
    parts = (tenant_id, key, str(round(opened_at * 1000)))
    text = "|".join(f"{len(p)}:{p}" for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class OnuRef:
    """An ONU an alert concerns (the flow maps it to a subscriber)."""

    pon: str
    onu_id: str
    serial: str | None = None


@dataclass(slots=True)
class Alert:
    """A live alert in a state (open; the API may have acknowledged it meanwhile)."""

    tenant_id: str
    alert_id: str
    key: str
    kind: str
    severity: str
    device_id: str
    object: str | None
    title: str
    explanation: str
    probable_cause: str | None
    opened_at: float
    changed_at: float
    onus: tuple[OnuRef, ...] = ()
    details: dict = field(default_factory=dict)
    suppressed_by: str | None = None
    state: str = "open"
    pon: str | None = None
    onu_id: str | None = None
    if_index: int | None = None


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One change of an alert, with everything about it at that moment.

    ``note`` says what changed; ``history`` is False for changes that only refresh the
    affected ONUs or the explanation (not worth a history row)."""

    tenant_id: str
    alert_id: str
    key: str
    kind: str
    severity: str
    state: str
    device_id: str
    object: str | None
    title: str
    explanation: str
    probable_cause: str | None
    onus: tuple[OnuRef, ...]
    details: dict
    suppressed_by: str | None
    opened_at: float
    changed_at: float
    note: str
    history: bool

    @property
    def onu_level(self) -> bool:
        """A per-ONU alert (delivery may hold these briefly: a PON alert may explain
        them)."""
        return self.kind in ONU_KINDS


def _snapshot(a: Alert, note: str, history: bool, state: str | None = None,
              changed_at: float | None = None) -> AlertChange:
    return AlertChange(
        tenant_id=a.tenant_id, alert_id=a.alert_id, key=a.key, kind=a.kind,
        severity=a.severity, state=state or a.state, device_id=a.device_id, object=a.object,
        title=a.title, explanation=a.explanation, probable_cause=a.probable_cause,
        onus=a.onus, details=dict(a.details), suppressed_by=a.suppressed_by,
        opened_at=a.opened_at, changed_at=a.changed_at if changed_at is None else changed_at,
        note=note, history=history)


class AlertBook:
    """The live alerts of one device or OLT, and the changes made during one step.

    ``drain`` returns the step's changes, one per alert (its state after the step), in
    the order they first changed; an alert opened and cleared in the same step gives
    both."""

    __slots__ = ("tenant_id", "device_id", "live", "_changes")

    def __init__(self, tenant_id: str, device_id: str) -> None:
        self.tenant_id = tenant_id
        self.device_id = device_id
        self.live: dict[str, Alert] = {}
        self._changes: dict[str, list] = {}  # alert_id -> [alert, notes, history, opened]

    def __getstate__(self):
        return (self.tenant_id, self.device_id, self.live)

    def __setstate__(self, st) -> None:
        self.tenant_id, self.device_id, self.live = st
        self._changes = {}

    def get(self, key: str) -> Alert | None:
        return self.live.get(key)

    def _touch(self, a: Alert, note: str, history: bool, opened: bool = False) -> None:
        rec = self._changes.get(a.alert_id)
        if rec is None:
            self._changes[a.alert_id] = [a, [note], history, opened]
        else:
            if note not in rec[1]:
                rec[1].append(note)
            rec[2] = rec[2] or history

    def raise_(self, now: float, kind: str, key: str, severity: str, title: str,
               explanation: str, *, object: str | None = None,
               probable_cause: str | None = None, onus: tuple[OnuRef, ...] = (),
               details: dict | None = None, opened_at: float | None = None,
               pon: str | None = None, onu_id: str | None = None,
               if_index: int | None = None) -> Alert:
        """Open the alert ``key``, or, when it is live, update what changed."""
        a = self.live.get(key)
        if a is None:
            at = now if opened_at is None else opened_at
            a = Alert(self.tenant_id, alert_id(self.tenant_id, key, at), key, kind, severity,
                      self.device_id, object, title, explanation, probable_cause, at,
                      max(at, now), onus, dict(details or {}), pon=pon, onu_id=onu_id,
                      if_index=if_index)
            self.live[key] = a
            self._touch(a, "opened", True, opened=True)
            return a
        notes, history = [], False
        if a.severity != severity:
            notes.append(f"severity {a.severity} -> {severity}")
            history = True
            a.severity = severity
        if a.probable_cause != probable_cause:
            notes.append(f"probable cause: {probable_cause}")
            history = True
            a.probable_cause = probable_cause
        if a.title != title or a.explanation != explanation:
            if not notes:
                notes.append("updated")
            a.title, a.explanation = title, explanation
        if a.onus != onus:
            notes.append(f"{len(onus)} ONU(s) affected")
            a.onus = onus
        if details is not None and a.details != details:
            a.details = dict(details)
            if not notes:
                notes.append("updated")
        if notes:
            a.changed_at = max(a.changed_at, now)
            self._touch(a, "; ".join(notes), history)
        return a

    def clear(self, key: str, now: float, note: str) -> Alert | None:
        """Clear the live alert ``key`` (no-op when it is not live)."""
        a = self.live.pop(key, None)
        if a is None:
            return None
        a.state = "cleared"
        a.changed_at = max(a.changed_at, now)
        self._touch(a, note, True)
        return a

    def suppress(self, a: Alert, by: str | None, now: float) -> None:
        """Mark ``a`` as explained by alert ``by`` (None: no longer suppressed)."""
        if a.suppressed_by == by:
            return
        a.suppressed_by = by
        a.changed_at = max(a.changed_at, now)
        self._touch(a, f"suppressed by {by}" if by else "no longer suppressed", True)

    def drain(self) -> list[AlertChange]:
        out: list[AlertChange] = []
        for a, notes, history, opened in self._changes.values():
            if opened and a.state == "cleared":
                out.append(_snapshot(a, "opened", True, state="open",
                                     changed_at=a.opened_at))
                notes = [n for n in notes if n != "opened"] or ["cleared"]
            out.append(_snapshot(a, "; ".join(notes), history))
        self._changes = {}
        return out


# --- interfaces -------------------------------------------------------------------------

IF_DOWN_STATUSES = frozenset({2, 7})  # ifOperStatus down, lowerLayerDown


@dataclass(frozen=True, slots=True)
class Rate:
    """Rates over one poll interval; ``discontinuity`` when the counters cannot be
    compared (then no rate at all: never a bogus spike)."""

    in_bps: float | None
    out_bps: float | None
    discontinuity: bool = False
    reason: str | None = None
    interval_s: float | None = None


NO_RATE = Rate(None, None)


def counter_rate(prev_at: float | None, prev_uptime_cs: int | None, prev_in: int | None,
                 prev_out: int | None, at: float, uptime_cs: int | None,
                 in_octets: int | None, out_octets: int | None, speed_mbps: int | None,
                 restarted: bool, th: Thresholds) -> Rate:
    """Bits per second from two readings of 64-bit octet counters.

    No rate for the first reading or a non-positive interval. A discontinuity (flagged,
    no rate): the device restarted in between (a cold/warm start trap), sysUpTime went
    backwards, a counter decreased, or a rate above ``max_rate_factor`` x ifHighSpeed.
    The interval is the sysUpTime difference when both readings have one (the device's
    own clock), else the difference of the poll times."""
    if prev_at is None or (prev_in is None and prev_out is None):
        return NO_RATE
    if restarted:
        return Rate(None, None, True, "device restarted")
    if uptime_cs is not None and prev_uptime_cs is not None and uptime_cs < prev_uptime_cs:
        return Rate(None, None, True, "sysUpTime went backwards")
    if ((in_octets is not None and prev_in is not None and in_octets < prev_in)
            or (out_octets is not None and prev_out is not None and out_octets < prev_out)):
        return Rate(None, None, True, "counter decreased")
    if uptime_cs is not None and prev_uptime_cs is not None and uptime_cs > prev_uptime_cs:
        dt = (uptime_cs - prev_uptime_cs) / 100.0
    else:
        dt = at - prev_at
    if dt <= 0:
        return NO_RATE
    in_bps = (in_octets - prev_in) * 8 / dt if in_octets is not None and prev_in is not None \
        else None
    out_bps = (out_octets - prev_out) * 8 / dt \
        if out_octets is not None and prev_out is not None else None
    if speed_mbps and th.max_rate_factor > 0:
        cap = speed_mbps * 1e6 * th.max_rate_factor
        if (in_bps or 0) > cap or (out_bps or 0) > cap:
            return Rate(None, None, True, "implausible rate (above the interface speed)")
    return Rate(in_bps, out_bps, False, None, dt)


def utilization(bps: float | None, speed_mbps: int | None) -> float | None:
    """Fraction of ifHighSpeed, or None when either is unknown."""
    if bps is None or not speed_mbps:
        return None
    return bps / (speed_mbps * 1e6)


def is_flapping(transitions: list[float], now: float, th: Thresholds) -> bool:
    """At least ``flap_transitions`` up/down changes within the last ``flap_window_s``."""
    cutoff = now - th.flap_window_s
    return sum(1 for t in transitions if t > cutoff) >= th.flap_transitions


def flap_quiet(last_change: float | None, now: float, th: Thresholds) -> bool:
    """No up/down change for ``flap_quiet_s``: a flapping alert clears."""
    return last_change is None or now - last_change >= th.flap_quiet_s


def util_verdict(util: float, live: bool, since: float | None, samples: int, now: float,
                 th: Thresholds) -> bool:
    """Whether a utilization alert should be open after a sample at ``util``.

    ``since``/``samples``: start of the current run of samples at or above ``util_open``
    and how many (this one included). Opens when the run is ``util_min_samples`` long
    and spans ``util_sustain_s``; a live alert stays open until below ``util_clear``."""
    if util >= th.util_open:
        if live:
            return True
        return (since is not None and samples >= th.util_min_samples
                and now - since >= th.util_sustain_s)
    return live and util >= th.util_clear


@dataclass(frozen=True, slots=True)
class IfSample:
    """One row of ``if_samples``."""

    tenant_id: str
    device_id: str
    if_index: int
    ts: float
    oper_status: int | None
    in_bps: float | None
    out_bps: float | None
    in_util: float | None
    out_util: float | None
    discontinuity: bool


@dataclass(frozen=True, slots=True)
class InterfaceRow:
    """The current state of one interface (``interfaces``)."""

    tenant_id: str
    device_id: str
    if_index: int
    name: str | None
    alias: str | None
    oper_status: int | None
    admin_status: int | None
    high_speed_mbps: int | None
    last_change: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class DeviceStatusRow:
    """The device's reachability (``device_status``)."""

    tenant_id: str
    device_id: str
    reachable: bool
    reason: str | None
    changed_at: float


@dataclass(slots=True)
class IfState:
    if_index: int
    name: str | None = None
    alias: str | None = None
    oper: int | None = None
    admin: int | None = None
    speed_mbps: int | None = None
    status_at: float = -math.inf
    ever_up: bool = False
    last_change: float | None = None
    prev_at: float | None = None
    prev_uptime_cs: int | None = None
    prev_in: int | None = None
    prev_out: int | None = None
    transitions: list = field(default_factory=list)
    util_since: float | None = None
    util_samples: int = 0
    last_seen: float = 0.0


def _if_label(st: IfState) -> str:
    return st.name or f"ifIndex {st.if_index}"


def _mbps(speed: int | None) -> str:
    if not speed:
        return "unknown speed"
    return f"{speed // 1000} Gbit/s" if speed >= 1000 and speed % 1000 == 0 else f"{speed} Mbit/s"


class DeviceState:
    """Interfaces and reachability of one device (key ``tenant/device``)."""

    __slots__ = ("tenant_id", "device_id", "ifs", "book", "last_poll_at", "restart_at",
                 "reachable", "status_at")

    def __init__(self, tenant_id: str, device_id: str) -> None:
        self.tenant_id = tenant_id
        self.device_id = device_id
        self.ifs: dict[int, IfState] = {}
        self.book = AlertBook(tenant_id, device_id)
        self.last_poll_at: float | None = None
        self.restart_at: float | None = None
        self.reachable: bool | None = None
        self.status_at: float | None = None

    def __getstate__(self):
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, st) -> None:
        for name, value in zip(self.__slots__, st):
            setattr(self, name, value)

    # keys
    def _key(self, kind: str, if_index: int | None = None) -> str:
        return f"{kind}:{self.device_id}" if if_index is None \
            else f"{kind}:{self.device_id}/{if_index}"

    def on_poll(self, poll: IfStatsPoll, th: Thresholds) -> list:
        """One poll of the device's interfaces -> samples, current state, alert changes.
        A poll not newer than the last one is a duplicate and changes nothing."""
        now = poll.at
        if self.last_poll_at is not None and now <= self.last_poll_at:
            return []
        restarted = (self.restart_at is not None and self.last_poll_at is not None
                     and self.last_poll_at < self.restart_at <= now)
        out: list = []
        for row in poll.interfaces:
            st = self.ifs.get(row.if_index)
            if st is None:
                st = self.ifs[row.if_index] = IfState(row.if_index)
            st.last_seen = now
            st.name = row.name if row.name is not None else st.name
            st.alias = row.alias if row.alias is not None else st.alias
            if row.high_speed_mbps is not None:
                st.speed_mbps = row.high_speed_mbps
            if row.admin_status is not None:
                st.admin = row.admin_status
            rate = counter_rate(st.prev_at, st.prev_uptime_cs, st.prev_in, st.prev_out, now,
                                poll.sys_uptime_cs, row.in_octets, row.out_octets,
                                st.speed_mbps, restarted, th)
            interval_start = st.prev_at
            st.prev_at, st.prev_uptime_cs = now, poll.sys_uptime_cs
            st.prev_in, st.prev_out = row.in_octets, row.out_octets
            if now >= st.status_at:
                self._set_oper(st, row.oper_status, now)
            in_util = utilization(rate.in_bps, st.speed_mbps)
            out_util = utilization(rate.out_bps, st.speed_mbps)
            self._eval_util(st, in_util, out_util, interval_start, now, th)
            self._eval_status(st, now, th)
            out.append(IfSample(self.tenant_id, self.device_id, row.if_index, now,
                                st.oper, rate.in_bps, rate.out_bps, in_util, out_util,
                                rate.discontinuity))
            out.append(InterfaceRow(self.tenant_id, self.device_id, row.if_index, st.name,
                                    st.alias, st.oper, st.admin, st.speed_mbps,
                                    st.last_change, now))
        self.last_poll_at = now
        if self.book.get(self._key("device_unreachable")) is not None \
                and (self.status_at is None or now > self.status_at):
            self.book.clear(self._key("device_unreachable"), now, "device answered a poll")
        self._forget(now, th)
        out.extend(self.book.drain())
        return out

    def on_trap(self, trap: TrapEvent, th: Thresholds) -> list:
        """Link up/down traps change an interface's status at once; cold/warm start
        marks the counters of the next poll as discontinuous."""
        now = trap.received_at
        if trap.kind in ("cold_start", "warm_start"):
            self.restart_at = max(self.restart_at or now, now)
            return []
        if trap.kind not in ("link_down", "link_up") or trap.if_index is None:
            return []
        st = self.ifs.get(trap.if_index)
        if st is None:
            st = self.ifs[trap.if_index] = IfState(trap.if_index, last_seen=now)
        if now < st.status_at:
            return []  # older than what a poll or trap already said
        if trap.kind == "link_down":
            st.ever_up = True  # it was up to go down
        self._set_oper(st, 2 if trap.kind == "link_down" else 1, now)
        self._eval_status(st, now, th)
        return [InterfaceRow(self.tenant_id, self.device_id, st.if_index, st.name, st.alias,
                             st.oper, st.admin, st.speed_mbps, st.last_change, now),
                *self.book.drain()]

    def on_status(self, ev: DeviceStatus, th: Thresholds) -> list:
        """Reachability from the poller: unreachable opens an alert, reachable clears it."""
        now = ev.at
        if self.status_at is not None and now < self.status_at:
            return []
        self.reachable, self.status_at = ev.reachable, now
        key = self._key("device_unreachable")
        if ev.reachable:
            self.book.clear(key, now, f"device reachable again ({ev.reason})")
        else:
            self.book.raise_(
                now, "device_unreachable", key, "critical",
                f"{self.device_id} is unreachable",
                f"{self.device_id} does not answer SNMP: {ev.reason} "
                f"({ev.consecutive_failures} consecutive failed polls)",
                object=self.device_id, probable_cause=ev.reason,
                details={"consecutive_failures": ev.consecutive_failures})
        return [DeviceStatusRow(self.tenant_id, self.device_id, ev.reachable, ev.reason, now),
                *self.book.drain()]

    # rules
    def _set_oper(self, st: IfState, oper: int | None, now: float) -> None:
        if oper is None:
            return
        was = st.oper
        st.oper, st.status_at = oper, now
        if oper == 1:
            st.ever_up = True
        if was is not None and (was == 1) != (oper == 1):
            st.last_change = now
            st.transitions.append(now)

    def _eval_status(self, st: IfState, now: float, th: Thresholds) -> None:
        st.transitions = [t for t in st.transitions if t > now - th.flap_window_s]
        label = _if_label(st)
        flap_key = self._key("if_flapping", st.if_index)
        flap = self.book.get(flap_key)
        if flap is None and is_flapping(st.transitions, now, th):
            flap = self.book.raise_(
                now, "if_flapping", flap_key, "minor", f"{label} on {self.device_id} is flapping",
                f"{len(st.transitions)} up/down changes within {th.flap_window_s:g} s "
                f"(limit {th.flap_transitions})", object=label, if_index=st.if_index,
                details={"transitions": len(st.transitions)})
        elif flap is not None and flap_quiet(st.last_change, now, th):
            self.book.clear(flap_key, now, f"no up/down change for {th.flap_quiet_s:g} s")
            flap = None
        down_key = self._key("if_down", st.if_index)
        down = (st.ever_up and st.oper in IF_DOWN_STATUSES and st.admin in (None, 1))
        if down:
            a = self.book.raise_(
                now, "if_down", down_key, "major", f"{label} on {self.device_id} is down",
                f"ifOperStatus {st.oper} while administratively up", object=label,
                opened_at=st.last_change if st.last_change is not None else now,
                if_index=st.if_index)
            self.book.suppress(a, flap.alert_id if flap is not None else None, now)
        elif self.book.get(down_key) is not None:
            self.book.clear(down_key, now, "administratively down" if st.admin == 2
                            else "interface up")

    def _eval_util(self, st: IfState, in_util: float | None, out_util: float | None,
                   interval_start: float | None, now: float, th: Thresholds) -> None:
        if in_util is None and out_util is None:
            return  # no rate this time (first poll, discontinuity): no change
        util = max(in_util or 0.0, out_util or 0.0)
        if util >= th.util_open:
            if st.util_since is None:
                st.util_since = interval_start if interval_start is not None else now
                st.util_samples = 0
            st.util_samples += 1
        else:
            st.util_since, st.util_samples = None, 0
        key = self._key("if_high_util", st.if_index)
        live = self.book.get(key) is not None
        if util_verdict(util, live, st.util_since, st.util_samples, now, th):
            if not live:
                label = _if_label(st)
                self.book.raise_(
                    now, "if_high_util", key, "warning",
                    f"{label} on {self.device_id} at {util:.0%} of {_mbps(st.speed_mbps)}",
                    f"utilization at or above {th.util_open:.0%} for "
                    f"{now - st.util_since:.0f} s ({st.util_samples} samples)",
                    object=label, if_index=st.if_index,
                    details={"in_util": in_util, "out_util": out_util})
        elif live:
            self.book.clear(key, now, f"utilization {util:.0%} below {th.util_clear:.0%}")

    def _forget(self, now: float, th: Thresholds) -> None:
        for idx in [i for i, s in self.ifs.items() if s.last_seen < now - th.forget_after_s]:
            for kind in ("if_down", "if_flapping", "if_high_util"):
                self.book.clear(self._key(kind, idx), now,
                                "interface no longer reported by the device")
            del self.ifs[idx]


# --- ONUs -------------------------------------------------------------------------------

DOWN_KINDS = ("onu_los", "onu_dying_gasp", "onu_offline")
POWER_KINDS = ("onu_low_rx", "onu_high_rx", "olt_low_rx", "olt_high_rx",
               "onu_tx_out_of_range", "onu_rx_drift")
ONU_KINDS = frozenset(DOWN_KINDS + POWER_KINDS)
PON_KINDS = ("pon_down", "pon_degraded")
_CAUSE_KIND = {"los": "onu_los", "dying_gasp": "onu_dying_gasp", "offline": "onu_offline"}
_CAUSE_RANK = {"offline": 0, "los": 1, "dying_gasp": 2}

CAUSE_FEEDER_CUT = "feeder fibre cut"
CAUSE_POWER_OUTAGE = "power outage"
CAUSE_DEGRADATION = "feeder fibre or splitter degradation (bend, dirty or damaged connector)"
CAUSE_OLT_FAILURE = "OLT line card or shared feeder cable failure"


def is_offline(r: OnuReading) -> bool:
    """Offline when the OLT says so, or says nothing and has no receive reading at all."""
    if r.online is not None:
        return not r.online
    return r.onu_rx_dbm is None and r.olt_rx_dbm is None


def limit_verdict(value: float | None, live: bool, limit: float, side: str,
                  hysteresis: float) -> bool | None:
    """Whether an out-of-limit alert should be open: ``side`` "low" (value below
    ``limit``) or "high" (above). A live alert clears only once the value is back inside
    by ``hysteresis``. None when there is no reading (no change)."""
    if value is None:
        return None
    if side == "low":
        return value < limit or (live and value < limit + hysteresis)
    return value > limit or (live and value > limit - hysteresis)


def drift_verdict(baseline: float | None, samples: int, rx: float | None, live: bool,
                  th: Thresholds) -> bool | None:
    """Whether a drift alert should be open: ONU Rx ``drift_db`` or more below its
    baseline (once the baseline has ``baseline_min_samples``); clears below
    ``drift_clear_db``. None when there is no reading or no baseline yet."""
    if rx is None or baseline is None or samples < th.baseline_min_samples:
        return None
    drop = baseline - rx
    return drop >= th.drift_db or (live and drop >= th.drift_clear_db)


def ewma(baseline: float | None, last_at: float | None, value: float, now: float,
         tau_s: float) -> float:
    """Exponentially weighted moving average over irregular samples (time constant
    ``tau_s``): the weight of a sample grows with the time since the previous one."""
    if baseline is None or last_at is None:
        return value
    dt = max(0.0, now - last_at)
    alpha = 1.0 - math.exp(-dt / tau_s) if tau_s > 0 else 1.0
    return baseline + alpha * (value - baseline)


def pon_outage(onus: Iterable["OnuState"], now: float, th: Thresholds) -> list["OnuState"] | None:
    """The ONUs of one PON that went down within the last ``pon_window_s``, when they
    are at least max(``pon_min_onus``, ``pon_share`` of the PON's known ONUs); else
    None. Known: seen online at least once."""
    known = [o for o in onus if o.last_online_at is not None]
    need = max(th.pon_min_onus, math.ceil(th.pon_share * len(known)))
    recent = [o for o in known
              if o.down_since is not None and o.down_since >= now - th.pon_window_s]
    return recent if len(recent) >= need else None


def pon_power_drop(onus: Iterable["OnuState"], now: float,
                   th: Thresholds) -> list["OnuState"] | None:
    """Like ``pon_outage`` for ONUs whose Rx fell ``drift_db`` below their baseline
    together (within ``pon_window_s``)."""
    known = [o for o in onus if o.last_online_at is not None]
    need = max(th.pon_min_onus, math.ceil(th.pon_share * len(known)))
    recent = [o for o in known
              if o.drop_since is not None and o.drop_since >= now - th.pon_window_s]
    return recent if len(recent) >= need else None


def probable_cause(dying_gasp_share: float, th: Thresholds) -> str:
    """Most ONUs sent a dying gasp: they lost power; otherwise the light went."""
    return CAUSE_POWER_OUTAGE if dying_gasp_share >= th.power_outage_share \
        else CAUSE_FEEDER_CUT


def still_active(still: int, members: int, th: Thresholds) -> bool:
    """A correlated alert stays open while at least ``pon_clear_share`` of the members
    it opened for (or took in since) are still affected."""
    return members > 0 and still >= th.pon_clear_share * members


@dataclass(slots=True)
class OnuState:
    pon: str
    onu_id: str
    serial: str | None = None
    online: bool | None = None
    onu_rx: float | None = None
    onu_tx: float | None = None
    olt_rx: float | None = None
    baseline: float | None = None
    baseline_n: int = 0
    baseline_at: float | None = None
    last_seen: float = 0.0
    last_online_at: float | None = None
    down_since: float | None = None
    down_cause: str | None = None
    cause_at: float | None = None
    drop_since: float | None = None

    @property
    def ref(self) -> OnuRef:
        return OnuRef(self.pon, self.onu_id, self.serial)


@dataclass(frozen=True, slots=True)
class OnuSample:
    """One row of ``onu_optical_samples`` plus the ONU's current state (``onus``)."""

    tenant_id: str
    olt_id: str
    pon: str
    onu_id: str
    ts: float
    online: bool | None
    onu_rx_dbm: float | None
    onu_tx_dbm: float | None
    olt_rx_dbm: float | None
    temperature_c: float | None
    voltage_v: float | None
    bias_ma: float | None
    serial: str | None
    baseline_rx_dbm: float | None


def _dbm(v: float) -> str:
    return f"{v:.1f} dBm"


class OltState:
    """ONUs of one OLT by PON port, with per-PON and per-OLT correlation
    (key ``tenant/olt``)."""

    __slots__ = ("tenant_id", "olt_id", "pons", "book", "last_poll_at", "profile")

    def __init__(self, tenant_id: str, olt_id: str) -> None:
        self.tenant_id = tenant_id
        self.olt_id = olt_id
        self.pons: dict[str, dict[str, OnuState]] = {}
        self.book = AlertBook(tenant_id, olt_id)
        self.last_poll_at: float | None = None
        self.profile: str | None = None

    def __getstate__(self):
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, st) -> None:
        for name, value in zip(self.__slots__, st):
            setattr(self, name, value)

    def onu_key(self, kind: str, pon: str, onu_id: str) -> str:
        return f"{kind}:{self.olt_id}/{pon}/{onu_id}"

    def pon_key(self, kind: str, pon: str) -> str:
        return f"{kind}:{self.olt_id}/{pon}"

    def _onu(self, pon: str, onu_id: str, now: float) -> OnuState:
        d = self.pons.get(pon)
        if d is None:
            d = self.pons[pon] = {}
        o = d.get(onu_id)
        if o is None:
            o = d[onu_id] = OnuState(pon, onu_id, last_seen=now)
        return o

    # inputs
    def on_poll(self, poll: OnuOpticalPoll, th: Thresholds) -> list:
        """One poll of the OLT's ONU optics -> samples (with the ONU's current state)
        and alert changes. A poll not newer than the last one changes nothing."""
        now = poll.at
        if self.last_poll_at is not None and now <= self.last_poll_at:
            return []
        self.last_poll_at = now
        self.profile = poll.profile
        out: list = []
        touched: set[str] = set()
        for r in poll.onus:
            o = self._onu(r.pon, r.onu_id, now)
            o.last_seen = now
            if r.serial:
                o.serial = r.serial
            if is_offline(r):
                self._went_down(o, "offline", now)
                o.online, o.onu_rx, o.onu_tx, o.olt_rx, o.drop_since = False, None, None, None, None
            elif self._came_up(o, now):
                o.online = True
                o.onu_rx, o.onu_tx, o.olt_rx = r.onu_rx_dbm, r.onu_tx_dbm, r.olt_rx_dbm
                self._eval_power(o, now, th)
            self._eval_down(o, now)
            touched.add(r.pon)
            out.append(OnuSample(self.tenant_id, self.olt_id, r.pon, r.onu_id, now, o.online,
                                 r.onu_rx_dbm, r.onu_tx_dbm, r.olt_rx_dbm, r.temperature_c,
                                 r.voltage_v, r.bias_ma, o.serial, o.baseline))
        for pon in touched:
            self._eval_pon(pon, now, th)
        self._forget(now, th)
        self._eval_olt(now, th)
        self._suppress(now)
        out.extend(self.book.drain())
        return out

    def on_trap(self, trap: TrapEvent, th: Thresholds) -> list:
        """ONU LOS / dying gasp / up traps from the OLT. A trap naming a PON but no ONU
        concerns every known ONU of that PON; one naming no PON finds the ONU by id or
        serial."""
        now = trap.received_at
        onus = self._trap_onus(trap, now)
        if not onus:
            return []
        for o in onus:
            if trap.kind == "onu_up":
                self._came_up(o, now)
            elif o.last_online_at is None or now > o.last_online_at:
                # (a trap older than a poll that saw the ONU online is stale)
                self._went_down(o, "los" if trap.kind == "onu_los" else "dying_gasp", now)
                o.online, o.drop_since = False, None
            self._eval_down(o, now)
        for pon in {o.pon for o in onus}:
            self._eval_pon(pon, now, th)
        self._eval_olt(now, th)
        self._suppress(now)
        return self.book.drain()

    def _trap_onus(self, trap: TrapEvent, now: float) -> list[OnuState]:
        if trap.kind not in ("onu_los", "onu_dying_gasp", "onu_up"):
            return []
        if trap.pon is not None and trap.onu_id is not None:
            return [self._onu(trap.pon, trap.onu_id, now)]
        if trap.pon is not None:
            return [o for o in self.pons.get(trap.pon, {}).values()
                    if o.last_online_at is not None]
        if trap.onu_id is not None:
            return [o for d in self.pons.values() for o in d.values()
                    if trap.onu_id in (o.onu_id, o.serial)][:1]
        return []

    # per-ONU rules
    def _went_down(self, o: OnuState, cause: str, now: float) -> None:
        if o.down_since is None:
            o.down_since, o.down_cause, o.cause_at = now, cause, now
        elif _CAUSE_RANK[cause] > _CAUSE_RANK[o.down_cause or "offline"]:
            o.down_cause, o.cause_at = cause, now

    def _came_up(self, o: OnuState, now: float) -> bool:
        """The ONU is up at ``now``; False when that is older than the outage evidence
        (then the outage stands)."""
        if o.down_since is not None:
            if now <= (o.cause_at or o.down_since):
                return False
            o.down_since = o.down_cause = o.cause_at = None
        if o.last_online_at is None or now > o.last_online_at:
            o.last_online_at = now
        return True

    def _eval_down(self, o: OnuState, now: float) -> None:
        want = None
        if o.down_since is not None:
            if o.down_cause != "offline" or o.last_online_at is not None:
                want = _CAUSE_KIND[o.down_cause or "offline"]
        for kind in DOWN_KINDS:  # clearings first, then what replaces them
            key = self.onu_key(kind, o.pon, o.onu_id)
            if kind != want and self.book.get(key) is not None:
                self.book.clear(key, now, "ONU back online" if want is None
                                else f"superseded by {want}")
        if want is not None:
            key = self.onu_key(want, o.pon, o.onu_id)
            if self.book.get(key) is None:
                self._raise_down(o, want, key, now)

    def _raise_down(self, o: OnuState, kind: str, key: str, now: float) -> None:
        what = {"onu_los": ("loss of signal", "major", "loss of signal (LOS) reported by the OLT"),
                "onu_dying_gasp": ("dying gasp", "info", "power loss at the subscriber"),
                "onu_offline": ("offline", "major", None)}[kind]
        label, severity, cause = what
        self.book.raise_(
            now, kind, key, severity, f"ONU {o.pon}/{o.onu_id} on {self.olt_id}: {label}",
            f"ONU {o.onu_id}{f' ({o.serial})' if o.serial else ''} on PON {o.pon} "
            f"is {label if kind == 'onu_offline' else 'down: ' + label}",
            object=f"{o.pon}/{o.onu_id}", probable_cause=cause, onus=(o.ref,),
            opened_at=o.cause_at if o.cause_at is not None else now, pon=o.pon,
            onu_id=o.onu_id, details={"pon": o.pon, "onu_id": o.onu_id, "serial": o.serial})

    def _eval_power(self, o: OnuState, now: float, th: Thresholds) -> None:
        """Class B+ limits, drift from the baseline, then the baseline itself."""
        checks = (
            ("onu_low_rx", o.onu_rx, th.onu_rx_min, "low", "ONU Rx", "below"),
            ("onu_high_rx", o.onu_rx, th.onu_rx_max, "high", "ONU Rx", "above"),
            ("olt_low_rx", o.olt_rx, th.olt_rx_min, "low", "OLT Rx", "below"),
            ("olt_high_rx", o.olt_rx, th.olt_rx_max, "high", "OLT Rx", "above"),
        )
        for kind, value, limit, side, what, word in checks:
            key = self.onu_key(kind, o.pon, o.onu_id)
            live = self.book.get(key) is not None
            verdict = limit_verdict(value, live, limit, side, th.hysteresis_db)
            if verdict is None:
                continue
            if verdict:
                severity = "minor" if side == "high" else (
                    "critical" if value < limit - th.critical_margin_db else "major")
                self._raise_power(o, kind, key, now, severity,
                                  f"{what} {_dbm(value)} {word} the limit {_dbm(limit)}",
                                  {"value_dbm": value, "limit_dbm": limit}, live)
            elif live:
                self.book.clear(key, now, f"{what} {_dbm(value)} back within limits")
        key = self.onu_key("onu_tx_out_of_range", o.pon, o.onu_id)
        live = self.book.get(key) is not None
        if o.onu_tx is not None:
            if (limit_verdict(o.onu_tx, live, th.onu_tx_min, "low", th.hysteresis_db)
                    or limit_verdict(o.onu_tx, live, th.onu_tx_max, "high", th.hysteresis_db)):
                self._raise_power(o, "onu_tx_out_of_range", key, now, "minor",
                                  f"ONU Tx {_dbm(o.onu_tx)} outside {_dbm(th.onu_tx_min)}"
                                  f" .. {_dbm(th.onu_tx_max)}", {"value_dbm": o.onu_tx}, live)
            elif live:
                self.book.clear(key, now, f"ONU Tx {_dbm(o.onu_tx)} back within limits")
        # drift (against the baseline before this sample), then the baseline
        key = self.onu_key("onu_rx_drift", o.pon, o.onu_id)
        live = self.book.get(key) is not None
        verdict = drift_verdict(o.baseline, o.baseline_n, o.onu_rx, live, th)
        if verdict:
            self._raise_power(o, "onu_rx_drift", key, now, "warning",
                              f"ONU Rx {_dbm(o.onu_rx)} is {o.baseline - o.onu_rx:.1f} dB below "
                              f"its baseline {_dbm(o.baseline)}",
                              {"value_dbm": o.onu_rx, "baseline_dbm": round(o.baseline, 2)},
                              live)
        elif verdict is False and live:
            self.book.clear(key, now, f"ONU Rx {_dbm(o.onu_rx)} back near its baseline")
        if o.onu_rx is not None:
            if o.baseline is not None:
                drop = o.baseline - o.onu_rx
                if drop >= th.drift_db:
                    o.drop_since = o.drop_since if o.drop_since is not None else now
                elif drop < th.drift_clear_db:
                    o.drop_since = None
            o.baseline = ewma(o.baseline, o.baseline_at, o.onu_rx, now, th.baseline_tau_s)
            o.baseline_at = now
            o.baseline_n += 1

    def _raise_power(self, o: OnuState, kind: str, key: str, now: float, severity: str,
                     explanation: str, details: dict, live: bool) -> None:
        if live and self.book.get(key).severity == severity:
            return  # the reading moved, the alert did not: no event per poll
        title = {"onu_low_rx": "low ONU Rx", "onu_high_rx": "ONU Rx overload",
                 "olt_low_rx": "low OLT Rx", "olt_high_rx": "OLT Rx overload",
                 "onu_tx_out_of_range": "ONU Tx out of range",
                 "onu_rx_drift": "ONU Rx drift"}[kind]
        self.book.raise_(
            now, kind, key, severity, f"ONU {o.pon}/{o.onu_id} on {self.olt_id}: {title}",
            explanation, object=f"{o.pon}/{o.onu_id}", onus=(o.ref,), pon=o.pon,
            onu_id=o.onu_id,
            details={"pon": o.pon, "onu_id": o.onu_id, "serial": o.serial, **details})

    # correlation
    def _eval_pon(self, pon: str, now: float, th: Thresholds) -> None:
        onus = self.pons.get(pon, {})
        known = sum(1 for o in onus.values() if o.last_online_at is not None)
        self._eval_group(
            "pon_down", pon, onus, now, th, known,
            is_hit=lambda o: o.down_since is not None,
            since=lambda o: o.down_since,
            find=pon_outage)
        if self.book.get(self.pon_key("pon_down", pon)) is None:
            self._eval_group(
                "pon_degraded", pon, onus, now, th, known,
                is_hit=lambda o: o.drop_since is not None and o.online is not False,
                since=lambda o: o.drop_since,
                find=pon_power_drop)
        else:
            self.book.clear(self.pon_key("pon_degraded", pon), now,
                            "superseded by pon_down")

    def _eval_group(self, kind, pon, onus, now, th, known, is_hit, since, find) -> None:
        key = self.pon_key(kind, pon)
        a = self.book.get(key)
        if a is None:
            hit = find(onus.values(), now, th)
            if not hit:
                return
            members = sorted(hit, key=lambda o: o.onu_id)
            opened_at = now
        else:
            # The members it opened for, and stragglers that went the same way since.
            ids = {r.onu_id for r in a.onus}
            members = [onus[i] for i in ids if i in onus]
            members += [o for o in onus.values() if o.onu_id not in ids and is_hit(o)
                        and since(o) >= a.opened_at - th.pon_window_s]
            members.sort(key=lambda o: o.onu_id)
            still = sum(1 for o in members if is_hit(o))
            if not still_active(still, len(members), th):
                self.book.clear(key, now, f"{len(members) - still} of {len(members)} ONUs "
                                          "back" + (" online" if kind == "pon_down" else ""))
                return
            opened_at = a.opened_at
        affected = sum(1 for o in onus.values() if o.last_online_at is not None and is_hit(o))
        if kind == "pon_down":
            gasps = sum(1 for o in members if o.down_cause == "dying_gasp")
            share = gasps / len(members)
            cause = probable_cause(share, th)
            title = f"PON {pon} on {self.olt_id} down ({cause})"
            explanation = (f"{affected} of {known} ONUs on PON {pon} are down "
                           f"({len(members)} went down within {th.pon_window_s:g} s; "
                           f"{gasps} sent a dying gasp)")
            details = {"pon": pon, "known_onus": known, "down_onus": affected,
                       "dying_gasp_share": round(share, 3)}
            severity = "critical"
        else:
            cause = CAUSE_DEGRADATION
            title = f"PON {pon} on {self.olt_id}: optical power dropped together"
            explanation = (f"ONU Rx of {affected} of {known} ONUs on PON {pon} fell "
                           f"{th.drift_db:g} dB or more below their baselines together")
            details = {"pon": pon, "known_onus": known, "dropped_onus": affected}
            severity = "major"
        self.book.raise_(now, kind, key, severity, title, explanation, object=pon,
                         probable_cause=cause, onus=tuple(o.ref for o in members),
                         details=details, opened_at=opened_at, pon=pon)

    def _eval_olt(self, now: float, th: Thresholds) -> None:
        key = f"olt_down:{self.olt_id}"
        pons = [p for p, d in self.pons.items()
                if any(o.last_online_at is not None for o in d.values())]
        down = {p: pa for p in pons if (pa := self.book.get(self.pon_key("pon_down", p)))}
        a = self.book.get(key)
        if a is None:
            recent = sorted(p for p, pa in down.items() if pa.opened_at >= now - th.pon_window_s)
            need = max(th.olt_min_pons, math.ceil(th.olt_share * len(pons)))
            if len(pons) < th.olt_min_pons or len(recent) < need:
                return
            members, opened_at = recent, now
        else:
            members = sorted(set(a.details.get("pons", [])) | {
                p for p, pa in down.items() if pa.opened_at >= a.opened_at - th.pon_window_s})
            still = sum(1 for p in members if p in down)
            if not still_active(still, len(members), th):
                self.book.clear(key, now, f"{len(members) - still} of {len(members)} PON "
                                          "ports back")
                return
            opened_at = a.opened_at
        member_alerts = [down[p] for p in members if p in down]
        onus = tuple(r for pa in member_alerts for r in pa.onus)
        gasps = sum(1 for r in onus if getattr(self.pons.get(r.pon, {}).get(r.onu_id),
                                               "down_cause", None) == "dying_gasp")
        share = gasps / len(onus) if onus else 0.0
        cause = CAUSE_POWER_OUTAGE if share >= th.power_outage_share else CAUSE_OLT_FAILURE
        self.book.raise_(
            now, "olt_down", key, "critical", f"{self.olt_id}: {len(member_alerts)} of "
            f"{len(pons)} PON ports down ({cause})",
            f"PON ports {', '.join(members)} went down within {th.pon_window_s:g} s "
            f"({len(onus)} ONUs; {gasps} sent a dying gasp)",
            object=self.olt_id, probable_cause=cause, onus=onus,
            details={"pons": members, "known_pons": len(pons),
                     "dying_gasp_share": round(share, 3)},
            opened_at=opened_at)

    def _suppress(self, now: float) -> None:
        """Per-ONU alerts on a PON with a live PON alert are explained by it (power
        alerts also by a PON power drop; drift also by the ONU's own low-Rx alert);
        PON alerts by a live OLT alert."""
        live = self.book.live
        olt = live.get(f"olt_down:{self.olt_id}")
        for a in list(live.values()):
            by = None
            if a.kind in PON_KINDS:
                if olt is not None:
                    by = olt.alert_id
                elif a.kind == "pon_degraded":
                    pd = live.get(self.pon_key("pon_down", a.pon))
                    by = pd.alert_id if pd is not None else None
            elif a.onu_id is not None:
                pd = live.get(self.pon_key("pon_down", a.pon))
                if pd is not None:
                    by = pd.alert_id
                elif a.kind in POWER_KINDS and \
                        (pg := live.get(self.pon_key("pon_degraded", a.pon))) is not None:
                    by = pg.alert_id
                elif a.kind == "onu_rx_drift" and (low := live.get(
                        self.onu_key("onu_low_rx", a.pon, a.onu_id))) is not None:
                    by = low.alert_id
            self.book.suppress(a, by, now)

    def _forget(self, now: float, th: Thresholds) -> None:
        cutoff = now - th.forget_after_s
        for pon, d in list(self.pons.items()):
            for onu_id in [i for i, o in d.items() if o.last_seen < cutoff]:
                for kind in ONU_KINDS:
                    self.book.clear(self.onu_key(kind, pon, onu_id), now,
                                    "ONU no longer reported by the OLT")
                del d[onu_id]
            if not d:
                del self.pons[pon]
                for kind in PON_KINDS:
                    self.book.clear(self.pon_key(kind, pon), now,
                                    "PON port no longer reported by the OLT")
