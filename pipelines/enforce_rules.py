"""Enforcement decisions, pure: per subscriber, which NAS sessions get which request.

No I/O, no clock, no Bytewax. ``pipelines/enforce.py`` feeds these classes events in
stream order and passes the time in; the sink sends what they decide.

- ``NasSessions`` (one per tenant/NAS) knows which subscriber holds each session, so an
  Accounting-On/Off of a NAS becomes a ``NasReset`` for each subscriber it affected.
- ``SubscriberEnforcement`` (one per tenant/subscriber) tracks the subscriber's open
  sessions, the enforced state (normal / throttled / suspended) and the intents already
  applied. An action yields one ``Dispatch`` per open session plus an ``ActionRecord``;
  a new session of a throttled or suspended subscriber yields a ``Dispatch`` bringing it
  into the enforced state (under the enforcing intent's id: attempts are keyed by intent
  *and* session); a NAK with Error-Cause 503 (session context not found) or an ACKed
  Disconnect removes the session; a cycle-bound state lifts at its ``until`` time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime
from typing import Literal
from zoneinfo import ZoneInfo

from ispstream.contracts import AcctEvent, ActionEvent, ActionResult

State = Literal["normal", "throttled", "suspended"]
SESSION_CONTEXT_NOT_FOUND = 503
SEEN_INTENTS = 512  # intents remembered per subscriber for de-duplication
_SEVERITY = {"normal": 0, "throttled": 1, "suspended": 2}


def event_time(ev: AcctEvent) -> int:
    """Event-Timestamp, else arrival minus Acct-Delay-Time (unix seconds)."""
    if ev.event_timestamp is not None:
        return ev.event_timestamp
    return int(ev.received_at) - ev.delay_time


def until_of(action: ActionEvent, tz: str | None) -> float | None:
    """When a quota state lifts by itself: the cycle's end (``cycle_end`` is the first
    day of the next cycle) at local midnight in the tenant's zone. Other actions have
    no end."""
    if action.source != "quota" or not action.cycle_end or action.kind not in (
            "throttle", "suspend"):
        return None
    zone = ZoneInfo(tz or "UTC")
    end = datetime.combine(date.fromisoformat(action.cycle_end), dtime(0), zone)
    return end.timestamp()


def cycle_resume_intent(tenant_id: str, username: str, enforcing_intent: str) -> str:
    """The stable id of the resume that lifts ``enforcing_intent`` at its cycle's end."""
    h = hashlib.sha256(f"{tenant_id}\0{username}\0{enforcing_intent}\0cycle-end".encode())
    return "cycle-" + h.hexdigest()[:32]


@dataclass(frozen=True)
class OpenSession:
    nas_id: str
    nas_ip: str
    session_id: str
    framed_ip: str | None
    last_seen: int  # event time of its latest record
    interim_interval: int | None


@dataclass(frozen=True)
class Enforced:
    """What the NAS should apply to the subscriber now, and which intent decided it."""

    state: State = "normal"
    rate: str | None = None
    intent_id: str | None = None
    reason: str = ""
    source: str = ""
    since: float = 0.0
    until: float | None = None


@dataclass(frozen=True)
class NasReset:
    """The NAS restarted (Accounting-On/Off): the subscriber's sessions on it are gone."""

    tenant_id: str
    username: str
    nas_id: str
    at: int
    session_ids: tuple[str, ...]  # the subscriber's sessions the NAS held


@dataclass(frozen=True)
class Dispatch:
    """One request to send: operation ``op`` on one session, under intent ``intent_id``.

    ``prev_state`` is the state the operation leaves (a resume from a walled garden
    disconnects instead of restoring a rate).
    """

    tenant_id: str
    username: str
    intent_id: str
    op: Literal["throttle", "suspend", "disconnect", "resume"]
    rate: str | None
    prev_state: State
    nas_id: str
    nas_ip: str
    session_id: str
    framed_ip: str | None

    @property
    def attempt_key(self) -> tuple[str, str, str, str]:
        return (self.tenant_id, self.intent_id, self.nas_id, self.session_id)


@dataclass(frozen=True)
class ActionRecord:
    """An action as the enforcer applied it: the ``actions`` row, how many sessions it
    was sent to, and the enforced state afterwards (``None``: unchanged)."""

    action: ActionEvent
    dispatched: int
    enforced: Enforced | None
    note: str = ""


