"""The named value converters of the ONU vendor profiles, one table per converter."""

from __future__ import annotations

import math

import pytest

from collectors.onu.profile import NoReading, ProfileError, make_converter


def convert(spec, raw):
    return make_converter(spec, "test")(raw)


@pytest.mark.parametrize("spec, raw, expected", [
    # UFiber and Huawei ONT RX/TX: hundredths of a dBm
    ({"div": 100}, -1461, -14.61),
    ({"div": 100}, -2481, -24.81),
    ({"div": 100}, 228, 2.28),
    ({"div": 100}, 0, 0.0),
    # Huawei voltage (mV), a ZTE-style 0.001 dBm value
    ({"div": 1000}, 3280, 3.28),
    ({"div": 1000}, -18842, -18.842),
])
def test_div(spec, raw, expected):
    assert convert(spec, raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw, expected", [
    # Huawei OLT RX from the ONT: (raw - 10000) / 100
    (7870, -21.30),
    (10000, 0.0),
    (6000, -40.0),
])
def test_linear(raw, expected):
    assert convert({"linear": {"mul": 0.01, "add": -100}}, raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw, expected", [
    # Calix AXOS / E7: (value / 10000) = mW
    (301, -15.214),          # the README's example: 301 -> -15.2 dBm
    (96, -20.177),
    (537, -12.700),
    (43032, 6.338),
    (10000, 0.0),
    (1, -40.0),
])
def test_mw_e4_to_dbm(raw, expected):
    assert convert("mw_e4_to_dbm", raw) == pytest.approx(expected, abs=0.001)


@pytest.mark.parametrize("raw", [0, -5])
def test_mw_e4_to_dbm_has_no_value_for_no_light(raw):
    with pytest.raises(NoReading):
        convert("mw_e4_to_dbm", raw)


@pytest.mark.parametrize("raw, expected", [
    # V-SOL: the first number is mW (LibreNMS's mistake), the dBm is in parentheses
    (b"0.03 mW (-14.61 dBm)", -14.61),
    (b"0.00 mW (-28.24 dBm)", -28.24),
    (b"2.38 mW (3.77 dBm)", 3.77),
    ("1.50 mW (1.77 dBm)", 1.77),
    (b"0.01 mW (-20.00 DBM)", -20.0),
])
def test_parse_dbm_in_parens(raw, expected):
    assert convert("parse_dbm_in_parens", raw) == expected


@pytest.mark.parametrize("raw", [b"0.03 mW", b"N/A", b"", b"(-- dBm)"])
def test_parse_dbm_in_parens_without_a_dbm_figure(raw):
    with pytest.raises(NoReading):
        convert("parse_dbm_in_parens", raw)


@pytest.mark.parametrize("raw, expected", [
    (b"30.67 C", 30.67), (b"3.27 V", 3.27), (b"11.65 mA", 11.65), (b"27.84 .C", 27.84),
    (b"-5 C", -5.0), (42, 42),
])
def test_parse_number(raw, expected):
    assert convert("parse_number", raw) == expected


def test_parse_number_without_a_number():
    with pytest.raises(NoReading):
        convert("parse_number", b"N/A")


@pytest.mark.parametrize("raw, expected", [
    (bytes.fromhex("48575443a1b23010"), "HWTCA1B23010"),   # 4 ASCII letters + 4 octets
    (b"ZTEGC0FFEE01", "ZTEGC0FFEE01"),                      # already text
    (bytes.fromhex("0102030405060708"), "0102030405060708"),
])
def test_gpon_serial(raw, expected):
    assert convert("gpon_serial", raw) == expected


@pytest.mark.parametrize("raw, expected", [
    (b"GPON 0/1/15", "GPON 0/1/15"), (b"gpon_1/1/3\x00", "gpon_1/1/3"), (b" 316 ", "316"),
])
def test_text(raw, expected):
    assert convert("text", raw) == expected


def test_int_refuses_text():
    assert convert("int", 7) == 7
    with pytest.raises(NoReading):
        convert("int", b"7")


@pytest.mark.parametrize("spec, message", [
    ("dvi", "unknown converter 'dvi'"),
    ({"div": 0}, "div needs a non-zero number"),
    ("div", "div needs an argument"),
    ({"linear": {"mul": 1, "offset": 2}}, "linear needs"),
    ({"div": 10, "text": None}, "a converter is a name"),
])
def test_bad_converter_specs_are_clear_errors(spec, message):
    with pytest.raises(ProfileError, match=message):
        make_converter(spec, "test")


def test_div_keeps_precision_of_huawei_sentinel_free_values():
    assert math.isclose(convert({"div": 100}, -2147), -21.47)
