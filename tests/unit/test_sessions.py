"""Session accounting: counters -> deltas and session states (rating.sessions)."""

from __future__ import annotations

import pickle

import pytest

from rating.sessions import (
    AcctRecord,
    NasState,
    SessionDelta,
    SessionSnapshot,
    event_time,
    record_id,
    total,
)

GW = 2**32


def R(status: str, t: int, up: int | None = None, down: int | None = None, sid: str = "s1",
      **kw) -> AcctRecord:
    kw.setdefault("username", "alice")
    return AcctRecord(tenant_id="acme", nas_id="bng-1", session_id=sid, status=status,
                      event_time=t, upload=up, download=down, **kw)


def ON(t: int) -> AcctRecord:
    return R("Accounting-On", t, sid="", username=None)


def OFF(t: int) -> AcctRecord:
    return R("Accounting-Off", t, sid="", username=None)


def run(records, state: NasState | None = None):
    """Apply records; return (state, deltas, snapshots, per-record outputs)."""
    st = state or NasState()
    deltas, snaps, per = [], [], []
    for rec in records:
        out = st.apply(rec)
        per.append(out)
        deltas += [x for x in out if isinstance(x, SessionDelta)]
        snaps += [x for x in out if isinstance(x, SessionSnapshot)]
    return st, deltas, snaps, per


def last_snap(snaps, sid="s1") -> SessionSnapshot:
    return [s for s in snaps if s.session_id == sid][-1]


# --- totals, event time, record id --------------------------------------------------------

@pytest.mark.parametrize("octets, gigawords, expected", [
    (5, 1, 4294967301),
    (5, None, 5),
    (0, 0, 0),
    (None, 3, None),
    (None, None, None),
    (GW - 1, 0, GW - 1),
    (0, 1, GW),
    (GW - 1, GW - 1, 2**64 - 1),
])
def test_total_with_gigawords(octets, gigawords, expected):
    assert total(octets, gigawords) == expected


@pytest.mark.parametrize("event_timestamp, received_at, delay, expected", [
    (1_700_000_000, 1_700_000_123.9, 7, 1_700_000_000),  # Event-Timestamp wins
    (None, 1_700_000_123.9, 0, 1_700_000_123),  # arrival, floored
    (None, 1_700_000_123.9, 23, 1_700_000_100),  # arrival - Acct-Delay-Time
    (None, 1_700_000_123.0, None, 1_700_000_123),
])
def test_event_time(event_timestamp, received_at, delay, expected):
    assert event_time(event_timestamp, received_at, delay) == expected


def test_retransmit_with_bumped_delay_time_has_same_event_time_and_record_id():
    first = event_time(None, 1_700_000_100.2, 0)
    resent = event_time(None, 1_700_000_103.4, 3)  # 3 s later, Acct-Delay-Time bumped
    assert first == resent == 1_700_000_100
    a = R("Interim-Update", first, 10, 20)
    b = R("Interim-Update", resent, 10, 20)
    assert record_id(a) == record_id(b)
    st, deltas, _, per = run([R("Start", first - 300, 0, 0), a, b])
    assert per[2] == [] and st.duplicates == 1 and len(deltas) == 1


def test_record_id_shape():
    rid = record_id(R("Interim-Update", 100, 1, 2))
    assert len(rid) == 24 and int(rid, 16) >= 0


@pytest.mark.parametrize("change", [
    {"tenant_id": "other"}, {"nas_id": "bng-2"}, {"session_id": "s2"},
    {"status": "Stop"}, {"event_time": 101}, {"upload": 2}, {"download": 3},
    {"upload": None}, {"download": None},
])
def test_record_id_depends_on_every_content_field(change):
    base = dict(tenant_id="acme", nas_id="bng-1", session_id="s1", status="Interim-Update",
                username="alice", event_time=100, upload=1, download=2)
    assert record_id(AcctRecord(**base)) != record_id(AcctRecord(**{**base, **change}))