@dataclass
class SubscriberConfig:
    default_interim_interval: int = 300
    stale_factor: float = 2.5


@dataclass
class SubscriberEnforcement:
    """Sessions, enforced state and applied intents of one subscriber."""

    tenant_id: str
    username: str
    enforced: Enforced = field(default_factory=Enforced)
    sessions: dict[tuple[str, str], OpenSession] = field(default_factory=dict)
    seen: dict[str, None] = field(default_factory=dict)
    clock: int = 0  # the latest event time of the subscriber's accounting

    # --- accounting ---------------------------------------------------------------------

    def on_acct(self, ev: AcctEvent) -> list[Dispatch]:
        """Start/Interim open (or refresh) a session; Stop closes it. A session new to
        the enforcer while the subscriber is throttled or suspended is brought into
        that state."""
        key = (ev.nas_id, ev.session_id)
        if ev.status == "Stop":
            self.sessions.pop(key, None)
            return []
        if ev.status not in ("Start", "Interim-Update"):
            return []
        t = event_time(ev)
        self.clock = max(self.clock, t)
        prev = self.sessions.get(key)
        self.sessions[key] = OpenSession(
            ev.nas_id, ev.nas_ip, ev.session_id,
            ev.framed_ip or (prev.framed_ip if prev else None),
            max(t, prev.last_seen) if prev else t,
            ev.interim_interval or (prev.interim_interval if prev else None))
        if prev is not None or self.enforced.state == "normal":
            return []
        return [self._dispatch(self.sessions[key], self._reconcile_op(), self.enforced.rate,
                               self.enforced.state, self.enforced.intent_id)]

    def on_nas_reset(self, reset: NasReset) -> None:
        for sid in reset.session_ids:
            self.sessions.pop((reset.nas_id, sid), None)

    def on_result(self, r: ActionResult) -> None:
        """A session the NAS does not know (503), or one it disconnected, is closed."""
        gone = ((r.outcome == "nak" and r.error_cause == SESSION_CONTEXT_NOT_FOUND)
                or (r.outcome == "ack" and r.request == "disconnect"))
        if gone:
            self.sessions.pop((r.nas_id, r.session_id), None)

    # --- actions ------------------------------------------------------------------------

    def on_action(self, a: ActionEvent, until: float | None,
                  cfg: SubscriberConfig) -> list[Dispatch | ActionRecord]:
        """Apply an action once (a replayed or duplicated intent does nothing)."""
        if a.intent_id in self.seen:
            return []
        self._remember(a.intent_id)
        self._prune_stale(cfg)
        prev = self.enforced
        new: Enforced | None = None
        op = None
        note = ""
        if a.kind == "throttle":
            if _SEVERITY[prev.state] > _SEVERITY["throttled"]:
                note = "subscriber is suspended; throttle not applied"
            else:
                new = Enforced("throttled", a.rate, a.intent_id, a.reason, a.source, a.at,
                               until)
                op = "throttle"
        elif a.kind == "suspend":
            new = Enforced("suspended", None, a.intent_id, a.reason, a.source, a.at, until)
            op = "suspend"
        elif a.kind == "resume":
            if prev.state == "normal":
                note = "subscriber is not throttled or suspended"
            else:
                new = Enforced("normal", None, a.intent_id, a.reason, a.source, a.at, None)
                op = "resume"
        elif a.kind == "disconnect":
            op = "disconnect"
        # notify: recorded only
        out: list[Dispatch | ActionRecord] = []
        if op is not None:
            # throttle: the reduced rate; resume: the plan's normal rate when the action
            # names it (else the sink looks the plan's rate_limit up)
            rate = a.rate if op in ("throttle", "resume") else None
            out = [self._dispatch(s, op, rate, prev.state, a.intent_id)
                   for s in sorted(self.sessions.values(),
                                   key=lambda s: (s.nas_id, s.session_id))]
        if new is not None:
            self.enforced = new
        out.append(ActionRecord(a, len(out), new, note))
        return out

    def due_at(self) -> float | None:
        """When the enforced state lifts by itself, if it does."""
        return self.enforced.until if self.enforced.state != "normal" else None

    def on_time(self, now: float, cfg: SubscriberConfig) -> list[Dispatch | ActionRecord]:
        """Lift a cycle-bound state whose time has come (a ``resume`` from ``cycle``)."""
        until = self.due_at()
        if until is None or now < until:
            return []
        e = self.enforced
        resume = ActionEvent(
            intent_id=cycle_resume_intent(self.tenant_id, self.username, e.intent_id or ""),
            tenant_id=self.tenant_id, username=self.username, kind="resume", source="cycle",
            reason=f"billing cycle ended; lifts {e.state} of intent {e.intent_id}", at=until)
        return self.on_action(resume, None, cfg)

    # --- helpers ------------------------------------------------------------------------

    def _reconcile_op(self) -> str:
        return "throttle" if self.enforced.state == "throttled" else "suspend"

    def _dispatch(self, s: OpenSession, op: str, rate: str | None, prev_state: State,
                  intent_id: str | None) -> Dispatch:
        return Dispatch(self.tenant_id, self.username, intent_id or "", op, rate, prev_state,
                        s.nas_id, s.nas_ip, s.session_id, s.framed_ip)

    def _remember(self, intent_id: str) -> None:
        self.seen[intent_id] = None
        while len(self.seen) > SEEN_INTENTS:
            del self.seen[next(iter(self.seen))]

    def _prune_stale(self, cfg: SubscriberConfig) -> None:
        """Sessions silent for ``stale_factor`` × their interim interval are considered
        gone, as the usage flow closes them. Measured against the subscriber's own
        accounting clock, not the action's time: accounting and actions are read
        independently, and a lagging accounting stream must not make sessions look dead."""
        for key, s in list(self.sessions.items()):
            interval = s.interim_interval or cfg.default_interim_interval
            if s.last_seen + cfg.stale_factor * interval < self.clock:
                del self.sessions[key]

    def snapshot(self) -> tuple:
        """An immutable copy for recovery (the values are frozen dataclasses)."""
        return (self.tenant_id, self.username, self.enforced, dict(self.sessions),
                tuple(self.seen), self.clock)

    @classmethod
    def restore(cls, snap: tuple) -> "SubscriberEnforcement":
        tenant_id, username, enforced, sessions, seen, clock = snap
        return cls(tenant_id, username, enforced, dict(sessions), dict.fromkeys(seen), clock)


