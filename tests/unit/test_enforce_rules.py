"""Per-subscriber enforcement decisions (pipelines.enforce_rules), table-driven."""

from __future__ import annotations

import pickle
from datetime import datetime, timezone

import pytest

from ispstream.contracts import AcctEvent, ActionEvent, ActionResult
from pipelines.enforce_rules import (
    ActionRecord,
    Dispatch,
    Enforced,
    NasReset,
    NasSessions,
    SubscriberConfig,
    SubscriberEnforcement,
    cycle_resume_intent,
    until_of,
    with_enforced,
)

T0 = 1_700_000_000
CFG = SubscriberConfig(default_interim_interval=300, stale_factor=2.5)


def acct(status: str, sid: str = "s1", nas: str = "bng-1", t: int = T0, user="alice",
         **kw) -> AcctEvent:
    return AcctEvent(tenant_id="acme", nas_id=nas, nas_ip=kw.pop("nas_ip", "10.0.0.1"),
                     status=status, session_id=sid, username=user, received_at=t,
                     event_timestamp=t, **kw)


def action(kind: str, intent: str, t: int = T0 + 10, **kw) -> ActionEvent:
    kw.setdefault("source", "operator")
    kw.setdefault("reason", f"{kind} test")
    if kind == "throttle":
        kw.setdefault("rate", "2M/2M")
    return ActionEvent(intent_id=intent, tenant_id="acme", username="alice", kind=kind, at=t,
                       **kw)


def result(outcome: str, sid: str = "s1", request: str = "coa", cause=None, nas="bng-1"):
    return ActionResult(intent_id="x", tenant_id="acme", username="alice", nas_id=nas,
                        session_id=sid, request=request, outcome=outcome, error_cause=cause,
                        attempts=1, at=T0)


def run(steps, st: SubscriberEnforcement | None = None):
    """Feed events; return the state and what each step emitted as compact tuples."""
    st = st or SubscriberEnforcement("acme", "alice")
    out = []
    for ev in steps:
        if isinstance(ev, AcctEvent):
            res = st.on_acct(ev)
        elif isinstance(ev, ActionEvent):
            res = st.on_action(ev, None, CFG)
        elif isinstance(ev, ActionResult):
            st.on_result(ev)
            res = []
        elif isinstance(ev, NasReset):
            st.on_nas_reset(ev)
            res = []
        else:  # a time
            res = st.on_time(ev, CFG)
        out.append([_short(x) for x in res])
    return st, out


def _short(x):
    if isinstance(x, Dispatch):
        return ("send", x.op, x.nas_id, x.session_id, x.intent_id, x.rate)
    assert isinstance(x, ActionRecord)
    return ("record", x.action.intent_id, x.dispatched,
            x.enforced.state if x.enforced else None)


