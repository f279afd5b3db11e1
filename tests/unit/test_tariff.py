"""Rating: split by time, off-peak windows, cycles, quota, overage (rating.tariff)."""

from __future__ import annotations

import pickle
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rating.money import overage_charge
from rating.sessions import SessionDelta
from rating.tariff import (
    OffPeakWindow,
    Plan,
    RatedPiece,
    SubscriberUsage,
    Tariff,
    split_span,
)

BERLIN = "Europe/Berlin"
GB = 10**9


def utc(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


def local(*args, tz=BERLIN) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp())


def plan(quota=None, counts="total", overage="1.50", off_peak=(), throttle=None) -> Plan:
    return Plan(tenant_id="acme", plan_id="p1", monthly_fee=Decimal("39.00"), quota_bytes=quota,
                quota_counts=counts, overage_per_gb=None if overage is None else Decimal(overage),
                throttle_rate=throttle, off_peak=tuple(off_peak))


def tariff(p: Plan | None, anchor=1, tz=BERLIN, currency="EUR") -> Tariff:
    return Tariff(plan=p, timezone=tz, currency=currency, cycle_anchor_day=anchor)


def delta(a: int, b: int, up: int, down: int, rid="r1", flags=(), username="alice"):
    return SessionDelta("acme", "bng-1", "s1", username, rid, a, b, up, down, flags)


def W(start: str, end: str, mult: str) -> OffPeakWindow:
    return OffPeakWindow(time.fromisoformat(start), time.fromisoformat(end), Decimal(mult))


def spans(pieces: list[RatedPiece]):
    return [(p.piece, p.ts_start, p.ts, p.upload_bytes, p.download_bytes) for p in pieces]


# --- split_span -----------------------------------------------------------------------------

@pytest.mark.parametrize("a, b, up, down, edges, expected", [
    (0, 100, 100, 0, [50], [(0, 50, 50, 0), (50, 100, 50, 0)]),
    # cumulative floors: 10 bytes over thirds -> 3, 3, 4
    (0, 3, 10, 10, [1, 2], [(0, 1, 3, 3), (1, 2, 3, 3), (2, 3, 4, 4)]),
    (0, 3, 2, 1, [2, 1], [(0, 1, 0, 0), (1, 2, 1, 0), (2, 3, 1, 1)]),
    # edges on or outside the span, and repeated ones, do not split
    (10, 20, 7, 9, [0, 10, 20, 30], [(10, 20, 7, 9)]),
    (10, 20, 7, 9, [15, 15], [(10, 15, 3, 4), (15, 20, 4, 5)]),
    (10, 20, 7, 9, [], [(10, 20, 7, 9)]),
    # zero-length span: one piece at its end
    (50, 50, 7, 9, [50], [(50, 50, 7, 9)]),
    (0, 10, 0, 0, [5], [(0, 5, 0, 0), (5, 10, 0, 0)]),
])
def test_split_span(a, b, up, down, edges, expected):
    assert split_span(a, b, up, down, edges) == expected


@pytest.mark.parametrize("up, down, edges", [
    (2**64 - 1, 12345, [1, 7, 299]),
    (1, 0, [100, 200]),
    (999_999_937, 3, list(range(1, 300, 7))),
])
def test_split_span_pieces_sum_exactly_and_follow_duration(up, down, edges):
    pieces = split_span(0, 300, up, down, edges)
    assert sum(p[2] for p in pieces) == up and sum(p[3] for p in pieces) == down
    for s, e, u, _ in pieces:
        assert abs(u - up * (e - s) / 300) < 1 + up * 1e-12  # proportional to duration


def test_split_span_rejects_backwards_span():
    with pytest.raises(ValueError):
        split_span(10, 5, 1, 1, [])


# --- off-peak windows -----------------------------------------------------------------------

