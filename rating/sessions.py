"""Per-NAS session accounting: 64-bit counter totals in, usage deltas and session states out.

Pure and deterministic: no I/O, no clock (time is the records' *event* time), no
randomness, and every object is picklable (the stream snapshots ``NasState`` with pickle).

Rules (see the design's "Accounting semantics"):

- Deltas are computed per session and per direction against the highest total seen, so
  duplicates and reordered records add 0 and nothing is ever billed negative.
- A decrease with a later event time is a counter reset: the new total is billed (the
  counter restarted at 0) and the delta is flagged ``counter_reset``. The highest total
  of the counter before the reset is kept, so a late record from before the reset is
  compared with the counter it belongs to and is not billed a second time.
- Start / Interim-Update / Stop open, update and close sessions; an Interim or a Stop
  without a Start opens the session; a Stop without counters zeroes nothing.
- Accounting-On / Accounting-Off close every open session of the NAS that was last heard
  of at or before that moment.
- Sessions silent for ``stale_factor`` x their interim interval (event time, against the
  NAS watermark) are closed as stale; closed sessions are forgotten ``closed_retention``
  seconds (of watermark) after they were last heard of.
"""

from __future__ import annotations

import hashlib
import math
from operator import attrgetter
from typing import NamedTuple

from rating.snapshots import dump_entries, load_entries

START = "Start"
INTERIM = "Interim-Update"
STOP = "Stop"
ACCOUNTING_ON = "Accounting-On"
ACCOUNTING_OFF = "Accounting-Off"
STATUSES = (START, INTERIM, STOP, ACCOUNTING_ON, ACCOUNTING_OFF)

OPEN = "open"
CLOSED = "closed"
STALE = "stale"

COUNTER_RESET = "counter_reset"

#: Sweep for stale and expired sessions at most once per this many seconds of watermark.
SWEEP_EVERY = 60
#: Interim intervals below this are treated as this (RFC 2869: SHOULD NOT be < 60 s), so
#: a NAS that sends an Interim right after the Start does not make its sessions stale at
#: once.
MIN_INTERIM_INTERVAL = 60
#: Record ids remembered per session for duplicate detection (retransmits arrive within
#: seconds; older duplicates still bill 0 through the highest-total rule).
RECENT_IDS = 4
#: Counter generations (before resets) remembered per session and direction.
MAX_EPOCHS = 4

_NO_FLOOR = -(2**63)

#: Builds a named tuple from a tuple of all its fields, without the Python frame of its
#: generated ``__new__``: half the cost, for the records built once or more per event.
_new = tuple.__new__


class AcctRecord(NamedTuple):
    """One accounting record, protocol-neutral (built from ``ispstream.contracts.AcctEvent``).

    The records the stream carries per event (this one, ``SessionDelta``,
    ``SessionSnapshot``, ``rating.tariff.RatedPiece``) are immutable named tuples: built
    several times per event, they cost a quarter of what a frozen dataclass costs.
    """

    tenant_id: str
    nas_id: str
    session_id: str
    status: str  # Start | Interim-Update | Stop | Accounting-On | Accounting-Off
    username: str | None
    event_time: int  # unix seconds, see event_time()
    upload: int | None  # 64-bit total since session start (Acct-Input), None if absent
    download: int | None  # 64-bit total since session start (Acct-Output), None if absent
    interim_interval: int | None = None  # Acct-Interim-Interval, when the packet had it
    session_time: int | None = None
    framed_ip: str | None = None
    terminate_cause: str | None = None


def total(octets: int | None, gigawords: int | None) -> int | None:
    """64-bit total = gigawords x 2**32 + octets; None when the octets are absent."""
    if octets is None:
        return None
    return ((gigawords or 0) << 32) + octets


def event_time(event_timestamp: int | None, received_at: float, delay_time: int | None) -> int:
    """When the NAS produced the record: Event-Timestamp, else arrival - Acct-Delay-Time.

    A retransmit arrives later with a larger Acct-Delay-Time, so it gets the same event
    time (to the second) as the original.
    """
    if event_timestamp is not None:
        return int(event_timestamp)
    return math.floor(received_at) - (delay_time or 0)


_blake2b = hashlib.blake2b