TABLE = [
    ("throttle every open session (two NAS)",
     [acct("Start", "s1"), acct("Start", "s2", nas="bng-2", nas_ip="10.0.0.2"),
      action("throttle", "i1")],
     [[], [], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"),
               ("send", "throttle", "bng-2", "s2", "i1", "2M/2M"),
               ("record", "i1", 2, "throttled")]],
     "throttled"),
    ("a duplicated intent does nothing",
     [acct("Start"), action("throttle", "i1"), action("throttle", "i1")],
     [[], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"), ("record", "i1", 1, "throttled")],
      []],
     "throttled"),
    ("no sessions: recorded, state kept for the next Start",
     [action("throttle", "i1"), acct("Start", "s9")],
     [[("record", "i1", 0, "throttled")], [("send", "throttle", "bng-1", "s9", "i1", "2M/2M")]],
     "throttled"),
    ("an interim of a known session re-sends nothing",
     [acct("Start"), action("throttle", "i1"), acct("Interim-Update", t=T0 + 60)],
     [[], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"), ("record", "i1", 1, "throttled")],
      []],
     "throttled"),
    ("an interim without Start opens the session and reconciles it",
     [action("suspend", "i1"), acct("Interim-Update", "s5", t=T0 + 20)],
     [[("record", "i1", 0, "suspended")], [("send", "suspend", "bng-1", "s5", "i1", None)]],
     "suspended"),
    ("a stopped session gets nothing",
     [acct("Start"), acct("Stop", t=T0 + 5), action("throttle", "i1")],
     [[], [], [("record", "i1", 0, "throttled")]],
     "throttled"),
    ("resume restores the rate given by the action",
     [acct("Start"), action("throttle", "i1"), action("resume", "i2", rate="50M/50M")],
     [[], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"), ("record", "i1", 1, "throttled")],
      [("send", "resume", "bng-1", "s1", "i2", "50M/50M"), ("record", "i2", 1, "normal")]],
     "normal"),
    ("resume when normal sends nothing",
     [acct("Start"), action("resume", "i2")],
     [[], [("record", "i2", 0, None)]],
     "normal"),
    ("disconnect kicks sessions but changes no state",
     [acct("Start"), action("disconnect", "i1")],
     [[], [("send", "disconnect", "bng-1", "s1", "i1", None), ("record", "i1", 1, None)]],
     "normal"),
    ("notify is only recorded",
     [acct("Start"), action("notify", "i1", source="quota", threshold_pct=80)],
     [[], [("record", "i1", 0, None)]],
     "normal"),
    ("a throttle does not lift a suspension",
     [acct("Start"), action("suspend", "i1"), action("throttle", "i2")],
     [[], [("send", "suspend", "bng-1", "s1", "i1", None), ("record", "i1", 1, "suspended")],
      [("record", "i2", 0, None)]],
     "suspended"),
    ("503 closes the session; a disconnect ACK too",
     [acct("Start", "s1"), acct("Start", "s2"), result("nak", "s1", cause=503),
      result("ack", "s2", request="disconnect"), action("throttle", "i1")],
     [[], [], [], [], [("record", "i1", 0, "throttled")]],
     "throttled"),
    ("other NAKs and CoA ACKs keep the session",
     [acct("Start", "s1"), result("nak", "s1", cause=404), result("ack", "s1"),
      action("throttle", "i1")],
     [[], [], [], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"),
                   ("record", "i1", 1, "throttled")]],
     "throttled"),
    ("Accounting-On of one NAS drops only its sessions",
     [acct("Start", "s1"), acct("Start", "s2", nas="bng-2"),
      NasReset("acme", "alice", "bng-1", T0 + 3, ("s1",)), action("throttle", "i1")],
     [[], [], [], [("send", "throttle", "bng-2", "s2", "i1", "2M/2M"),
                   ("record", "i1", 1, "throttled")]],
     "throttled"),
    ("sessions silent for 2.5 interim intervals (accounting time) are stale",
     [acct("Start", "old", t=T0, interim_interval=60), acct("Start", "new", t=T0 + 200),
      action("throttle", "i1", t=T0 + 200)],
     [[], [], [("send", "throttle", "bng-1", "new", "i1", "2M/2M"),
               ("record", "i1", 1, "throttled")]],
     "throttled"),
    ("an action long after the last accounting does not make sessions stale",
     [acct("Start", "s1", t=T0, interim_interval=60), action("throttle", "i1", t=T0 + 9999)],
     [[], [("send", "throttle", "bng-1", "s1", "i1", "2M/2M"),
           ("record", "i1", 1, "throttled")]],
     "throttled"),
]


@pytest.mark.parametrize("name, steps, expected, final", TABLE, ids=[t[0] for t in TABLE])
def test_table(name, steps, expected, final):
    st, out = run(steps)
    assert out == expected
    assert st.enforced.state == final


def test_cycle_end_lifts_a_quota_throttle():
    a = action("throttle", "q1", source="quota", cycle_start="2024-03-01",
               cycle_end="2024-04-01")
    until = until_of(a, "Europe/Berlin")
    assert until == datetime(2024, 3, 31, 22, 0, tzinfo=timezone.utc).timestamp()
    st = SubscriberEnforcement("acme", "alice")
    st.on_acct(acct("Start", t=int(until) - 400))
    st.on_action(a, until, CFG)
    st.on_acct(acct("Interim-Update", t=int(until) - 100))
    assert st.due_at() == until
    assert st.on_time(until - 1, CFG) == []
    out = st.on_time(until, CFG)
    sends = [x for x in out if isinstance(x, Dispatch)]
    (rec,) = [x for x in out if isinstance(x, ActionRecord)]
    assert [(d.op, d.prev_state) for d in sends] == [("resume", "throttled")]
    assert rec.action.source == "cycle" and rec.action.kind == "resume"
    assert rec.action.intent_id == cycle_resume_intent("acme", "alice", "q1")
    assert st.enforced.state == "normal" and st.due_at() is None
    assert st.on_time(until + 10, CFG) == []  # lifted once