def test_delta_spanning_an_off_peak_edge_is_split_by_time():
    p = plan(off_peak=[W("00:00", "06:00", "0")])
    a, b = local(2024, 1, 10, 5, 30), local(2024, 1, 10, 6, 30)
    pieces = SubscriberUsage().rate(delta(a, b, 1000, 3001), tariff(p))
    edge = local(2024, 1, 10, 6, 0)
    assert spans(pieces) == [(0, a, edge, 500, 1500), (1, edge, b, 500, 1501)]
    first, second = pieces
    assert (first.rate_multiplier, first.billable_bytes, first.zero_rated_bytes) == (0, 0, 2000)
    assert (second.rate_multiplier, second.billable_bytes, second.zero_rated_bytes) == \
        (1, 2001, 0)


@pytest.mark.parametrize("a, b, edges, multipliers", [
    # 22:00-06:00 at 0.5: evening edge, morning edge (window of the previous day), and
    # across midnight inside the window (no edge at midnight)
    (local(2024, 1, 10, 21, 0), local(2024, 1, 10, 23, 0), [local(2024, 1, 10, 22, 0)],
     ["1", "0.5"]),
    (local(2024, 1, 11, 5, 0), local(2024, 1, 11, 7, 0), [local(2024, 1, 11, 6, 0)],
     ["0.5", "1"]),
    (local(2024, 1, 10, 23, 0), local(2024, 1, 11, 1, 0), [], ["0.5"]),
    (local(2024, 1, 10, 12, 0), local(2024, 1, 10, 13, 0), [], ["1"]),
    # a whole evening-to-morning span: in, out, in
    (local(2024, 1, 10, 5, 0), local(2024, 1, 10, 23, 0),
     [local(2024, 1, 10, 6, 0), local(2024, 1, 10, 22, 0)], ["0.5", "1", "0.5"]),
])
def test_window_crossing_midnight(a, b, edges, multipliers):
    p = plan(off_peak=[W("22:00", "06:00", "0.5")])
    pieces = SubscriberUsage().rate(delta(a, b, 0, 7200), tariff(p))
    assert [x.ts_start for x in pieces] == [a] + edges
    assert [x.ts for x in pieces] == edges + [b]
    assert [x.rate_multiplier for x in pieces] == [Decimal(m) for m in multipliers]


def test_window_ending_at_midnight():
    p = plan(off_peak=[W("18:00", "00:00", "0")])
    a, b = local(2024, 1, 10, 23, 30), local(2024, 1, 11, 0, 30)
    pieces = SubscriberUsage().rate(delta(a, b, 0, 3600), tariff(p))
    assert [(x.ts, x.rate_multiplier, x.billable_bytes) for x in pieces] == [
        (local(2024, 1, 11, 0, 0), 0, 0), (b, 1, 1800)]


@pytest.mark.parametrize("a, b, edge", [
    # spring forward (31 Mar 2024, 02:00 CET -> 03:00 CEST): 00:00-06:00 local ends at
    # 04:00 UTC (a fixed +01:00 offset would put the edge at 05:00 UTC)
    (utc(2024, 3, 31, 3, 0), utc(2024, 3, 31, 5, 0), utc(2024, 3, 31, 4, 0)),
    # ... and starts at 23:00 UTC the day before
    (utc(2024, 3, 30, 22, 30), utc(2024, 3, 30, 23, 30), utc(2024, 3, 30, 23, 0)),
    # fall back (27 Oct 2024, 03:00 CEST -> 02:00 CET): starts 22:00 UTC, ends 05:00 UTC
    (utc(2024, 10, 26, 21, 30), utc(2024, 10, 26, 22, 30), utc(2024, 10, 26, 22, 0)),
    (utc(2024, 10, 27, 4, 30), utc(2024, 10, 27, 5, 30), utc(2024, 10, 27, 5, 0)),
])
def test_off_peak_edges_on_dst_days_in_berlin(a, b, edge):
    p = plan(off_peak=[W("00:00", "06:00", "0")])
    pieces = SubscriberUsage().rate(delta(a, b, 0, 3600), tariff(p))
    assert [x.ts for x in pieces] == [edge, b]
    inside = [x.rate_multiplier == 0 for x in pieces]
    assert inside == ([False, True] if edge in (utc(2024, 3, 30, 23, 0),
                                                utc(2024, 10, 26, 22, 0)) else [True, False])


