"""The usage flow's pure routing: session shards, NAS-wide records, event-time ticks."""

from __future__ import annotations

from rating.sessions import AcctRecord
from pipelines.usage import TICK_EVERY, ClockTick, route_to_shards


def rec(status: str, session: str, t: int) -> AcctRecord:
    return AcctRecord("acme", "bng-1", session, status, "u", t, 1, 2)


def test_a_session_always_goes_to_the_same_shard():
    keys = {route_to_shards(16, None, rec("Interim-Update", "abc", t))[1][0][0]
            for t in range(0, 50)}
    assert len(keys) == 1 and keys.pop().startswith("acme/bng-1/")


def test_sessions_spread_over_shards():
    keys = {route_to_shards(16, None, rec("Start", f"s{i}", 0))[1][0][0] for i in range(500)}
    assert len(keys) == 16


def test_accounting_on_and_off_reach_every_shard():
    for status in ("Accounting-On", "Accounting-Off"):
        _, out = route_to_shards(4, (100, 100), rec(status, "0", 100))
        assert sorted(k for k, _ in out) == [f"acme/bng-1/{i}" for i in range(4)]
        assert all(r.status == status for _, r in out)


def test_ticks_every_minute_of_event_time_to_every_shard():
    clock = None
    ticks = []
    for t in range(1000, 1000 + 5 * TICK_EVERY + 1, 10):
        clock, out = route_to_shards(3, clock, rec("Interim-Update", "s", t))
        ticks += [(k, x.at) for k, x in out if isinstance(x, ClockTick)]
    at = sorted({a for _, a in ticks})
    assert at == [1000 + TICK_EVERY * i for i in range(1, 6)]
    assert len(ticks) == 3 * len(at)


def test_late_records_do_not_move_the_clock_back():
    clock, _ = route_to_shards(2, None, rec("Interim-Update", "a", 5000))
    clock, out = route_to_shards(2, clock, rec("Interim-Update", "b", 10))
    assert clock == (5000, 5000) and not any(isinstance(x, ClockTick) for _, x in out)