def test_record_id_ignores_non_content_fields_and_is_unambiguous():
    a = R("Interim-Update", 100, 1, 2)
    b = R("Interim-Update", 100, 1, 2, username="bob", framed_ip="10.0.0.1",
          interim_interval=60, session_time=5)
    assert record_id(a) == record_id(b)
    # identifiers are length-prefixed: moving a separator between fields changes the id
    x = AcctRecord("a|b", "c", "s", "Start", None, 1, None, None)
    y = AcctRecord("a", "b|c", "s", "Start", None, 1, None, None)
    assert record_id(x) != record_id(y)


@pytest.mark.parametrize("cls, values", [
    (SessionDelta, ("t", "n", "s", "u", "rid", 1, 2, 3, 4, ("counter_reset",))),
    (SessionSnapshot, ("t", "n", "s", None, "open", None, 1, 2, None, 3, 4, 0, 300,
                       "10.0.0.1", 7)),
])
def test_records_are_immutable_and_picklable(cls, values):
    x = cls(*values)
    assert [getattr(x, f) for f in cls._fields] == list(values)
    assert pickle.loads(pickle.dumps(x)) == x and type(pickle.loads(pickle.dumps(x))) is cls
    with pytest.raises(AttributeError):
        x.tenant_id = "x"


# --- deltas ---------------------------------------------------------------------------------