def test_off_peak_window_length_on_dst_days():
    """A full day inside 00:00-06:00 zero-rated: 5 hours on spring-forward day, 7 on
    fall-back day, 6 otherwise."""
    p = plan(off_peak=[W("00:00", "06:00", "0")])
    for day, hours in ((date(2024, 3, 31), 5), (date(2024, 10, 27), 7), (date(2024, 6, 1), 6)):
        nxt = day + timedelta(days=1)
        a, b = local(day.year, day.month, day.day), local(nxt.year, nxt.month, nxt.day)
        assert b - a == 86400 + (hours - 6) * 3600  # 23, 25 and 24 hours
        pieces = SubscriberUsage().rate(delta(a, b, 0, b - a), tariff(p))
        zero = sum(x.zero_rated_bytes for x in pieces)
        assert zero == hours * 3600, day


@pytest.mark.parametrize("outer, inner, expected", [
    ("0.5", "0", ["0.5", "0", "0.5"]),
    ("0", "0.5", ["0", "0", "0"]),
])
def test_overlapping_windows_use_the_lowest_multiplier(outer, inner, expected):
    p = plan(off_peak=[W("00:00", "06:00", outer), W("02:00", "04:00", inner)])
    a, b = local(2024, 1, 10, 1, 0), local(2024, 1, 10, 5, 0)
    pieces = SubscriberUsage().rate(delta(a, b, 0, 4 * 3600), tariff(p))
    assert [x.rate_multiplier for x in pieces] == [Decimal(m) for m in expected]


# --- counting, multipliers, quota, money ----------------------------------------------------

@pytest.mark.parametrize("counts, up, down, billable", [
    ("download", 300, 7000, 7000),
    ("upload", 300, 7000, 300),
    ("total", 300, 7000, 7300),
])
def test_quota_counts(counts, up, down, billable):
    (p,) = SubscriberUsage().rate(delta(0, 300, up, down), tariff(plan(counts=counts)))
    assert (p.upload_bytes, p.download_bytes, p.billable_bytes, p.zero_rated_bytes) == \
        (up, down, billable, 0)


@pytest.mark.parametrize("mult, counted, billable, zero_rated", [
    ("0", 1001, 0, 1001),
    ("0.5", 1001, 500, 501),  # floor: in the subscriber's favour
    ("0.5", 1000, 500, 500),
    ("0.25", 7, 1, 6),
    ("1", 1001, 1001, 0),
])
def test_off_peak_multiplier(mult, counted, billable, zero_rated):
    p = plan(off_peak=[W("00:00", "00:00", mult)])  # the whole day
    (x,) = SubscriberUsage().rate(delta(0, 300, 0, counted), tariff(p, tz="UTC"))
    assert (x.billable_bytes, x.zero_rated_bytes, x.rate_multiplier) == \
        (billable, zero_rated, Decimal(mult))


def test_quota_crossing_inside_a_piece():
    u = SubscriberUsage()
    t = tariff(plan(quota=1000, overage="1.50"))
    (a,) = u.rate(delta(0, 300, 0, 900, rid="r1"), t)
    (b,) = u.rate(delta(300, 600, 0, 300, rid="r2"), t)
    (c,) = u.rate(delta(600, 900, 0, 50, rid="r3"), t)
    assert (a.over_quota_bytes, a.charge, a.flags) == (0, 0, ())
    assert (b.over_quota_bytes, b.charge, b.flags) == (200, Decimal("3.0E-7"), ("over_quota",))
    assert (c.over_quota_bytes, c.charge) == (50, Decimal("7.5E-8"))
    assert u.cycle_used(a.cycle_start) == 1250


def test_quota_counts_billable_bytes_only():
    """Zero-rated bytes do not use the quota."""
    p = plan(quota=1000, off_peak=[W("00:00", "06:00", "0")])
    u = SubscriberUsage()
    a, b = local(2024, 1, 10, 5, 0), local(2024, 1, 10, 7, 0)
    pieces = u.rate(delta(a, b, 0, 4000), tariff(p))
    assert [(x.billable_bytes, x.zero_rated_bytes, x.over_quota_bytes) for x in pieces] == \
        [(0, 2000, 0), (2000, 0, 1000)]
    assert u.cycle_used(date(2024, 1, 1)) == 2000


