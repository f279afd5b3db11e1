"""Quota policies: thresholds fire once per cycle, resumes, stable intent ids
(rating.policies)."""

from __future__ import annotations

import hashlib
import pickle
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pytest

from rating.policies import (
    QuotaAction,
    QuotaPolicy,
    Threshold,
    rate_and_enforce,
    threshold_bytes,
    thresholds,
    with_implicit_throttle,
)
from rating.sessions import SessionDelta
from rating.tariff import OffPeakWindow, Plan, SubscriberUsage, Tariff

GB = 10**9
MB = 10**6
NOTIFY_80 = QuotaPolicy(80, "notify")
THROTTLE_100 = QuotaPolicy(100, "throttle", "2M/2M")
SUSPEND_120 = QuotaPolicy(120, "suspend")


def utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def plan(quota=GB, policies=(NOTIFY_80, THROTTLE_100), plan_id="p1", rate_limit="100M/100M",
         off_peak=()) -> Plan:
    return Plan(tenant_id="acme", plan_id=plan_id, monthly_fee=Decimal("30"),
                quota_bytes=quota, quota_counts="download", overage_per_gb=None,
                throttle_rate=None, off_peak=tuple(off_peak), quota_policies=tuple(policies),
                rate_limit=rate_limit)


def tariff(p: Plan | None, anchor: int = 1) -> Tariff:
    return Tariff(plan=p, timezone="UTC", currency="EUR", cycle_anchor_day=anchor)


def iid(*parts) -> str:
    """The documented intent-id formula, computed independently of rating.policies."""
    key = "|".join(f"{len(str(x))}:{x}" for x in parts)
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def step(a: int, b: int, down: int, p: Plan | None = None, anchor: int = 1, rid: str = ""):
    """One delta of ``down`` download bytes over [a, b] rated against plan ``p``."""
    return (SessionDelta("acme", "bng-1", "s1", "alice", rid or f"r{a}-{b}-{down}", a, b, 0,
                         down, ()), tariff(plan() if p is None else p, anchor))


def brief(a: QuotaAction) -> tuple:
    return (a.kind, a.threshold_pct, a.source, a.cycle_start.isoformat())


def run(steps, usage: SubscriberUsage | None = None) -> list[list[tuple]]:
    usage = usage or SubscriberUsage()
    return [[brief(x) for x in rate_and_enforce(usage, d, t)[1]] for d, t in steps]


MAR, FEB = "2024-03-01", "2024-02-01"
T = utc(2024, 3, 10)
BIG = plan(quota=10 * GB, plan_id="p10", rate_limit="500M/500M")
WITH_SUSPEND = plan(policies=(NOTIFY_80, THROTTLE_100, SUSPEND_120))
NIGHT_FREE = plan(off_peak=[OffPeakWindow(time(0), time(6), Decimal(0))])