# (name, records, expected deltas as (upload, download, ts_start, ts_end, flags),
#  expected final (state, close_reason, upload, download, resets))
SCENARIOS = [
    ("start, interims, stop",
     [R("Start", 0, 0, 0), R("Interim-Update", 300, 100, 1000),
      R("Interim-Update", 600, 250, 3000), R("Stop", 900, 300, 3500)],
     [(100, 1000, 0, 300, ()), (150, 2000, 300, 600, ()), (50, 500, 600, 900, ())],
     ("closed", "stop", 300, 3500, 0)),
    ("gigawords wrap is a 64-bit increase, not a reset",
     [R("Start", 0), R("Interim-Update", 300, 5, GW - 10), R("Interim-Update", 600, 7, GW + 5)],
     [(5, GW - 10, 0, 300, ()), (2, 15, 300, 600, ())],
     ("open", None, 7, GW + 5, 0)),
    ("exact duplicate adds nothing",
     [R("Start", 0), R("Interim-Update", 300, 100, 1000), R("Interim-Update", 300, 100, 1000)],
     [(100, 1000, 0, 300, ())],
     ("open", None, 100, 1000, 0)),
    ("reordered interims: the earlier one adds 0",
     [R("Start", 0), R("Interim-Update", 600, 200, 2000), R("Interim-Update", 300, 100, 1000)],
     [(200, 2000, 0, 600, ())],
     ("open", None, 200, 2000, 0)),
    ("a late record above the highest adds the excess and never lowers it",
     [R("Start", 0), R("Interim-Update", 600, 200, 2000), R("Interim-Update", 300, 250, 1000),
      R("Interim-Update", 900, 300, 2500)],
     [(200, 2000, 0, 600, ()), (50, 0, 300, 300, ()), (50, 500, 600, 900, ())],
     ("open", None, 300, 2500, 0)),
    ("a record with equal totals adds nothing",
     [R("Start", 0), R("Interim-Update", 300, 100, 100), R("Interim-Update", 600, 100, 100)],
     [(100, 100, 0, 300, ())],
     ("open", None, 100, 100, 0)),
    ("counter reset: the new total is billed, flagged",
     [R("Start", 0), R("Interim-Update", 300, 1000, 5000), R("Interim-Update", 600, 100, 200),
      R("Interim-Update", 900, 150, 400)],
     [(1000, 5000, 0, 300, ()), (100, 200, 300, 600, ("counter_reset",)),
      (50, 200, 600, 900, ())],
     ("open", None, 1150, 5400, 1)),
    ("a reset in one direction only",
     [R("Interim-Update", 300, 1000, 5000), R("Interim-Update", 600, 100, 6000)],
     [(1000, 5000, 300, 300, ()), (100, 1000, 300, 600, ("counter_reset",))],
     ("open", None, 1100, 6000, 1)),
    ("a reset to zero bills nothing but is counted",
     [R("Interim-Update", 300, 1000, 1000), R("Interim-Update", 600, 0, 0),
      R("Interim-Update", 900, 10, 20)],
     [(1000, 1000, 300, 300, ()), (10, 20, 600, 900, ())],
     ("open", None, 1010, 1020, 1)),
    ("a late record from before a reset is compared with the counter it belongs to",
     [R("Interim-Update", 300, 1000, 1000), R("Interim-Update", 900, 100, 100),
      R("Interim-Update", 600, 1200, 1000), R("Interim-Update", 600, 1100, 900),
      R("Interim-Update", 1200, 150, 150)],
     [(1000, 1000, 300, 300, ()), (100, 100, 300, 900, ("counter_reset",)),
      (200, 0, 600, 600, ()), (50, 50, 900, 1200, ())],
     ("open", None, 1350, 1150, 1)),
    ("interim without Start opens the session at event time - session time",
     [R("Interim-Update", 1000, 100, 200, session_time=400)],
     [(100, 200, 600, 1000, ())],
     ("open", None, 100, 200, 0)),
    ("interim without Start or session time starts at its event time",
     [R("Interim-Update", 1000, 100, 200), R("Interim-Update", 1300, 150, 300)],
     [(100, 200, 1000, 1000, ()), (50, 100, 1000, 1300, ())],
     ("open", None, 150, 300, 0)),
    ("Stop without counters zeroes nothing",
     [R("Start", 0), R("Interim-Update", 300, 100, 100), R("Stop", 600)],
     [(100, 100, 0, 300, ())],
     ("closed", "stop", 100, 100, 0)),
    ("Stop carries the terminate cause",
     [R("Start", 0), R("Stop", 600, 10, 20, terminate_cause="User-Request")],
     [(10, 20, 0, 600, ())],
     ("closed", "User-Request", 10, 20, 0)),
    ("Stop without Start opens and closes",
     [R("Stop", 1000, 100, 100, session_time=1000)],
     [(100, 100, 0, 1000, ())],
     ("closed", "stop", 100, 100, 0)),
    ("late record for a stopped session bills the positive part and stays closed",
     [R("Start", 0), R("Interim-Update", 300, 100, 100), R("Stop", 600),
      R("Interim-Update", 450, 150, 150), R("Interim-Update", 400, 120, 120)],
     [(100, 100, 0, 300, ()), (50, 50, 450, 450, ())],
     ("closed", "stop", 150, 150, 0)),
    ("a retransmit right after the Stop (jittered event time) bills nothing, no reset",
     [R("Start", 0), R("Interim-Update", 300, 100, 100), R("Stop", 600, 200, 200),
      R("Interim-Update", 601, 150, 150)],
     [(100, 100, 0, 300, ()), (100, 100, 300, 600, ())],
     ("closed", "stop", 200, 200, 0)),
    ("duplicate and late Starts are no-ops",
     [R("Start", 0), R("Start", 0), R("Interim-Update", 300, 10, 10), R("Start", 400, 0, 0)],
     [(10, 10, 0, 300, ())],
     ("open", None, 10, 10, 0)),
    ("Start after the Stop reuses the id: a fresh session",
     [R("Start", 0), R("Interim-Update", 300, 100, 100), R("Stop", 600, 200, 200),
      R("Start", 1000, 0, 0), R("Interim-Update", 1300, 50, 60)],
     [(100, 100, 0, 300, ()), (100, 100, 300, 600, ()), (50, 60, 1000, 1300, ())],
     ("open", None, 50, 60, 0)),
    ("an Interim well after the Stop is a reused id whose Start was lost",
     [R("Start", 0), R("Stop", 600, 200, 200), R("Interim-Update", 1300, 50, 60,
                                                   session_time=300)],
     [(200, 200, 0, 600, ()), (50, 60, 1000, 1300, ())],
     ("open", None, 50, 60, 0)),
]