@pytest.mark.parametrize("p, over, charge, flags", [
    (plan(quota=100, overage="1.50"), 400, Decimal("6.00E-7"), ("over_quota",)),
    (plan(quota=100, overage=None, throttle="2M/2M"), 400, 0, ("over_quota",)),  # throttle
    (plan(quota=None), 0, 0, ()),  # unlimited
    (plan(quota=0, overage="0"), 500, 0, ("over_quota",)),
])
def test_after_quota(p, over, charge, flags):
    (x,) = SubscriberUsage().rate(delta(0, 300, 200, 300), tariff(p))
    assert (x.over_quota_bytes, x.charge, x.flags) == (over, charge, flags)
    assert isinstance(x.charge, Decimal)


def test_overage_is_exact_and_sums_exactly():
    u = SubscriberUsage()
    t = tariff(plan(quota=0, overage="1.50"))
    pieces = [p for i in range(1000) for p in u.rate(delta(i, i + 1, 0, 1, rid=f"r{i}"), t)]
    assert pieces[0].charge == Decimal("1.5E-9")
    assert sum(p.charge for p in pieces) == Decimal("0.0000015") == overage_charge(1000,
                                                                                   Decimal("1.50"))


def test_delta_spanning_a_cycle_boundary():
    """Anchor 15 in Berlin: the cycle starts at local midnight (23:00 UTC on the 14th);
    the new cycle starts with a fresh quota."""
    u = SubscriberUsage()
    t = tariff(plan(quota=1000, overage="2"), anchor=15)
    (first,) = u.rate(delta(utc(2024, 3, 14, 20), utc(2024, 3, 14, 21), 0, 5000, rid="r0"), t)
    assert first.cycle_start == date(2024, 2, 15) and first.over_quota_bytes == 4000
    a, b = utc(2024, 3, 14, 22, 30), utc(2024, 3, 14, 23, 30)
    pieces = u.rate(delta(a, b, 0, 2000, rid="r1"), t)
    edge = utc(2024, 3, 14, 23)
    assert spans(pieces) == [(0, a, edge, 0, 1000), (1, edge, b, 0, 1000)]
    assert [(x.cycle_start, x.over_quota_bytes) for x in pieces] == [
        (date(2024, 2, 15), 1000), (date(2024, 3, 15), 0)]
    assert u.cycle_used(date(2024, 2, 15)) == 6000 and u.cycle_used(date(2024, 3, 15)) == 1000


def test_delta_spanning_several_cycles():
    u = SubscriberUsage()
    a, b = utc(2024, 1, 15), utc(2024, 4, 15)
    pieces = u.rate(delta(a, b, 0, b - a), tariff(plan(), anchor=1, tz="UTC"))
    assert [x.cycle_start for x in pieces] == [date(2024, m, 1) for m in (1, 2, 3, 4)]
    assert [x.download_bytes for x in pieces] == [17 * 86400, 29 * 86400, 31 * 86400,
                                                  14 * 86400]


def test_piece_at_the_exact_cycle_start_belongs_to_the_new_cycle():
    edge = utc(2024, 3, 31, 22)  # 1 Apr 00:00 CEST
    u = SubscriberUsage()
    (z,) = u.rate(delta(edge, edge, 1, 1), tariff(plan()))
    (e,) = u.rate(delta(edge - 60, edge, 1, 1, rid="r2"), tariff(plan()))
    assert z.cycle_start == date(2024, 4, 1) and e.cycle_start == date(2024, 3, 1)


def test_piece_numbering_does_not_depend_on_quota_state():
    p = plan(quota=1000, off_peak=[W("00:00", "06:00", "0.5")])
    d = delta(local(2024, 1, 10, 5), local(2024, 1, 10, 7), 100, 5000)
    fresh = SubscriberUsage().rate(d, tariff(p))
    used = SubscriberUsage()
    used.rate(delta(local(2024, 1, 9, 12), local(2024, 1, 9, 13), 0, 10**6, rid="r0"),
              tariff(p))
    later = used.rate(d, tariff(p))
    assert spans(fresh) == spans(later) and len(fresh) == 2
    assert [x.over_quota_bytes for x in fresh] != [x.over_quota_bytes for x in later]


