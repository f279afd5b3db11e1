"""Billing cycles anchored per subscriber, in the tenant's time zone."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Cycle:
    """One billing cycle: ``[start, end)`` as local dates and as UTC instants."""

    start_date: date
    end_date: date
    start: datetime
    end: datetime


def _anchored(year: int, month: int, anchor_day: int) -> date:
    # An anchor of 29-31 falls on the month's last day in shorter months.
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _add_month(year: int, month: int, n: int) -> tuple[int, int]:
    m = year * 12 + (month - 1) + n
    return m // 12, m % 12 + 1


def cycle_at(at: datetime, anchor_day: int, tz: str) -> Cycle:
    """The cycle containing instant ``at`` (aware) for a subscriber anchored on ``anchor_day``.

    A cycle starts at local midnight of the anchor day and ends at local midnight of the
    next month's anchor day; both are converted to UTC with the zone's rules on those
    days (DST-correct).
    """
    if at.tzinfo is None:
        raise ValueError("cycle_at needs an aware datetime")
    if not 1 <= anchor_day <= 31:
        raise ValueError("anchor_day must be 1..31")
    zone = ZoneInfo(tz)
    local = at.astimezone(zone)
    start = _anchored(local.year, local.month, anchor_day)
    if local.date() < start:
        start = _anchored(*_add_month(local.year, local.month, -1), anchor_day)
    end = _anchored(*_add_month(start.year, start.month, 1), anchor_day)
    return Cycle(
        start_date=start,
        end_date=end,
        start=datetime.combine(start, time(0), zone).astimezone(timezone.utc),
        end=datetime.combine(end, time(0), zone).astimezone(timezone.utc),
    )