@pytest.mark.parametrize("name, records, expected_deltas, expected_final", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_session_scenarios(name, records, expected_deltas, expected_final):
    _, deltas, snaps, _ = run(records)
    assert [(d.upload, d.download, d.ts_start, d.ts_end, d.flags) for d in deltas] == \
        expected_deltas
    for d in deltas:
        assert d.upload >= 0 and d.download >= 0 and (d.upload or d.download)
    s = last_snap(snaps)
    assert (s.state, s.close_reason, s.upload, s.download, s.resets) == expected_final
    # the snapshot's billed totals are the sum of the deltas (of this use of the id)
    mine = [d for d in deltas if d.ts_end >= s.started_at]
    assert (s.upload, s.download) == (sum(d.upload for d in mine), sum(d.download for d in mine))


@pytest.mark.parametrize("records", [s[1] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_every_snapshot_has_a_higher_version(records):
    _, _, snaps, per = run(records)
    versions = [s.version for s in snaps]
    assert versions == sorted(set(versions)) and versions[0] > 0
    for out in per:  # at most one delta and one snapshot per session record
        assert sum(isinstance(x, SessionDelta) for x in out) <= 1
        assert sum(isinstance(x, SessionSnapshot) for x in out) <= 1


def test_duplicate_emits_nothing_and_is_counted():
    st, _, _, per = run([R("Start", 0), R("Interim-Update", 300, 1, 2),
                         R("Interim-Update", 300, 1, 2), R("Start", 0)])
    assert per[2] == [] and per[3] == []
    assert st.duplicates == 2


def test_late_record_counts_as_late_and_emits_nothing_when_nothing_changed():
    st, _, _, per = run([R("Start", 0), R("Interim-Update", 600, 200, 200),
                         R("Interim-Update", 300, 100, 100)])
    assert per[2] == [] and st.late == 1 and st.duplicates == 0


def test_snapshot_fields_of_a_session():
    _, _, snaps, _ = run([
        R("Interim-Update", 1000, 5, 6, session_time=100, interim_interval=60,
          framed_ip="100.64.0.7"),
        R("Interim-Update", 1060, 7, 9),
        R("Stop", 1100, 8, 10, terminate_cause="Idle-Timeout"),
    ])
    s = snaps[-1]
    assert s == SessionSnapshot(
        tenant_id="acme", nas_id="bng-1", session_id="s1", username="alice", state="closed",
        close_reason="Idle-Timeout", started_at=900, updated_at=1100, stopped_at=1100,
        upload=8, download=10, resets=0, interim_interval=60, framed_ip="100.64.0.7",
        version=s.version)
    assert [x.updated_at for x in snaps] == [1000, 1060, 1100]


def test_late_start_tells_the_true_start_time():
    _, _, snaps, per = run([R("Interim-Update", 1000, 5, 6), R("Start", 700)])
    assert snaps[-1].started_at == 700 and len(per[1]) == 1


def test_username_learned_from_a_later_record():
    _, deltas, snaps, _ = run([R("Start", 0, username=None),
                               R("Interim-Update", 300, 1, 1, username="alice")])
    assert deltas[0].username == "alice" and snaps[-1].username == "alice"


def test_reuse_keeps_version_growing():
    _, _, snaps, _ = run([R("Start", 0), R("Stop", 600, 200, 200), R("Start", 1000)])
    assert [s.state for s in snaps] == ["open", "closed", "open"]
    assert snaps[-1].started_at == 1000 and snaps[-1].upload == 0
    assert snaps[2].version > snaps[1].version > snaps[0].version


# --- Accounting-On / Accounting-Off --------------------------------------------------------

@pytest.mark.parametrize("nas_record, reason", [(ON, "nas-reboot"), (OFF, "nas-off")])
def test_on_off_close_every_open_session_heard_of_before(nas_record, reason):
    st = NasState()
    run([R("Start", 0, sid="b"), R("Interim-Update", 300, 1, 1, sid="b"),
         R("Start", 100, sid="a"), R("Start", 900, sid="c"),
         R("Start", 200, sid="d"), R("Stop", 400, sid="d")], st)
    out = st.apply(nas_record(600))
    assert all(isinstance(x, SessionSnapshot) for x in out)
    assert [(x.session_id, x.state, x.close_reason, x.stopped_at) for x in out] == [
        ("a", "closed", reason, 600), ("b", "closed", reason, 600)]
    assert st.snapshot("c").state == "open"  # heard of after the On/Off
    assert st.snapshot("d").close_reason == "stop"  # already stopped: untouched
    assert st.apply(nas_record(600)) == [] and st.duplicates == 1


def test_record_after_on_reopens_late_record_before_it_does_not():
    st, deltas, snaps, _ = run([
        R("Start", 0), R("Interim-Update", 300, 100, 100), ON(1000),
        R("Interim-Update", 600, 150, 150),  # before the reboot: billed, stays closed
    ])
    assert (snaps[-1].state, snaps[-1].close_reason, snaps[-1].upload) == \
        ("closed", "nas-reboot", 150)
    out = st.apply(R("Interim-Update", 1300, 200, 200))  # after it: the NAS says alive
    (d,) = [x for x in out if isinstance(x, SessionDelta)]
    (s,) = [x for x in out if isinstance(x, SessionSnapshot)]
    assert (d.upload, d.ts_start, d.ts_end) == (50, 600, 1300)
    assert (s.state, s.close_reason, s.stopped_at) == ("open", None, None)
    assert st.reopened == 1


def test_late_stop_after_on_records_the_stop():
    _, _, snaps, _ = run([R("Start", 0), ON(1000), R("Stop", 800, 5, 5,
                                                      terminate_cause="Lost-Carrier")])
    s = snaps[-1]
    assert (s.state, s.close_reason, s.stopped_at, s.upload) == ("closed", "Lost-Carrier", 800, 5)


@pytest.mark.parametrize("before", [
    [],  # first heard of after the On
    [R("Start", 0)],  # known, and closed by the On
])
def test_on_and_session_records_in_either_order_give_the_same_row(before):
    # a session's records and the On travel on different partitions: either may be first
    a = run(before + [ON(1000), R("Interim-Update", 500, 10, 10)])[2][-1]
    b = run(before + [R("Interim-Update", 500, 10, 10), ON(1000)])[2][-1]
    assert a == b
    assert (a.state, a.close_reason, a.stopped_at, a.upload) == ("closed", "nas-reboot", 1000, 10)


# --- stale sessions, sweeps and eviction ----------------------------------------------------

# (name, records of s1, sweep time that leaves it open, sweep time that closes it)
STALE = [
    ("default interval 300 x 2.5", [R("Start", 0)], 750, 751),
    ("declared Acct-Interim-Interval 60",
     [R("Start", 0, interim_interval=60), R("Interim-Update", 60, 1, 1)], 210, 211),
    ("observed gap of 200 s", [R("Start", 0), R("Interim-Update", 200, 1, 1)], 700, 701),
    ("a gap below 60 s counts as 60", [R("Start", 0), R("Interim-Update", 5, 1, 1)], 155, 156),
    ("declared interval wins over the observed gap",
     [R("Start", 0), R("Interim-Update", 200, 1, 1, interim_interval=600)], 1700, 1701),
]


@pytest.mark.parametrize("name, records, still_open, stale_at", STALE, ids=[s[0] for s in STALE])
def test_stale_after_factor_times_interval(name, records, still_open, stale_at):
    st, _, snaps, _ = run(records)
    assert st.sweep(still_open) == []
    (s,) = st.sweep(stale_at)
    assert (s.session_id, s.state, s.close_reason, s.stopped_at) == \
        ("s1", "stale", "stale", records[-1].event_time)
    assert s.version > snaps[-1].version
    assert st.sweep(stale_at + 1000) == []  # closed once


def test_stale_factor_is_configurable():
    st, _, _, _ = run([R("Start", 0)], NasState(default_interim_interval=100, stale_factor=4))
    assert st.sweep(400) == [] and len(st.sweep(401)) == 1


def test_apply_sweeps_on_watermark_at_most_once_a_minute():
    class Counting(NasState):
        sweeps = 0

        def sweep(self, now_event_time):
            Counting.sweeps += 1
            return super().sweep(now_event_time)

    st = Counting()
    st.apply(R("Start", 0, sid="quiet"))
    outs = []
    for t in range(0, 1200, 5):  # another session keeps the NAS watermark moving
        outs.append((t, st.apply(R("Interim-Update", t, t, t, sid="busy",
                                   interim_interval=5))))
    assert Counting.sweeps <= 1200 // 60
    closed = [(t, x) for t, out in outs for x in out
              if isinstance(x, SessionSnapshot) and x.session_id == "quiet"]
    ((t, snap),) = closed
    assert snap.state == "stale" and 750 < t <= 750 + 60 + 5


def test_stale_session_reopened_by_a_later_record():
    st, _, _, _ = run([R("Start", 0), R("Interim-Update", 300, 100, 100)])
    st.sweep(5000)
    out = st.apply(R("Interim-Update", 5100, 160, 170))
    d, s = out
    assert (d.upload, d.download, d.ts_start, d.ts_end) == (60, 70, 300, 5100)
    assert (s.state, s.close_reason, s.upload) == ("open", None, 160)


def test_on_after_stale_relabels_it_like_on_before_stale():
    a_state, _, a_snaps, _ = run([R("Start", 0), R("Interim-Update", 300, 1, 1)])
    a_state.sweep(5000)
    a = a_state.apply(ON(6000))[-1]
    b_state, _, _, _ = run([R("Start", 0), R("Interim-Update", 300, 1, 1), ON(6000)])
    assert b_state.sweep(7000) == []
    b = b_state.snapshot("s1")
    assert a == b and (a.state, a.close_reason, a.stopped_at) == ("closed", "nas-reboot", 6000)


def test_final_snapshot_does_not_depend_on_a_stale_sweep_in_between():
    """A partition running ahead moves the watermark and may close a session as stale
    before its next record arrives: its final row must be the same as without that."""
    records = [R("Start", 0), R("Interim-Update", 300, 100, 100),
               R("Interim-Update", 2000, 300, 300), R("Stop", 2300, 400, 400)]
    plain = run(records)
    swept = NasState()
    run(records[:2], swept)
    assert len(swept.sweep(1900)) == 1
    _, _, snaps, _ = run(records[2:], swept)
    assert snaps[-1] == plain[2][-1]
    assert [d for d in run(records[2:], pickle.loads(pickle.dumps(swept)))[1]] == []  # replay


def test_closed_sessions_are_kept_for_the_retention_then_forgotten():
    st = NasState(closed_retention=1000)
    run([R("Start", 0), R("Interim-Update", 300, 100, 100), R("Stop", 600, 200, 200)], st)
    st.sweep(1600)
    assert st.snapshot("s1") is not None
    # kept: a late record (a retransmit the NAS re-stamped) bills 0, not the total again
    assert [x for x in st.apply(R("Interim-Update", 450, 150, 150))
            if isinstance(x, SessionDelta)] == []
    assert st.sweep(1601) == [] and st.snapshot("s1") is None and st.evicted == 1


def test_stale_sessions_are_forgotten_too():
    st = NasState(closed_retention=1000)
    run([R("Start", 0)], st)
    st.sweep(751)
    st.sweep(1751)
    assert st.snapshot("s1") is None


# --- determinism and state handling --------------------------------------------------------

MIXED = [R("Start", 0, sid="b"), R("Interim-Update", 300, 100, GW + 1, sid="b"),
         R("Start", 10, sid="a"), R("Interim-Update", 310, 5, 6, sid="a"),
         R("Interim-Update", 600, 1, 2, sid="a"), ON(700), R("Interim-Update", 650, 9, 9, sid="a"),
         R("Interim-Update", 900, 3, 4, sid="a"), R("Interim-Update", 300, 100, GW + 1, sid="b"),
         R("Interim-Update", 3000, 1, 1, sid="c"), R("Stop", 3100, 2, 2, sid="c")]


def test_same_records_same_outputs_with_or_without_pickling_in_between():
    whole = run(MIXED)[3]
    for cut in range(len(MIXED)):
        st = NasState()
        first = [st.apply(r) for r in MIXED[:cut]]
        st = pickle.loads(pickle.dumps(st))
        rest = [st.apply(r) for r in MIXED[cut:]]
        assert first + rest == whole


def _contents(st: NasState) -> tuple:
    """Everything a NasState holds, without its cache of pickled sessions."""
    from rating.sessions import _session_values
    fields = {k: v for k, v in vars(st).items() if k not in ("sessions", "_pickled")}
    return fields, {sid: _session_values(s) for sid, s in st.sessions.items()}


def test_a_live_state_snapshotted_after_every_step_restores_exactly():
    """The state keeps each session's pickle until the session changes: every way a
    session changes (records, resets, late records, reuse, On/Off, stale and expired
    sweeps) must drop it, so each snapshot restores what the live state holds."""
    steps = MIXED + [R("Interim-Update", 3200, 0, 0, sid="b"),  # counter reset
                     R("Start", 3300, sid="c"),  # id reused after its Stop
                     OFF(3400), R("Interim-Update", 3500, 5, 5, sid="a"),  # reopened
                     R("Start", 3600, sid="d"), 5000, R("Interim-Update", 5100, 1, 1,
                                                         sid="d"), 9000, 20000]
    live = NasState(closed_retention=3000)
    for step in steps:
        out = live.sweep(step) if isinstance(step, int) else live.apply(step)
        restored = pickle.loads(pickle.dumps(live))
        assert _contents(restored) == _contents(live), (step, out)
        assert live._pickled.keys() == live.sessions.keys()  # nothing kept for the gone
        # and the restored copy goes on exactly like the live one
        again = pickle.loads(pickle.dumps(restored))
        assert _contents(again) == _contents(live)
    assert live.stale and live.evicted and live.resets and live.reused and live.nas_closed


def test_state_written_column_by_column_still_restores():
    """Snapshots of the earlier format (one list per session field) resume."""
    from operator import attrgetter

    from rating.sessions import _Session
    st = run(MIXED)[0]
    old = {k: v for k, v in vars(st).items() if k not in ("sessions", "_pickled")}
    old["session_ids"] = list(st.sessions)
    old["session_columns"] = [list(map(attrgetter(k), st.sessions.values()))
                              for k in _Session.__slots__]
    restored = NasState.__new__(NasState)
    restored.__setstate__(pickle.loads(pickle.dumps(old)))  # nothing shared with ``st``
    assert _contents(restored) == _contents(st)
    assert restored.apply(R("Interim-Update", 4000, 7, 7, sid="a")) == \
        st.apply(R("Interim-Update", 4000, 7, 7, sid="a"))


def test_state_of_another_nas_is_refused():
    st = NasState()
    st.apply(R("Start", 0))
    with pytest.raises(ValueError):
        st.apply(AcctRecord("acme", "bng-2", "s1", "Start", None, 1, None, None))


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        NasState().apply(R("Keepalive", 0))