def record_id(rec: AcctRecord) -> str:
    """Content id of a record (24 hex chars): the same for every retransmit of it.

    Hashes tenant, NAS, session, status, event time and totals (absent totals as
    ``None``); the RADIUS identifier is not part of it (retransmits get new ones). The
    identifiers are length-prefixed, so no two different records share a key.
    """
    t, n, s = rec.tenant_id, rec.nas_id, rec.session_id
    key = (f"{len(t)}:{t}|{len(n)}:{n}|{len(s)}:{s}|{rec.status}|{rec.event_time}|"
           f"{rec.upload}|{rec.download}")
    return _blake2b(key.encode(), digest_size=12).hexdigest()


class SessionDelta(NamedTuple):
    """Positive usage of one session between two of its records, to be rated."""

    tenant_id: str
    nas_id: str
    session_id: str
    username: str | None
    record_id: str
    ts_start: int  # start of the span the bytes moved in
    ts_end: int  # event time of the record
    upload: int
    download: int
    flags: tuple[str, ...] = ()


class SessionSnapshot(NamedTuple):
    """Current state of one session (idempotent upsert of ``sessions``, newest version wins)."""

    tenant_id: str
    nas_id: str
    session_id: str
    username: str | None
    state: str  # open | closed | stale
    close_reason: str | None
    started_at: int
    updated_at: int
    stopped_at: int | None
    upload: int  # billed so far (sum of deltas, across resets)
    download: int
    resets: int
    interim_interval: int | None
    framed_ip: str | None
    version: int


class _Session:
    """Mutable state of one session (internal)."""

    __slots__ = ("username", "state", "close_reason", "final", "started_at",
                 "last_time", "prev_time", "stopped_at", "hi_up", "hi_down", "billed_up",
                 "billed_down", "resets", "interim", "framed_ip", "records", "external",
                 "recent", "old_up", "old_down", "deadline")

    def __init__(self, username: str | None, started_at: int, t: int, records: int,
                 recent: list[str]) -> None:
        self.username = username
        self.state = OPEN
        self.close_reason: str | None = None
        self.final = False  # closed by a Stop (as opposed to On/Off or stale)
        self.started_at = started_at
        self.last_time = t  # latest event time of the session's own records
        self.prev_time: int | None = None  # the one before (observed interim gap)
        self.stopped_at: int | None = None
        self.hi_up = 0  # highest total of the current counter generation
        self.hi_down = 0
        self.billed_up = 0
        self.billed_down = 0
        self.resets = 0
        self.interim: int | None = None  # declared Acct-Interim-Interval
        self.framed_ip: str | None = None
        # version = 3 x accepted records + external, external = 1 when a sweep closed it
        # as stale, 2 when an On/Off closed it (0 otherwise). Strictly increasing, and
        # the same for the same records of this session whatever their interleaving with
        # other partitions' records was (which moves stale sweeps and On/Off around).
        self.records = records
        self.external = 0
        self.recent = recent  # first 64 bits of the latest record ids, as ints
        # Earlier counter generations, only after a reset: [floor, [boundary, hi], ...]
        # (generation i covers event times [boundary_{i-1}, boundary_i)).
        self.old_up: list | None = None
        self.old_down: list | None = None
        # event time after which a sweep acts: stale when open, forgotten when closed
        self.deadline: float = 0

    def __getstate__(self):
        return _session_values(self)

    def __setstate__(self, state) -> None:
        for setter, v in zip(_SESSION_SETTERS, state):
            setter(self, v)


_session_values = attrgetter(*_Session.__slots__)
_SESSION_SETTERS = [_Session.__dict__[k].__set__ for k in _Session.__slots__]


def _restored_session(values) -> _Session:
    s = object.__new__(_Session)
    s.__setstate__(values)
    return s


def _push_generation(old: list | None, boundary: int, hi: int) -> list:
    if old is None:
        return [_NO_FLOOR, [boundary, hi]]
    old.append([boundary, hi])
    if len(old) > MAX_EPOCHS + 1:
        dropped = old.pop(1)
        old[0] = dropped[0]  # records older than this are no longer attributable
    return old


def _late(hi: int, old: list | None, t: int, new: int) -> tuple[int, int]:
    """Delta and new highest for a late record: positive part only, never lowers."""
    if old is not None and t < old[-1][0]:
        if t < old[0]:
            return 0, hi
        for gen in old[1:]:
            if t < gen[0]:
                if new > gen[1]:
                    d = new - gen[1]
                    gen[1] = new
                    return d, hi
                return 0, hi
    if new > hi:
        return new - hi, new
    return 0, hi


