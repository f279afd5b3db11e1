"""One rate parser for the inventory, CoA requests and RADIUS replies."""

from __future__ import annotations

import pytest

from ispstream.rates import parse_rate


@pytest.mark.parametrize("text, up, down", [
    ("2M/2M", 2_000_000, 2_000_000),
    ("512k/1M", 512_000, 1_000_000),
    ("512K/1M", 512_000, 1_000_000),
    ("1.5M/750k", 1_500_000, 750_000),
    ("10M", 10_000_000, 10_000_000),
    ("1G/100M", 10**9, 10**8),
    ("64000/128000", 64_000, 128_000),
    (" 64k/64k ", 64_000, 64_000),
    (" 2M/4M ", 2_000_000, 4_000_000),
])
def test_parses_exact_bits_per_second(text, up, down):
    r = parse_rate(text)
    assert (r.up_bps, r.down_bps) == (up, down)


@pytest.mark.parametrize("bad", ["", "fast", "2X/2M", "2M/", "-1M", "1.5/1M", "2M/2M/2M"])
def test_rejects_what_is_not_a_rate(bad):
    with pytest.raises(ValueError):
        parse_rate(bad)


def test_rate_name_is_name_safe():
    assert parse_rate("2M/2M").name == "2M_2M"
    assert parse_rate("1.5M/1M").name == "1p5M_1M"


@pytest.mark.parametrize("text, why", [
    ("fast", "not upload/download"),
    ("0M/2M", "a direction is zero"),
    ("1.5/1M", "not a whole number of bit/s"),
    ("2M/", "not upload/download"),
])
def test_rejects_with_a_reason(text, why):
    with pytest.raises(ValueError, match=why):
        parse_rate(text)


def test_both_directions_required_where_asked():
    with pytest.raises(ValueError, match="not upload/download"):
        parse_rate("2M", both=True)
    assert parse_rate("2M/1M", both=True).name == "2M_1M"


def test_inventory_and_enforcement_agree():
    """A rate the inventory accepts is one the CoA encoder and the replies can send."""
    from collectors.radius.vendors import parse_rate as coa_parse
    from portal_api.radius_replies import parse_rate as reply_parse

    assert coa_parse is parse_rate and reply_parse is parse_rate
