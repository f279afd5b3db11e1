"""The usage flow's pure batch steps: parsing into per-NAS batches, session shards,
NAS-wide records, event-time ticks, re-keying by rating shard."""

from __future__ import annotations

import json
import zlib

from rating.sessions import AcctRecord, NasState, SessionDelta, SessionSnapshot
from pipelines.usage import (TICK_EVERY, ClockTick, by_rating_shard, parse_batch,
                             route_to_shards, track_sessions)
from ispstream.contracts import DeadLetter


def rec(status: str, session: str, t: int, nas: str = "bng-1") -> AcctRecord:
    return AcctRecord("acme", nas, session, status, "u", t, 1, 2)


def route_one(shards, clock, r):
    return route_to_shards(shards, clock, [r])


def test_a_session_always_goes_to_the_same_shard():
    keys = {route_one(16, None, rec("Interim-Update", "abc", t))[1][0][0]
            for t in range(0, 50)}
    assert len(keys) == 1 and keys.pop().startswith("acme/bng-1/")


def test_sessions_spread_over_shards():
    keys = {route_one(16, None, rec("Start", f"s{i}", 0))[1][0][0] for i in range(500)}
    assert len(keys) == 16
    _, out = route_to_shards(16, None, [rec("Start", f"s{i}", 0) for i in range(500)])
    assert {k for k, _ in out} == keys


def test_accounting_on_and_off_reach_every_shard():
    for status in ("Accounting-On", "Accounting-Off"):
        _, out = route_one(4, (100, 100), rec(status, "0", 100))
        assert sorted(k for k, _ in out) == [f"acme/bng-1/{i}" for i in range(4)]
        assert all(items == [items[0]] and items[0].status == status for _, items in out)


def test_ticks_every_minute_of_event_time_to_every_shard():
    clock = None
    ticks = []
    for t in range(1000, 1000 + 5 * TICK_EVERY + 1, 10):
        clock, out = route_one(3, clock, rec("Interim-Update", "s", t))
        ticks += [(k, x.at) for k, items in out for x in items if isinstance(x, ClockTick)]
    at = sorted({a for _, a in ticks})
    assert at == [1000 + TICK_EVERY * i for i in range(1, 6)]
    assert len(ticks) == 3 * len(at)


def test_late_records_do_not_move_the_clock_back():
    clock, _ = route_one(2, None, rec("Interim-Update", "a", 5000))
    clock, out = route_one(2, clock, rec("Interim-Update", "b", 10))
    assert clock == (5000, 5000)
    assert not any(isinstance(x, ClockTick) for _, items in out for x in items)


def test_a_batch_routes_as_its_records_one_by_one():
    """Per shard, a batch gives the same records and ticks in the same order (a tick
    right after the record that moved the clock) as routing them one at a time."""
    recs = [rec("Interim-Update", f"s{i % 7}", 1000 + 13 * i) for i in range(60)]
    recs[20] = rec("Accounting-On", "", recs[20].event_time)
    recs[30] = rec("Interim-Update", "s1", 900)  # late
    one_by_one: dict[str, list] = {}
    clock = None
    for r in recs:
        clock, out = route_one(4, clock, r)
        for k, items in out:
            one_by_one.setdefault(k, []).extend(items)
    batch_clock, out = route_to_shards(4, None, recs)
    assert batch_clock == clock
    assert dict(out) == one_by_one


class Msg:
    """What parse_batch reads of a librdkafka message."""

    def __init__(self, value, offset: int) -> None:
        self._value, self._offset = value, offset

    def error(self):
        return None

    def value(self):
        return self._value

    def key(self):
        return None

    def topic(self):
        return "radius.acct"

    def partition(self):
        return 0

    def offset(self):
        return self._offset


def event(nas: str, session: str, t: int) -> bytes:
    return json.dumps({"tenant_id": "acme", "nas_id": nas, "nas_ip": "192.0.2.1",
                       "status": "Interim-Update", "session_id": session, "username": "u",
                       "received_at": t, "input_octets": t, "output_octets": 2 * t}).encode()


def test_parse_batch_groups_records_by_nas_in_order_and_dead_letters_the_rest():
    msgs = [Msg(event("a", "s1", 10), 0), Msg(event("b", "s2", 11), 1),
            Msg(b"{not json", 2), Msg(event("a", "s3", 12), 3), Msg(None, 4),
            Msg(event("a", "s1", 13), 5)]
    out = parse_batch(msgs)
    batches = dict(x for x in out if isinstance(x, tuple))
    assert [r.session_id for r in batches["acme/a"]] == ["s1", "s3", "s1"]
    assert [r.event_time for r in batches["acme/a"]] == [10, 12, 13]
    assert [r.session_id for r in batches["acme/b"]] == ["s2"]
    dead = [x for x in out if isinstance(x, DeadLetter)]
    assert [d.offset for d in dead] == [2, 4]
    assert "invalid radius.acct record" in dead[0].reason
    assert "empty message value" in dead[1].reason


def test_track_sessions_splits_a_batch_into_deltas_and_snapshots_in_order():
    state = NasState()
    batch = [AcctRecord("acme", "bng-1", "s", "Start", "u", 100, 0, 0),
             AcctRecord("acme", "bng-1", "s", "Interim-Update", "u", 400, 10, 20),
             AcctRecord("acme", "bng-1", "s", "Interim-Update", "u", 700, 30, 50),
             ClockTick(800)]
    [(deltas, snapshots)] = track_sessions(state, batch)
    assert [(d.upload, d.download) for d in deltas] == [(10, 20), (20, 30)]
    assert all(type(s) is SessionSnapshot for s in snapshots)
    assert [s.version for s in snapshots] == sorted(s.version for s in snapshots)


def delta(user: str | None, t: int) -> SessionDelta:
    return SessionDelta("acme", "bng-1", f"s-{user}", user, f"r{t}", t - 300, t, 1, 2)


def test_by_rating_shard_keeps_each_subscribers_deltas_together_and_in_order():
    users = [f"user{i}" for i in range(40)] + [None]
    outs = [(f"acme/bng-1/{n}", ([delta(users[(n * 7 + i) % 41], 1000 * n + i)
                                  for i in range(30)], ["snap"]))
            for n in range(5)]
    res = by_rating_shard(8, outs)
    snapshot_lists = [(k, v) for k, v in res if v == ["snap"]]
    assert [k for k, _ in snapshot_lists] == [f"acme/bng-1/{n}" for n in range(5)]
    delta_lists = [(k, v) for k, v in res if v != ["snap"]]
    seen: dict[str | None, str] = {}
    for key, ds in delta_lists:
        for d in ds:
            assert key == f"acme/{zlib.crc32((d.username or '').encode()) % 8}"
            assert seen.setdefault(d.username, key) == key
    flat = [d for _, (ds, _) in outs for d in ds]
    for user in users:
        mine = [d for _, ds in delta_lists for d in ds if d.username == user]
        assert mine == [d for d in flat if d.username == user]
