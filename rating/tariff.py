"""Plans and rating: off-peak split by time, quota per billing cycle, exact overage.

Pure: no I/O, no clock. A ``SessionDelta`` is split by time at the tariff's edges (off-peak
window boundaries in the tenant's zone, the subscriber's cycle start), bytes are shared
between the pieces exactly in proportion to their duration, and each piece is counted,
discounted, checked against the cycle's quota and priced with ``Decimal``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from rating.cycles import cycle_at
from rating.money import overage_charge
from rating.policies import QuotaPolicy, Threshold, thresholds
from rating.sessions import SessionDelta

_new = tuple.__new__  # a named tuple from all its fields, at half the cost (see sessions)

QUOTA_COUNTS = ("download", "upload", "total")
OVER_QUOTA = "over_quota"
UNKNOWN_SUBSCRIBER = "unknown_subscriber"
#: Cycles whose usage a ``SubscriberUsage`` keeps (the newest ones).
KEEP_CYCLES = 3

_ZERO = Decimal(0)
_ONE = Decimal(1)
_DAY = 86400


def _money(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative Decimal")


@dataclass(frozen=True, slots=True)
class OffPeakWindow:
    """A daily window in the tenant's local time whose bytes count ``multiplier`` x.

    ``end <= start`` means the window crosses midnight (``end == time(0)`` is midnight;
    ``end == start`` is the whole day). Multiplier 0 is zero-rated, 0.5 half-counted.
    Local times that do not exist on a DST day are read with the offset before the
    change, ambiguous ones as their first occurrence (``fold=0``).
    """

    start: time
    end: time
    multiplier: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.start, time) or not isinstance(self.end, time):
            raise TypeError("window start and end must be datetime.time")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window times are local times of the tenant, without tzinfo")
        _money("multiplier", self.multiplier)
        if self.multiplier > 1:
            raise ValueError("an off-peak multiplier is at most 1 (a discount)")


@dataclass(frozen=True, slots=True)
class Plan:
    tenant_id: str
    plan_id: str
    monthly_fee: Decimal
    quota_bytes: int | None  # None = unlimited
    quota_counts: str  # download | upload | total
    overage_per_gb: Decimal | None  # price per 10^9 bytes past the quota
    throttle_rate: str | None  # fair-use rate after the quota (enforced elsewhere)
    off_peak: tuple[OffPeakWindow, ...] = ()
    quota_policies: tuple[QuotaPolicy, ...] = ()  # thresholds with an action each
    rate_limit: str | None = None  # the plan's normal rate profile, e.g. "100M/100M"
    #: ``quota_policies`` in bytes of the quota, in the order they are reached (derived)
    thresholds: tuple[Threshold, ...] = field(init=False, repr=False, compare=False,
                                              default=())

    def __post_init__(self) -> None:
        _money("monthly_fee", self.monthly_fee)
        _money("overage_per_gb", self.overage_per_gb, optional=True)
        if self.quota_counts not in QUOTA_COUNTS:
            raise ValueError(f"quota_counts must be one of {QUOTA_COUNTS}")
        if self.quota_bytes is not None and (
                not isinstance(self.quota_bytes, int) or self.quota_bytes < 0):
            raise ValueError("quota_bytes must be a non-negative int or None")
        if not isinstance(self.off_peak, tuple):
            raise TypeError("off_peak must be a tuple of OffPeakWindow")
        if not isinstance(self.quota_policies, tuple) or not all(
                isinstance(p, QuotaPolicy) for p in self.quota_policies):
            raise TypeError("quota_policies must be a tuple of QuotaPolicy")
        if self.quota_policies and self.quota_bytes is None:
            raise ValueError("quota policies need a quota (an unlimited plan has none)")
        if len({p.at_pct for p in self.quota_policies}) != len(self.quota_policies):
            raise ValueError("quota policies must have distinct thresholds (at_pct)")
        object.__setattr__(self, "thresholds", thresholds(self.quota_bytes,
                                                          self.quota_policies))


@dataclass(frozen=True, slots=True)
class Tariff:
    """Everything rating needs about one subscriber (plan None: unknown / no plan)."""

    plan: Plan | None
    timezone: str
    currency: str
    cycle_anchor_day: int


class RatedPiece(NamedTuple):
    """One time slice of a delta, rated: the ``usage_rated`` row and ``usage.rated`` event."""

    tenant_id: str
    username: str
    nas_id: str
    session_id: str
    record_id: str
    piece: int  # 0..n-1 within the record, from the time split only
    ts_start: int
    ts: int  # end of the piece (the row's time)
    plan_id: str | None
    cycle_start: date
    upload_bytes: int
    download_bytes: int
    billable_bytes: int
    zero_rated_bytes: int
    over_quota_bytes: int
    charge: Decimal  # exact, not rounded
    currency: str
    rate_multiplier: Decimal
    flags: tuple[str, ...]


def split_span(ts_start: int, ts_end: int, upload: int, download: int,
               edges: list[int]) -> list[tuple[int, int, int, int]]:
    """Split ``[ts_start, ts_end]`` at the ``edges`` strictly inside it, sharing the bytes
    in proportion to duration with cumulative floors, so the pieces sum exactly.

    Returns ``(start, end, upload, download)`` per piece in time order; a zero-length
    span is one piece at ``ts_end``.
    """
    if ts_start > ts_end:
        raise ValueError("span ends before it starts")
    if upload < 0 or download < 0:
        raise ValueError("bytes must not be negative")
    if ts_start == ts_end:
        return [(ts_end, ts_end, upload, download)]
    if not edges:
        return [(ts_start, ts_end, upload, download)]
    cuts = sorted({e for e in edges if ts_start < e < ts_end})
    if not cuts:
        return [(ts_start, ts_end, upload, download)]
    span = ts_end - ts_start
    out = []
    prev_t = ts_start
    prev_u = prev_d = 0
    for end in cuts + [ts_end]:
        cum = end - ts_start
        u = upload * cum // span
        d = download * cum // span
        out.append((prev_t, end, u - prev_u, d - prev_d))
        prev_t, prev_u, prev_d = end, u, d
    return out


def _ts(d: date, t: time, zone: ZoneInfo) -> int:
    return int(datetime.combine(d, t, zone).timestamp())


@lru_cache(maxsize=4096)
def _windows_on_utc_day(tz: str, windows: tuple[OffPeakWindow, ...],
                        day: int) -> tuple[tuple[int, int, int], ...]:
    """Off-peak windows ``(start, end, index in windows)`` in unix seconds that overlap
    UTC day ``day`` (days since the epoch), computed per local date with the zone's rules.
    (An index, not the multiplier: equal windows may spell their multiplier differently.)
    """
    zone = ZoneInfo(tz)
    lo, hi = day * _DAY, (day + 1) * _DAY
    d = datetime.fromtimestamp(lo, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(hi, zone).date()
    found = set()
    while d <= last:
        nxt = d + timedelta(days=1)
        for i, w in enumerate(windows):
            ws = _ts(d, w.start, zone)
            we = _ts(d if w.end > w.start else nxt, w.end, zone)
            if ws < we and ws < hi and we > lo:
                found.add((ws, we, i))
        d = nxt
    return tuple(sorted(found))


def _windows_between(tz: str, windows: tuple[OffPeakWindow, ...], a: int,
                     b: int) -> list[tuple[int, int, Decimal]]:
    day, last = a // _DAY, b // _DAY
    if day == last:
        found = _windows_on_utc_day(tz, windows, day)
    else:
        acc = set()
        while day <= last:
            acc.update(_windows_on_utc_day(tz, windows, day))
            day += 1
        found = sorted(acc)
    return [(ws, we, windows[i].multiplier) for ws, we, i in found]


class SubscriberUsage:
    """Rating state of one subscriber (the stream keys it by tenant/username).

    Keeps the billable bytes used per billing cycle (the newest ``KEEP_CYCLES`` cycles)
    and the last cycle it looked up; ``quota`` holds the quota policies' state per cycle
    (``rating.policies.CycleQuota``), None until the subscriber first reaches a threshold.
    Picklable (a snapshot without quota state is the same 2-tuple as before policies).
    """

    __slots__ = ("used", "_cycle", "quota")

    def __init__(self) -> None:
        self.used: dict[date, int] = {}
        # (anchor_day, tz, start_ts, end_ts, start_date) of the last cycle looked up
        self._cycle: tuple | None = None
        self.quota: dict | None = None

    def __getstate__(self):
        if self.quota is None:
            return (self.used, self._cycle)
        return (self.used, self._cycle, self.quota)

    def __setstate__(self, state) -> None:
        if len(state) == 2:
            (self.used, self._cycle), self.quota = state, None
        else:
            self.used, self._cycle, self.quota = state

    def cycle_used(self, cycle_start: date) -> int:
        """Billable bytes counted in the cycle that starts on ``cycle_start``."""
        return self.used.get(cycle_start, 0)

    def _cycle_of(self, ts: int, anchor: int, tz: str) -> tuple:
        c = self._cycle
        if c is not None and c[2] <= ts < c[3] and c[0] == anchor and c[1] == tz:
            return c
        cyc = cycle_at(datetime.fromtimestamp(ts, timezone.utc), anchor, tz)
        c = (anchor, tz, int(cyc.start.timestamp()), int(cyc.end.timestamp()), cyc.start_date)
        self._cycle = c
        return c

    def rate(self, delta: SessionDelta, tariff: Tariff) -> list[RatedPiece]:
        """Rate one delta: split by time, count, discount, apply the quota, price."""
        plan = tariff.plan
        tz = tariff.timezone
        anchor = 1 if plan is None else tariff.cycle_anchor_day
        a, b = delta.ts_start, delta.ts_end
        if a > b:
            raise ValueError("delta ends before it starts")

        cycles = [self._cycle_of(a, anchor, tz)]
        edges: list[int] = []
        while cycles[-1][3] < b:
            edges.append(cycles[-1][3])
            cycles.append(self._cycle_of(cycles[-1][3], anchor, tz))
        windows = _windows_between(tz, plan.off_peak, a, b) if plan is not None and \
            plan.off_peak else ()
        for ws, we, _ in windows:
            edges.append(ws)
            edges.append(we)
        pieces = split_span(a, b, delta.upload, delta.download, edges)

        username = delta.username if delta.username is not None else ""
        if plan is None:
            base_flags = delta.flags + (UNKNOWN_SUBSCRIBER,)
            plan_id = quota = price = None
            counts = "total"
        else:
            base_flags = delta.flags
            plan_id, quota, price = plan.plan_id, plan.quota_bytes, plan.overage_per_gb
            counts = plan.quota_counts
        used = self.used
        out = []
        for i, (s, e, up, down) in enumerate(pieces):
            cyc = cycles[0]
            if len(cycles) > 1:
                for c in cycles:
                    if c[2] <= s:
                        cyc = c
            cstart = cyc[4]

            mult = None
            for ws, we, m in windows:
                if ws <= s < we and (mult is None or m < mult):
                    mult = m
            if mult is None:
                mult = _ONE

            if counts == "total":
                counted = up + down
            elif counts == "download":
                counted = down
            else:
                counted = up
            if mult == _ONE:
                billable = counted
            else:
                n, q = mult.as_integer_ratio()
                billable = counted * n // q  # floor: rounding in the subscriber's favour
            zero_rated = counted - billable

            before = used.get(cstart, 0)
            if quota is None:
                over = 0
            else:
                room = quota - before
                over = billable - min(billable, room if room > 0 else 0)
            used[cstart] = before + billable

            charge = overage_charge(over, price) if over and price is not None else _ZERO
            flags = base_flags + (OVER_QUOTA,) if over else base_flags
            out.append(_new(RatedPiece, (delta.tenant_id, username, delta.nas_id,
                                         delta.session_id, delta.record_id, i, s, e, plan_id,
                                         cstart, up, down, billable, zero_rated, over, charge,
                                         tariff.currency, mult, flags)))
        if len(used) > KEEP_CYCLES:
            for old in sorted(used)[:-KEEP_CYCLES]:
                del used[old]
        return out