@pytest.mark.parametrize("steps, expected", [
    pytest.param([step(T, T + 60, 700 * MB), step(T + 60, T + 120, 150 * MB),
                  step(T + 120, T + 180, 100 * MB), step(T + 180, T + 240, 60 * MB),
                  step(T + 240, T + 300, 500 * MB)],
                 [[], [("notify", 80, "quota", MAR)], [], [("throttle", 100, "quota", MAR)],
                  []],
                 id="80-notify-then-100-throttle-in-separate-pieces"),
    pytest.param([step(T, T + 60, 800 * MB - 1), step(T + 60, T + 120, 1),
                  step(T + 120, T + 180, 200 * MB - 1), step(T + 180, T + 240, 1)],
                 [[], [("notify", 80, "quota", MAR)], [], [("throttle", 100, "quota", MAR)]],
                 id="exactly-at-the-threshold-fires"),
    pytest.param([step(T, T + 60, 1050 * MB), step(T + 60, T + 120, 10 * MB)],
                 [[("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR)], []],
                 id="one-piece-crossing-80-and-100"),
    pytest.param([step(T, T + 60, 3 * GB, WITH_SUSPEND)],
                 [[("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR),
                   ("suspend", 120, "quota", MAR)]],
                 id="three-thresholds-in-one-piece-fire-in-order"),
    pytest.param([step(T, T + 60, 500 * GB, plan(quota=None, policies=()))], [[]],
                 id="unlimited-plan-fires-nothing"),
    pytest.param([step(T, T + 60, 500 * GB, plan(policies=()))], [[]],
                 id="plan-without-policies-fires-nothing"),
    # 00:00-06:00 zero-rated: 5 GB at night count nothing; 850 MB by day reach 80 %
    pytest.param([step(utc(2024, 3, 10, 1), utc(2024, 3, 10, 2), 5 * GB, NIGHT_FREE),
                  step(utc(2024, 3, 10, 12), utc(2024, 3, 10, 13), 790 * MB, NIGHT_FREE),
                  step(utc(2024, 3, 10, 13), utc(2024, 3, 10, 14), 10 * MB, NIGHT_FREE)],
                 [[], [], [("notify", 80, "quota", MAR)]],
                 id="off-peak-zero-rated-bytes-do-not-count"),
    # Feb: 900 MB (notify); then 200 MB over the cycle start: 100 MB in Feb reach 100 %,
    # 100 MB in Mar start a new cycle, which lifts the throttle.
    pytest.param([step(utc(2024, 2, 20), utc(2024, 2, 20, 1), 900 * MB),
                  step(utc(2024, 2, 29, 23), utc(2024, 3, 1, 1), 200 * MB)],
                 [[("notify", 80, "quota", FEB)],
                  [("throttle", 100, "quota", FEB), ("resume", None, "cycle", MAR)]],
                 id="delta-spanning-the-cycle-start"),
    pytest.param([step(utc(2024, 2, 20), utc(2024, 2, 20, 1), 1100 * MB),
                  step(utc(2024, 3, 2), utc(2024, 3, 2, 1), 1 * MB),
                  step(utc(2024, 3, 3), utc(2024, 3, 3, 1), 1 * MB)],
                 [[("notify", 80, "quota", FEB), ("throttle", 100, "quota", FEB)],
                  [("resume", None, "cycle", MAR)], []],
                 id="first-usage-of-a-new-cycle-resumes-once"),
    pytest.param([step(utc(2024, 2, 20), utc(2024, 2, 20, 1), 900 * MB),
                  step(utc(2024, 3, 2), utc(2024, 3, 2, 1), 900 * MB)],
                 [[("notify", 80, "quota", FEB)], [("notify", 80, "quota", MAR)]],
                 id="no-resume-after-a-cycle-with-only-a-notify"),
    pytest.param([step(utc(2024, 2, 20), utc(2024, 2, 20, 1), 1100 * MB),
                  step(utc(2024, 3, 2), utc(2024, 3, 2, 1), 2 * GB)],
                 [[("notify", 80, "quota", FEB), ("throttle", 100, "quota", FEB)],
                  [("resume", None, "cycle", MAR), ("notify", 80, "quota", MAR),
                   ("throttle", 100, "quota", MAR)]],
                 id="new-cycle-resume-then-its-own-crossings"),
    # A late record of February arrives after March usage: February is over.
    pytest.param([step(utc(2024, 2, 20), utc(2024, 2, 20, 1), 700 * MB),
                  step(utc(2024, 3, 2), utc(2024, 3, 2, 1), 1 * MB),
                  step(utc(2024, 2, 28), utc(2024, 2, 28, 1), 500 * MB)],
                 [[], [], []],
                 id="late-piece-of-an-ended-cycle-fires-nothing"),
    pytest.param([step(T, T + 60, 1100 * MB), step(T + 60, T + 120, 10 * MB, BIG),
                  step(T + 120, T + 180, 7 * GB, BIG), step(T + 180, T + 240, 2 * GB, BIG)],
                 [[("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR)],
                  [("resume", None, "quota", MAR)],
                  [("notify", 80, "quota", MAR)], [("throttle", 100, "quota", MAR)]],
                 id="plan-change-to-a-bigger-quota-resumes-and-rearms"),
    pytest.param([step(T, T + 60, 1100 * MB),
                  step(T + 60, T + 120, 10 * MB, plan(quota=None, policies=(), plan_id="u"))],
                 [[("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR)],
                  [("resume", None, "quota", MAR)]],
                 id="plan-change-to-unlimited-resumes"),
    # Still over the new, smaller quota: no resume; the new plan's thresholds apply.
    pytest.param([step(T, T + 60, 1100 * MB),
                  step(T + 60, T + 120, 1 * MB, plan(quota=GB // 2, plan_id="half"))],
                 [[("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR)],
                  [("notify", 80, "quota", MAR), ("throttle", 100, "quota", MAR)]],
                 id="plan-change-still-over-quota-does-not-resume"),
    pytest.param([step(T, T + 60, 500 * MB), step(T + 60, T + 120, 10 * MB, BIG),
                  step(T + 120, T + 180, 7500 * MB, BIG)],
                 [[], [], [("notify", 80, "quota", MAR)]],
                 id="plan-change-before-any-threshold-is-silent"),
    pytest.param([step(T, T + 60, 1),
                  step(T + 60, T + 120, 1, plan(quota=0, policies=(THROTTLE_100,)))],
                 [[], [("throttle", 100, "quota", MAR)]],
                 id="zero-quota-is-reached-by-the-first-billable-byte"),
])
def test_crossings(steps, expected):
    assert run(steps) == expected


def test_action_fields_and_intent_ids():
    u = SubscriberUsage()
    d, t = step(T, T + 60, 1100 * MB)
    pieces, actions = rate_and_enforce(u, d, t)
    assert len(pieces) == 1 and pieces[0].billable_bytes == 1100 * MB
    assert actions == [
        QuotaAction(intent_id=iid("acme", "alice", MAR, 80, "notify"), tenant_id="acme",
                    username="alice", kind="notify", rate=None, source="quota",
                    reason="quota 80% reached (1100000000 of 1000000000 bytes)",
                    threshold_pct=80, cycle_start=date(2024, 3, 1),
                    cycle_end=date(2024, 4, 1), at=T + 60),
        QuotaAction(intent_id=iid("acme", "alice", MAR, 100, "throttle"), tenant_id="acme",
                    username="alice", kind="throttle", rate="2M/2M", source="quota",
                    reason="quota 100% reached (1100000000 of 1000000000 bytes)",
                    threshold_pct=100, cycle_start=date(2024, 3, 1),
                    cycle_end=date(2024, 4, 1), at=T + 60),
    ]
    assert all(len(a.intent_id) == 24 for a in actions)


def test_resume_fields_and_intent_ids():
    u = SubscriberUsage()
    # Anchor 31: the cycle from 31 Jan ends on 29 Feb (leap year), the next ends 31 Mar.
    run([step(utc(2024, 2, 10), utc(2024, 2, 10, 1), 1100 * MB, anchor=31)], u)
    d, t = step(utc(2024, 3, 1), utc(2024, 3, 1, 1), 1, anchor=31)
    (resume,) = rate_and_enforce(u, d, t)[1]
    assert resume == QuotaAction(
        intent_id=iid("acme", "alice", "2024-02-29", "resume"), tenant_id="acme",
        username="alice", kind="resume", rate="100M/100M", source="cycle",
        reason="new billing cycle from 2024-02-29", threshold_pct=None,
        cycle_start=date(2024, 2, 29), cycle_end=date(2024, 3, 31), at=utc(2024, 3, 1, 1))
    assert u.quota[date(2024, 1, 31)].fired == ((80, "notify"), (100, "throttle"))

    # A plan change lifting the throttle: its own id per change (generation 1, 2, ...);
    # thresholds fired again after it carry the generation too.
    u = SubscriberUsage()
    run([step(T, T + 60, 1100 * MB)], u)
    d, t = step(T + 60, T + 120, 1, BIG)
    (resume,) = rate_and_enforce(u, d, t)[1]
    assert (resume.intent_id, resume.kind, resume.source, resume.rate) == (
        iid("acme", "alice", MAR, "resume", 1), "resume", "quota", "500M/500M")
    assert resume.reason.startswith("plan change (p1 (1000000000 bytes) -> p10 "
                                    "(10000000000 bytes); 1100000000 bytes used)")
    d, t = step(T + 120, T + 180, 9 * GB, BIG)
    notify, throttle = rate_and_enforce(u, d, t)[1]
    assert notify.intent_id == iid("acme", "alice", MAR, 80, "notify", 1)
    assert throttle.intent_id == iid("acme", "alice", MAR, 100, "throttle", 1)
    # back to the small plan: over it, so no resume; its thresholds fire as generation 2
    d, t = step(T + 180, T + 240, 1)
    assert [a.intent_id for a in rate_and_enforce(u, d, t)[1]] == [
        iid("acme", "alice", MAR, 80, "notify", 2), iid("acme", "alice", MAR, 100, "throttle", 2)]


def test_replay_from_the_same_state_fires_the_same_intents_and_nothing_new_after():
    u = SubscriberUsage()
    run([step(T, T + 60, 700 * MB)], u)
    snapshot = pickle.dumps(u)
    crossing = step(T + 60, T + 120, 400 * MB)
    first = rate_and_enforce(u, *crossing)[1]
    assert [a.kind for a in first] == ["notify", "throttle"]
    # the same delta rated again on the same state: nothing fires twice
    assert rate_and_enforce(u, *crossing)[1] == []
    # a restart from the snapshot (the stream replays the epoch): the same intents
    restored = pickle.loads(snapshot)
    assert rate_and_enforce(restored, *crossing)[1] == first


def test_state_is_lean_and_pickles():
    u = SubscriberUsage()
    run([step(T, T + 60, 700 * MB)], u)
    assert u.quota is None and len(u.__getstate__()) == 2  # below every threshold
    steps = [step(T + 60 * i, T + 60 * (i + 1), 100 * MB) for i in range(1, 20)]
    steps += [step(utc(2024, m, 5), utc(2024, m, 5, 1), 1100 * MB) for m in (4, 5, 6, 7)]
    whole = SubscriberUsage()
    expected = run([step(T, T + 60, 700 * MB)] + steps, whole)
    got, v = [], SubscriberUsage()
    for s in [step(T, T + 60, 700 * MB)] + steps:
        v = pickle.loads(pickle.dumps(v))
        got.extend(run([s], v))
    assert got == expected
    assert sorted(v.quota) == sorted(v.used) == [date(2024, m, 1) for m in (5, 6, 7)]
    # a snapshot taken before quota policies existed still loads
    old = SubscriberUsage.__new__(SubscriberUsage)
    old.__setstate__(({date(2024, 3, 1): 5}, None))
    assert old.quota is None and old.cycle_used(date(2024, 3, 1)) == 5


def test_catalog_refresh_with_edited_policies_rearms_only_the_new_threshold():
    u = SubscriberUsage()
    assert run([step(T, T + 60, 850 * MB)], u) == [[("notify", 80, "quota", MAR)]]
    # the same plan (id and quota) now also suspends at 90 %: reached, so it fires
    edited = plan(policies=(NOTIFY_80, QuotaPolicy(90, "suspend"), THROTTLE_100))
    assert run([step(T + 60, T + 120, 60 * MB, edited)], u) == [[("suspend", 90, "quota",
                                                                 MAR)]]


@pytest.mark.parametrize("quota, pct, expected", [
    (GB, 80, 800 * MB), (GB, 100, GB), (999, 80, 800), (1, 1, 1), (0, 100, 1),
    (3, 1000, 30), (2**63 - 1, 1000, (2**63 - 1) * 10),
])
def test_threshold_bytes(quota, pct, expected):
    assert threshold_bytes(quota, pct) == expected


def test_thresholds_are_sorted_by_bytes():
    assert thresholds(GB, (SUSPEND_120, NOTIFY_80, THROTTLE_100)) == (
        Threshold(800 * MB, 80, "notify", None), Threshold(GB, 100, "throttle", "2M/2M"),
        Threshold(1200 * MB, 120, "suspend", None))
    assert thresholds(None, ()) == () and thresholds(GB, ()) == ()
    assert plan(policies=(SUSPEND_120, NOTIFY_80)).thresholds[0].at_pct == 80


@pytest.mark.parametrize("policies, throttle, expected", [
    ((NOTIFY_80,), "1M/1M", (NOTIFY_80, QuotaPolicy(100, "throttle", "1M/1M"))),
    ((QuotaPolicy(100, "suspend"),), "1M/1M", (QuotaPolicy(100, "suspend"),)),
    ((SUSPEND_120, NOTIFY_80), None, (NOTIFY_80, SUSPEND_120)),
    ((), "2M/2M", (THROTTLE_100,)),
])
def test_implicit_throttle_at_100(policies, throttle, expected):
    assert with_implicit_throttle(policies, throttle) == expected


@pytest.mark.parametrize("make", [
    lambda: QuotaPolicy(0, "notify"),
    lambda: QuotaPolicy(1001, "notify"),
    lambda: QuotaPolicy(80.0, "notify"),
    lambda: QuotaPolicy(True, "notify"),
    lambda: QuotaPolicy(80, "warn"),
    lambda: QuotaPolicy(100, "throttle"),
    lambda: QuotaPolicy(100, "throttle", ""),
    lambda: QuotaPolicy(100, "suspend", "1M/1M"),
    lambda: plan(quota=None),  # policies without a quota
    lambda: plan(policies=(NOTIFY_80, QuotaPolicy(80, "suspend"))),  # the same threshold
    lambda: Plan("acme", "p", Decimal("39"), GB, "total", None, None, (), [NOTIFY_80]),
    lambda: plan(policies=({"at": 80, "action": "notify"},)),
])
def test_invalid_policies_are_refused(make):
    with pytest.raises((TypeError, ValueError)):
        make()


def test_plan_keeps_positional_callers_and_defaults():
    p = Plan("acme", "p", Decimal("39"), None, "total", None, None)
    assert (p.quota_policies, p.rate_limit, p.thresholds) == ((), None, ())
    assert p == Plan("acme", "p", Decimal("39"), None, "total", None, None)
    assert pickle.loads(pickle.dumps(plan())).thresholds == plan().thresholds


def test_unknown_subscriber_fires_nothing():
    u = SubscriberUsage()
    d, _ = step(T, T + 60, 5 * GB)
    pieces, actions = rate_and_enforce(u, d, tariff(None))
    assert pieces[0].plan_id is None and actions == () and u.quota is None