def test_only_quota_throttles_and_suspends_are_cycle_bound():
    assert until_of(action("throttle", "o", cycle_end="2024-04-01"), "UTC") is None
    assert until_of(action("notify", "n", source="quota", cycle_end="2024-04-01"), "UTC") is None
    assert until_of(action("suspend", "s", source="quota", cycle_end="2024-04-01"), None) == \
        datetime(2024, 4, 1, tzinfo=timezone.utc).timestamp()


def test_snapshot_round_trip_keeps_sessions_state_and_seen_intents():
    st, _ = run([acct("Start"), action("throttle", "i1")])
    snap = pickle.loads(pickle.dumps(st.snapshot()))
    again = SubscriberEnforcement.restore(snap)
    assert again.on_action(action("throttle", "i1"), None, CFG) == []  # still de-duplicated
    assert again.enforced.state == "throttled" and list(again.sessions) == [("bng-1", "s1")]
    # the snapshot is a copy: later changes do not leak into it
    st.on_acct(acct("Start", "s2"))
    assert len(snap[3]) == 1 and snap[5] == T0


def test_stored_state_seeds_a_new_subscriber():
    st = with_enforced(SubscriberEnforcement("acme", "alice"),
                       Enforced("throttled", "1M/1M", "i0", "r", "quota", T0, None))
    out = st.on_acct(acct("Start", "s7"))
    assert [(d.op, d.rate, d.intent_id) for d in out] == [("throttle", "1M/1M", "i0")]
    assert st.on_action(action("throttle", "i0"), None, CFG) == []


def test_seen_intents_are_bounded():
    st = SubscriberEnforcement("acme", "alice")
    for i in range(600):
        st.on_action(action("notify", f"n{i}"), None, CFG)
    assert len(st.seen) == 512 and "n599" in st.seen and "n0" not in st.seen


def test_nas_index_resets_each_subscriber_with_its_sessions():
    idx = NasSessions()
    assert idx.apply(acct("Start", "s1")) == [acct("Start", "s1")]
    idx.apply(acct("Start", "s2", user="bob"))
    idx.apply(acct("Start", "s3"))
    idx.apply(acct("Stop", "s3", t=T0 + 1))
    # a Stop without User-Name still reaches the subscriber who holds the session
    out = idx.apply(acct("Stop", "s2", user=None, t=T0 + 2))
    assert out[0].username == "bob"
    idx.apply(acct("Start", "s4", user="bob"))
    on = AcctEvent(tenant_id="acme", nas_id="bng-1", nas_ip="10.0.0.1", status="Accounting-On",
                   session_id="0", received_at=T0 + 9, event_timestamp=T0 + 9)
    assert idx.apply(on) == [NasReset("acme", "alice", "bng-1", T0 + 9, ("s1",)),
                             NasReset("acme", "bob", "bng-1", T0 + 9, ("s4",))]
    assert idx.sessions == {}
    assert idx.apply(acct("Start", "s5", user=None)) == []  # no User-Name: not enforceable


def test_records_older_than_the_nas_restart_do_not_reopen_sessions():
    """On/Off have their own Kafka key: they can overtake the records they end."""
    idx = NasSessions()
    on = AcctEvent(tenant_id="acme", nas_id="bng-1", nas_ip="10.0.0.1", status="Accounting-On",
                   session_id="0", received_at=T0 + 9, event_timestamp=T0 + 9)
    assert idx.apply(on) == []
    assert idx.apply(acct("Start", "old", t=T0)) == []  # died with the restart
    assert idx.apply(acct("Interim-Update", "old", t=T0 + 5)) == []
    assert idx.apply(acct("Start", "new", t=T0 + 9)) == [acct("Start", "new", t=T0 + 9)]
    assert idx.sessions == {"new": "alice"}