class NasState:
    """Every session of one NAS (the stream keys this state by tenant/NAS).

    ``apply(rec)`` returns, in order: at most one ``SessionDelta`` (positive usage to
    rate), at most one ``SessionSnapshot`` of the record's session, then snapshots of
    sessions a sweep closed as stale. Accounting-On/Off return one snapshot per session
    they closed. Counters for observability: ``records``, ``duplicates``, ``late``,
    ``resets``, ``reopened``, ``reused``, ``stale``, ``nas_closed``, ``evicted``.
    """

    def __init__(self, default_interim_interval: int = 300, stale_factor: float = 2.5,
                 closed_retention: int = 172800, *, reuse_grace: int = 10) -> None:
        if default_interim_interval <= 0 or stale_factor <= 0 or closed_retention < 0:
            raise ValueError("intervals, factor and retention must be positive")
        self.default_interim_interval = default_interim_interval
        self.stale_factor = stale_factor
        self.closed_retention = closed_retention
        # A non-Start record more than this long after a session's Stop is a new session
        # reusing the id (its Start was lost); within it, a late retransmit (event times
        # derived from Acct-Delay-Time can differ by a second) that must not bill again.
        self.reuse_grace = reuse_grace
        self.tenant_id: str | None = None
        self.nas_id: str | None = None
        self.sessions: dict[str, _Session] = {}
        # Each session pickled as it was at the last snapshot, dropped when it changes:
        # a snapshot pickles only the sessions that changed since the one before.
        self._pickled: dict[str, bytes] = {}
        self.watermark: int | None = None  # max event time seen from this NAS
        self.last_sweep: int | None = None
        self.last_reset: tuple[int, str] | None = None  # latest On/Off: (time, reason)
        self.nas_recent: list[str] = []
        self.records = 0
        self.duplicates = 0
        self.late = 0
        self.resets = 0
        self.reopened = 0
        self.reused = 0
        self.stale = 0
        self.nas_closed = 0
        self.evicted = 0

    # -- public -------------------------------------------------------------------------

    def apply(self, rec: AcctRecord) -> list[SessionDelta | SessionSnapshot]:
        """Apply one record; return what it produced (nothing for an exact duplicate)."""
        if self.nas_id is None:
            self.tenant_id, self.nas_id = rec.tenant_id, rec.nas_id
        elif rec.nas_id != self.nas_id or rec.tenant_id != self.tenant_id:
            raise ValueError(f"record of {rec.tenant_id}/{rec.nas_id} applied to the state "
                             f"of {self.tenant_id}/{self.nas_id}")
        status = rec.status
        if status == ACCOUNTING_ON or status == ACCOUNTING_OFF:
            return self._nas_event(rec)
        if status != INTERIM and status != START and status != STOP:
            raise ValueError(f"unknown Acct-Status-Type {status!r}")

        rid = record_id(rec)
        rkey = int(rid[:16], 16)
        sid = rec.session_id
        s = self.sessions.get(sid)
        if s is not None and rkey in s.recent:
            self.duplicates += 1
            return []
        self.records += 1
        self._pickled.pop(sid, None)
        t = rec.event_time
        wm = self.watermark
        if wm is None or t > wm:
            self.watermark = wm = t

        out: list = []
        changed = False
        new = False
        if s is None:
            s = self._new(rec, 0, [])
            new = changed = True
        elif s.state != OPEN and t > s.stopped_at and (
                status == START or (s.final and t > s.stopped_at + self.reuse_grace)):
            # The id is reused by a new session (a Start after the close, or a record
            # well after a Stop): fresh counters; the version keeps growing.
            s = self._new(rec, s.records, s.recent)
            new = changed = True
            self.reused += 1
        elif s.state != OPEN and not s.final and t > s.stopped_at:
            # closed by On/Off or as stale, but the NAS reports it alive
            s.state, s.close_reason, s.stopped_at, s.external = OPEN, None, None, 0
            changed = True
            self.reopened += 1

        s.records += 1
        recent = s.recent
        recent.append(rkey)
        if len(recent) > RECENT_IDS:
            del recent[0]

        if status == START and not new:
            # A Start for a session we already know: nothing to bill; an earlier Start
            # (arriving late) tells the true start time.
            if t < s.started_at:
                s.started_at = t
                changed = True
            if s.username is None and rec.username is not None:
                s.username = rec.username
                changed = True
        else:
            up, down = rec.upload, rec.download
            last = s.last_time
            du = dd = 0
            reset = False
            if new or (t > last and not s.final):
                # in event-time order
                if up is not None:
                    hi = s.hi_up
                    if up >= hi:
                        du = up - hi
                    else:
                        du = up
                        s.old_up = _push_generation(s.old_up, t, hi)
                        reset = True
                    s.hi_up = up
                if down is not None:
                    hi = s.hi_down
                    if down >= hi:
                        dd = down - hi
                    else:
                        dd = down
                        s.old_down = _push_generation(s.old_down, t, hi)
                        reset = True
                    s.hi_down = down
                ts_start = s.started_at if new else last
                if not new:
                    s.prev_time = last
                    s.last_time = t
                    changed = True
                if s.interim != rec.interim_interval and rec.interim_interval is not None:
                    s.interim = rec.interim_interval
                    changed = True
                if rec.framed_ip is not None and rec.framed_ip != s.framed_ip:
                    s.framed_ip = rec.framed_ip
                    changed = True
            else:
                # late (at or before the session's latest record), or after its Stop
                self.late += 1
                if up is not None:
                    du, s.hi_up = _late(s.hi_up, s.old_up, t, up)
                if down is not None:
                    dd, s.hi_down = _late(s.hi_down, s.old_down, t, down)
                ts_start = t if t <= last else last
                if s.interim is None and rec.interim_interval is not None:
                    s.interim = rec.interim_interval
                    changed = True
                if s.framed_ip is None and rec.framed_ip is not None:
                    s.framed_ip = rec.framed_ip
                    changed = True
            if s.username is None and rec.username is not None:
                s.username = rec.username
                changed = True
            if du or dd:
                s.billed_up += du
                s.billed_down += dd
                changed = True
                if reset:
                    s.resets += 1
                    self.resets += 1
                out.append(_new(SessionDelta, (rec.tenant_id, rec.nas_id, sid, s.username,
                                               rid, ts_start, t, du, dd,
                                               (COUNTER_RESET,) if reset else ())))
            elif reset:
                s.resets += 1
                self.resets += 1
                changed = True
            if status == STOP and not s.final:
                s.state = CLOSED
                s.close_reason = rec.terminate_cause or "stop"
                s.stopped_at = t
                s.final = True
                s.external = 0
                changed = True

        lr = self.last_reset
        if lr is not None and s.external < 2 and s.last_time <= lr[0] and not s.final:
            # heard of only after an On/Off that had already ended it
            self._close(s, CLOSED, lr[1], lr[0], 2)
            changed = True
        if changed:
            self._set_deadline(s)
            out.append(self._snapshot(sid, s))

        ls = self.last_sweep
        if ls is None:
            self.last_sweep = wm
        elif wm - ls >= SWEEP_EVERY:
            out.extend(self.sweep(wm))
        return out

    def sweep(self, now_event_time: int) -> list[SessionSnapshot]:
        """Close sessions silent for stale_factor x their interim interval as of
        ``now_event_time`` (event time) and forget closed sessions older than the
        retention. Returns snapshots of the sessions it closed, by session id."""
        now = now_event_time
        if self.last_sweep is None or now > self.last_sweep:
            self.last_sweep = now
        due = [sid for sid, s in self.sessions.items() if s.deadline < now]
        stale: list[str] = []
        expired: list[str] = []
        for sid in due:
            (stale if self.sessions[sid].state == OPEN else expired).append(sid)
        out = []
        pickled = self._pickled
        for sid in sorted(stale):
            s = self.sessions[sid]
            pickled.pop(sid, None)
            self._close(s, STALE, "stale", s.last_time, 1)
            self.stale += 1
            out.append(self._snapshot(sid, s))
        for sid in expired:
            del self.sessions[sid]
            pickled.pop(sid, None)
        self.evicted += len(expired)
        return out

    # Every session is pickled on its own and the bytes are kept until it changes; a
    # snapshot is those pickles end to end. The stream snapshots this state every epoch,
    # and a NAS shard has far more sessions than change in an epoch: pickling all of
    # them every time cost ~2.6 µs per session, half a second per epoch at 200k.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        sessions = state.pop("sessions")
        pickled = state.pop("_pickled")  # only of sessions it holds: evictions drop theirs
        state["session_sizes"], state["session_pickles"] = dump_entries(
            sessions, pickled, _session_values)
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        sessions: dict[str, _Session] = {}
        pickled: dict[str, bytes] = {}
        if "session_pickles" in state:
            for b, sid, row in load_entries(state.pop("session_sizes"),
                                            state.pop("session_pickles")):
                sessions[sid] = _restored_session(row)
                pickled[sid] = b
        else:  # written column by column, before sessions were pickled one by one
            for sid, row in zip(state.pop("session_ids"), zip(*state.pop("session_columns"))):
                sessions[sid] = _restored_session(row)
        self.__dict__.update(state)
        self.sessions = sessions
        self._pickled = pickled

    def snapshot(self, session_id: str) -> SessionSnapshot | None:
        """The current state of one session (None if unknown or forgotten)."""
        s = self.sessions.get(session_id)
        return None if s is None else self._snapshot(session_id, s)

    # -- internal -------------------------------------------------------------------------

    def _new(self, rec: AcctRecord, records: int, recent: list[str]) -> _Session:
        t = rec.event_time
        if rec.status == START:
            started = t
        else:
            st = rec.session_time
            started = t - st if st and 0 < st <= t else t
        s = _Session(rec.username, started, t, records, recent)
        s.interim = rec.interim_interval
        s.framed_ip = rec.framed_ip
        self.sessions[rec.session_id] = s
        return s

    def _close(self, s: _Session, state: str, reason: str, at: int, external: int) -> None:
        s.state = state
        s.close_reason = reason
        s.stopped_at = at
        s.final = False
        s.external = external
        self._set_deadline(s)

    def _set_deadline(self, s: _Session) -> None:
        last = s.last_time
        if s.state == OPEN:
            # stale after stale_factor x (declared interval, else the observed gap
            # between its last two records, else the default), at least 60 s
            iv = s.interim
            if not iv:
                prev = s.prev_time
                iv = (last - prev if prev is not None else 0) or self.default_interim_interval
            if iv < MIN_INTERIM_INTERVAL:
                iv = MIN_INTERIM_INTERVAL
            s.deadline = last + self.stale_factor * iv
        else:
            stopped = s.stopped_at
            s.deadline = (stopped if stopped > last else last) + self.closed_retention

    def _snapshot(self, sid: str, s: _Session) -> SessionSnapshot:
        # updated_at: the latest of its last record and its close (a function of the
        # state, not of the order in which other partitions' records came in)
        stopped = s.stopped_at
        last = s.last_time
        return _new(SessionSnapshot, (
            self.tenant_id, self.nas_id, sid, s.username, s.state, s.close_reason,
            s.started_at, stopped if stopped is not None and stopped > last else last,
            stopped, s.billed_up, s.billed_down, s.resets, s.interim, s.framed_ip,
            3 * s.records + s.external))

    def _nas_event(self, rec: AcctRecord) -> list[SessionSnapshot]:
        rid = record_id(rec)
        if rid in self.nas_recent:
            self.duplicates += 1
            return []
        self.nas_recent.append(rid)
        if len(self.nas_recent) > RECENT_IDS:
            del self.nas_recent[0]
        self.records += 1
        t = rec.event_time
        wm = self.watermark
        if wm is None or t > wm:
            self.watermark = wm = t
        reason = "nas-reboot" if rec.status == ACCOUNTING_ON else "nas-off"
        if self.last_reset is None or t > self.last_reset[0]:
            self.last_reset = (t, reason)
        # open sessions, and sessions a sweep already closed as stale (so the outcome does
        # not depend on whether the sweep or the On/Off came first)
        hit = [sid for sid, s in self.sessions.items()
               if s.external < 2 and not s.final and s.last_time <= t]
        out = []
        for sid in sorted(hit):
            s = self.sessions[sid]
            self._pickled.pop(sid, None)
            self._close(s, CLOSED, reason, t, 2)
            self.nas_closed += 1
            out.append(self._snapshot(sid, s))
        ls = self.last_sweep
        if ls is None:
            self.last_sweep = wm
        elif wm - ls >= SWEEP_EVERY:
            out.extend(self.sweep(wm))
        return out
