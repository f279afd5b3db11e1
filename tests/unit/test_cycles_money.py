"""Billing cycles (rating.cycles) and money (rating.money)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from rating.cycles import cycle_at
from rating.money import minor_units, overage_charge, round_money


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# (instant, anchor, zone, cycle start date, cycle end date, start UTC, end UTC)
CYCLES = [
    # anchor 31 falls on the last day of February (non-leap and leap years)
    (utc(2023, 3, 10), 31, "UTC", date(2023, 2, 28), date(2023, 3, 31),
     utc(2023, 2, 28), utc(2023, 3, 31)),
    (utc(2024, 3, 10), 31, "UTC", date(2024, 2, 29), date(2024, 3, 31),
     utc(2024, 2, 29), utc(2024, 3, 31)),
    (utc(2023, 2, 27, 23, 59, 59), 31, "UTC", date(2023, 1, 31), date(2023, 2, 28),
     utc(2023, 1, 31), utc(2023, 2, 28)),
    (utc(2023, 4, 30), 31, "UTC", date(2023, 4, 30), date(2023, 5, 31),
     utc(2023, 4, 30), utc(2023, 5, 31)),
    (utc(2024, 1, 1), 1, "UTC", date(2024, 1, 1), date(2024, 2, 1),
     utc(2024, 1, 1), utc(2024, 2, 1)),
    (utc(2023, 12, 31, 23, 59, 59), 1, "UTC", date(2023, 12, 1), date(2024, 1, 1),
     utc(2023, 12, 1), utc(2024, 1, 1)),
    # Berlin, anchor 31 on the spring-forward day (31 Mar 2024): starts at local midnight
    # still in CET (23:00 UTC), ends on 30 Apr in CEST (22:00 UTC)
    (utc(2024, 3, 30, 23, 30), 31, "Europe/Berlin", date(2024, 3, 31), date(2024, 4, 30),
     utc(2024, 3, 30, 23), utc(2024, 4, 29, 22)),
    (utc(2024, 3, 30, 22, 59, 59), 31, "Europe/Berlin", date(2024, 2, 29), date(2024, 3, 31),
     utc(2024, 2, 28, 23), utc(2024, 3, 30, 23)),
    # anchor 27 on the fall-back day (27 Oct 2024): starts in CEST, ends in CET
    (utc(2024, 10, 26, 22), 27, "Europe/Berlin", date(2024, 10, 27), date(2024, 11, 27),
     utc(2024, 10, 26, 22), utc(2024, 11, 26, 23)),
    (utc(2024, 10, 26, 21, 59, 59), 27, "Europe/Berlin", date(2024, 9, 27), date(2024, 10, 27),
     utc(2024, 9, 26, 22), utc(2024, 10, 26, 22)),
    # a US zone, anchor on its DST day (10 Mar 2024)
    (utc(2024, 3, 20), 10, "America/New_York", date(2024, 3, 10), date(2024, 4, 10),
     utc(2024, 3, 10, 5), utc(2024, 4, 10, 4)),
]


@pytest.mark.parametrize("at, anchor, tz, start_date, end_date, start, end", CYCLES)
def test_cycle_at(at, anchor, tz, start_date, end_date, start, end):
    c = cycle_at(at, anchor, tz)
    assert (c.start_date, c.end_date, c.start, c.end) == (start_date, end_date, start, end)
    assert c.start <= at < c.end


def test_cycle_at_refuses_naive_times_and_bad_anchors():
    with pytest.raises(ValueError):
        cycle_at(datetime(2024, 1, 1), 1, "UTC")
    for anchor in (0, 32):
        with pytest.raises(ValueError):
            cycle_at(utc(2024, 1, 1), anchor, "UTC")


@pytest.mark.parametrize("amount, currency, expected", [
    ("0.005", "EUR", "0.01"),  # half up
    ("0.0049999", "EUR", "0.00"),
    ("2.675", "EUR", "2.68"),
    ("2.665", "EUR", "2.67"),  # not banker's rounding
    ("-0.005", "EUR", "-0.01"),  # half away from zero
    ("5.9949999999999999999", "EUR", "5.99"),
    ("1.5E-9", "EUR", "0.00"),
    ("12.5", "JPY", "13"),
    ("12.49", "JPY", "12"),
    ("1.0005", "KWD", "1.001"),
    ("1.0005", "kwd", "1.001"),
    ("123456789012345678901234567890.125", "USD", "123456789012345678901234567890.13"),
])
def test_round_money_half_up_to_minor_unit(amount, currency, expected):
    got = round_money(Decimal(amount), currency)
    assert got == Decimal(expected)
    assert got.as_tuple().exponent == -minor_units(currency)  # exactly the minor unit


@pytest.mark.parametrize("over, price, expected", [
    (1, "1.50", Decimal("1.5E-9")),
    (10**9, "1.50", Decimal("1.50")),
    (0, "1.50", Decimal(0)),
    (3, "0.333", Decimal("9.99E-10")),
    (2**64 - 1, "0.01", Decimal("184467440.73709551615")),
])
def test_overage_charge_is_exact(over, price, expected):
    got = overage_charge(over, Decimal(price))
    assert got == expected and isinstance(got, Decimal)


def test_overage_charges_sum_exactly():
    price = Decimal("1.37")
    parts = [1, 7, 999_999_999, 2**40 + 3, 123_456_789_012]
    assert sum(overage_charge(p, price) for p in parts) == overage_charge(sum(parts), price)
    # round once per invoice line: rounding each tiny piece would lose the money
    one = overage_charge(1, price)
    assert round_money(one, "EUR") == 0
    assert sum([one] * 10**4) * 1000 == overage_charge(10**7, price)
    assert round_money(overage_charge(10**7, price), "EUR") == Decimal("0.01")