@dataclass
class NasSessions:
    """Which subscriber holds each open session of one NAS.

    Accounting-On/Off travel under their own Kafka key, so they may be read before or
    after the records of the sessions they end: sessions already seen are reset, and a
    Start or Interim whose event time is before the latest On/Off is not passed on (the
    session died with the restart).
    """

    sessions: dict[str, str] = field(default_factory=dict)
    reset_at: int | None = None

    def apply(self, ev: AcctEvent) -> list[AcctEvent | NasReset]:
        """Pass the event on; an Accounting-On/Off becomes a reset for every subscriber
        that had a session on this NAS."""
        if ev.status in ("Accounting-On", "Accounting-Off"):
            t = event_time(ev)
            self.reset_at = t if self.reset_at is None else max(self.reset_at, t)
            by_user: dict[str, list[str]] = {}
            for sid, user in self.sessions.items():
                by_user.setdefault(user, []).append(sid)
            self.sessions.clear()
            return [NasReset(ev.tenant_id, u, ev.nas_id, t, tuple(sorted(sids)))
                    for u, sids in sorted(by_user.items())]
        if (ev.status != "Stop" and self.reset_at is not None
                and event_time(ev) < self.reset_at):
            return []
        user = ev.username or self.sessions.get(ev.session_id)
        if ev.status == "Stop":
            self.sessions.pop(ev.session_id, None)
        elif ev.username:
            self.sessions[ev.session_id] = ev.username
        if not user:
            return []  # a session without a User-Name cannot be enforced
        return [ev if ev.username else ev.model_copy(update={"username": user})]


def with_enforced(state: SubscriberEnforcement, enforced: Enforced) -> SubscriberEnforcement:
    """A fresh subscriber state starting from an enforced state stored elsewhere."""
    state.enforced = enforced
    if enforced.intent_id:
        state._remember(enforced.intent_id)
    return state


__all__ = ["ActionRecord", "Dispatch", "Enforced", "NasReset", "NasSessions", "OpenSession",
           "SubscriberConfig", "SubscriberEnforcement", "cycle_resume_intent", "event_time",
           "until_of"]