def test_unknown_subscriber():
    u = SubscriberUsage()
    t = tariff(None, anchor=15)
    (x,) = u.rate(delta(utc(2024, 3, 20), utc(2024, 3, 20, 0, 5), 10, 20,
                        flags=("counter_reset",)), t)
    assert (x.plan_id, x.billable_bytes, x.zero_rated_bytes, x.over_quota_bytes, x.charge) == \
        (None, 30, 0, 0, 0)
    assert x.cycle_start == date(2024, 3, 1)  # anchor day 1 without a plan
    assert x.flags == ("counter_reset", "unknown_subscriber")


def test_rated_piece_fields():
    (x,) = SubscriberUsage().rate(delta(100, 400, 3, 4, rid="abc", flags=("counter_reset",)),
                                  tariff(plan(quota=5, overage="2.00"), currency="EUR",
                                         tz="UTC"))
    assert x == RatedPiece(
        tenant_id="acme", username="alice", nas_id="bng-1", session_id="s1", record_id="abc",
        piece=0, ts_start=100, ts=400, plan_id="p1", cycle_start=date(1970, 1, 1),
        upload_bytes=3, download_bytes=4, billable_bytes=7, zero_rated_bytes=0,
        over_quota_bytes=2, charge=Decimal("4.00E-9"), currency="EUR",
        rate_multiplier=Decimal(1), flags=("counter_reset", "over_quota"))


def test_session_without_username_rates_as_empty_username():
    (x,) = SubscriberUsage().rate(delta(0, 1, 1, 1, username=None), tariff(None))
    assert x.username == ""


def test_zero_length_delta_is_one_piece_at_its_end():
    p = plan(off_peak=[W("00:00", "06:00", "0")])
    t = local(2024, 1, 10, 6)  # exactly at the window's end: outside it
    (x,) = SubscriberUsage().rate(delta(t, t, 5, 5), tariff(p))
    assert (x.ts_start, x.ts, x.rate_multiplier, x.billable_bytes) == (t, t, 1, 10)


def test_keeps_only_the_last_three_cycles():
    u = SubscriberUsage()
    for m in range(1, 6):
        u.rate(delta(utc(2024, m, 10), utc(2024, m, 10, 1), 0, m, rid=f"r{m}"),
               tariff(plan(), tz="UTC"))
    assert sorted(u.used) == [date(2024, 3, 1), date(2024, 4, 1), date(2024, 5, 1)]
    assert u.cycle_used(date(2024, 5, 1)) == 5 and u.cycle_used(date(2024, 1, 1)) == 0


def test_state_survives_pickle():
    t = tariff(plan(quota=1000, off_peak=[W("22:00", "06:00", "0.5")]))
    ds = [delta(local(2024, 1, 10, h), local(2024, 1, 10, h + 1), 100, 400, rid=f"r{h}")
          for h in range(0, 23)]
    whole = SubscriberUsage()
    expected = [whole.rate(d, t) for d in ds]
    u = SubscriberUsage()
    got = []
    for d in ds:
        u = pickle.loads(pickle.dumps(u))
        got.append(u.rate(d, t))
    assert got == expected


@pytest.mark.parametrize("make", [
    lambda: plan(counts="both"),
    lambda: Plan("acme", "p", 39.0, None, "total", None, None),  # float money
    lambda: Plan("acme", "p", Decimal("39"), None, "total", 1.5, None),
    lambda: Plan("acme", "p", Decimal("-1"), None, "total", None, None),
    lambda: plan(quota=-1),
    lambda: W("00:00", "06:00", "1.5"),  # a multiplier is a discount
    lambda: W("00:00", "06:00", "-0.5"),
    lambda: OffPeakWindow(time(0), time(6), 0.5),
])
def test_invalid_plans_are_refused(make):
    with pytest.raises((TypeError, ValueError)):
        make()


def test_backwards_delta_is_refused():
    with pytest.raises(ValueError):
        SubscriberUsage().rate(delta(10, 5, 1, 1), tariff(None))
