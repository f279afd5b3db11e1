"""Rating state per subscriber shard (rating.shards): the same money and actions as one
state per subscriber, and snapshots that restore exactly while re-pickling only the
subscribers that changed."""

from __future__ import annotations

import pickle
import random
import zlib
from datetime import datetime, time, timezone
from decimal import Decimal

from rating.policies import QuotaPolicy, rate_and_enforce
from rating.sessions import SessionDelta
from rating.shards import SubscriberShard, shard_of
from rating.tariff import OffPeakWindow, Plan, SubscriberUsage, Tariff

GB = 10**9
T0 = int(datetime(2026, 10, 30, tzinfo=timezone.utc).timestamp())


def tariff() -> Tariff:
    plan = Plan(tenant_id="acme", plan_id="p", monthly_fee=Decimal("30"), quota_bytes=GB,
                quota_counts="total", overage_per_gb=Decimal("1.5"), throttle_rate=None,
                off_peak=(OffPeakWindow(time(0), time(6), Decimal("0.5")),),
                quota_policies=(QuotaPolicy(80, "notify"), QuotaPolicy(100, "throttle", "1M/1M")))
    return Tariff(plan=plan, timezone="Europe/Berlin", currency="EUR", cycle_anchor_day=1)


def deltas(n: int, seed: int = 7) -> list[SessionDelta]:
    """Deltas of 12 subscribers (and one without a username) over a cycle boundary."""
    rnd = random.Random(seed)
    users = [f"user{i}" for i in range(12)] + [None]
    t = {u: T0 for u in users}
    out = []
    for i in range(n):
        u = rnd.choice(users)
        a, t[u] = t[u], t[u] + rnd.randint(600, 14400)
        out.append(SessionDelta("acme", "bng-1", f"s-{u}", u, f"r{i}", a, t[u],
                                rnd.randint(0, 40_000_000), rnd.randint(0, 90_000_000)))
    return out


def test_shard_of_is_a_stable_crc32_of_the_username():
    assert shard_of("alice", 16) == zlib.crc32(b"alice") % 16
    assert shard_of(None, 16) == shard_of("", 16) == zlib.crc32(b"") % 16


def test_a_shard_rates_exactly_like_one_state_per_subscriber():
    tf = tariff()
    shard = SubscriberShard()
    alone: dict[str | None, SubscriberUsage] = {}
    actions = 0
    for d in deltas(400):
        mine = shard.rate(d, tf)
        theirs = rate_and_enforce(alone.setdefault(d.username or "", SubscriberUsage()), d, tf)
        assert (mine[0], list(mine[1])) == (theirs[0], list(theirs[1]))
        actions += len(mine[1])
    assert actions > 0  # the thresholds fired: quota state went through the shard too
    assert state_of(shard) == {u: pickle.dumps(s.__getstate__()) for u, s in alone.items()}
    assert any(len(s.used) > 1 for s in alone.values())  # the deltas crossed a cycle


def state_of(shard: SubscriberShard) -> dict:
    return {u: pickle.dumps(s.__getstate__()) for u, s in shard.subscribers.items()}


def test_a_snapshot_taken_after_every_delta_restores_exactly_and_rates_on_the_same():
    tf = tariff()
    live = SubscriberShard()
    restored = None
    for d in deltas(150, seed=3):
        live.rate(d, tf)
        restored = pickle.loads(pickle.dumps(live))
        assert state_of(restored) == state_of(live)
        # kept pickles: every subscriber but the one that just rated was pickled before
        assert set(live._pickled) == set(live.subscribers)
    rest = deltas(100, seed=4)
    assert [restored.rate(d, tf) for d in rest] == [live.rate(d, tf) for d in rest]


def test_a_snapshot_re_pickles_only_the_subscribers_that_changed(monkeypatch):
    tf = tariff()
    shard = SubscriberShard()
    for d in deltas(200):
        shard.rate(d, tf)
    pickle.dumps(shard)
    calls = []
    real = SubscriberUsage.__getstate__
    monkeypatch.setattr(SubscriberUsage, "__getstate__",
                        lambda self: calls.append(self) or real(self))
    d = deltas(1, seed=11)[0]
    shard.rate(d, tf)
    pickle.dumps(shard)
    assert calls == [shard.subscribers[d.username or ""]]
