"""ONU vendor profiles: loading and validation, and decoding recorded (or, where no
recording exists, MIB-derived) table rows into ``OnuReading``s.

The recordings are read straight from ``tests/data/snmprec/olts`` (the same files snmpsim
serves in the integration test), so each expected value below can be checked against a
line of a real device's walk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collectors.onu.profile import (
    DecodeStats, ProfileError, decode, load_profile, load_profiles, parse_profile,
    profile_names,
)
from collectors.snmp.ber import parse_oid

DATA = Path(__file__).resolve().parent.parent / "data" / "snmprec" / "olts"
PROFILES = load_profiles()


def parse_snmprec(lines) -> dict:
    """``OID|type|value`` lines -> {oid tuple: value as the SNMP client decodes it}."""
    records = {}
    for line in lines:
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        oid, typ, value = line.split("|", 2)
        if typ in ("2", "65", "66", "67", "70"):
            v = int(value)
        elif typ == "4x":
            v = bytes.fromhex(value)
        elif typ == "6":
            v = value.lstrip(".")
        else:
            v = value.encode("latin-1")
        records[parse_oid(oid)] = v
    return records


def walks_for(profile, records: dict) -> dict:
    """What walking the profile's columns would return from these records."""
    out = {}
    for col in profile.columns():
        n = len(col)
        out[col] = sorted((oid[n:], v) for oid, v in records.items() if oid[:n] == col)
    return out


def decode_lines(name: str, lines, stats: DecodeStats | None = None):
    profile = PROFILES[name]
    return decode(profile, walks_for(profile, parse_snmprec(lines)), stats)


def decode_file(name: str, filename: str, stats: DecodeStats | None = None):
    with open(DATA / filename, encoding="latin-1") as f:
        return decode_lines(name, f, stats)


def by_id(readings, pon=None):
    return {(r.onu_id if pon is None else (r.pon, r.onu_id)): r for r in readings}


# -- the shipped profiles ----------------------------------------------------------------

def test_shipped_profiles_are_the_documented_names():
    assert profile_names() == ["calix-axos", "huawei-ma5800", "ubiquiti-ufiber",
                               "vsol-v1600", "zte-c300"]
    assert sorted(PROFILES) == profile_names()


# -- Ubiquiti UFiber (recorded) ----------------------------------------------------------

def test_ufiber_recording():
    stats = DecodeStats()
    onus = decode_file("ubiquiti-ufiber", "edgeosolt.snmprec", stats)
    assert len(onus) == 29
    assert sum(o.online is True for o in onus) == 16
    assert sum(o.online is False for o in onus) == 13
    onu = by_id(onus)["UBNT20731888"]
    assert (onu.pon, onu.serial, onu.online) == ("pon2", "UBNT20731888", True)
    assert (onu.onu_rx_dbm, onu.onu_tx_dbm) == (-24.81, 2.28)
    assert onu.olt_rx_dbm is None and onu.temperature_c is None
    assert by_id(onus)["UBNTf9a5335c"].onu_rx_dbm == -17.25
    # offline: port 0, TX/RX 0 -> no PON, no light levels
    off = by_id(onus)["UBNT2073be78"]
    assert (off.online, off.pon, off.onu_rx_dbm, off.onu_tx_dbm) == (False, "unknown", None,
                                                                   None)
    assert stats.sentinel == 13 * 3 and stats.implausible == 0 and stats.onus == 29
    assert {o.pon for o in onus if o.online} == {"pon1", "pon2", "pon3", "pon4", "pon5"}


def test_ufiber_single_lines():
    base = "1.3.6.1.4.1.41112.1.5.6.2.1"
    idx = "12.85.66.78.84.49.50.51.52.53.54.55.56"          # "UBNT12345678"
    onus = decode_lines("ubiquiti-ufiber", [
        f"{base}.3.{idx}|2|1", f"{base}.5.{idx}|2|7", f"{base}.8.{idx}|2|250",
        f"{base}.9.{idx}|2|-1461"])
    assert [(o.onu_id, o.pon, o.onu_rx_dbm, o.onu_tx_dbm) for o in onus] == [
        ("UBNT12345678", "pon7", -14.61, 2.5)]


# -- Calix AXOS (recorded) ---------------------------------------------------------------

def test_axos_recording():
    onus = decode_file("calix-axos", "axos_e7-2.snmprec")
    assert len(onus) == 206
    assert all(o.online for o in onus)
    assert {o.pon for o in onus} == {"unknown"}
    onu = by_id(onus)["316"]          # axosOntIndex 2000001: RX 301, TX 43032, far end 537
    assert onu.onu_rx_dbm == pytest.approx(-15.2, abs=0.02)
    assert (onu.onu_rx_dbm, onu.onu_tx_dbm, onu.olt_rx_dbm) == (-15.21, 6.34, -12.7)
    assert len({o.onu_id for o in onus}) == 206


def test_axos_admin_disabled_is_skipped_and_invalid_is_offline():
    base = "1.3.6.1.4.1.6321.1.2.4.2.6.1.1"
    stats = DecodeStats()
    onus = decode_lines("calix-axos", [
        f"{base}.2.1|4|11", f"{base}.3.1|2|1", f"{base}.4.1|2|0", f"{base}.6.1|2|0",
        f"{base}.2.2|4|12", f"{base}.3.2|2|2", f"{base}.4.2|2|1", f"{base}.6.2|2|301",
        f"{base}.2.3|4|13", f"{base}.3.3|2|1", f"{base}.4.3|2|2", f"{base}.6.3|2|120",
    ], stats)
    assert [(o.onu_id, o.online, o.onu_rx_dbm) for o in onus] == [
        ("11", False, None), ("13", True, -19.21)]
    assert stats.skipped_rows == 1 and stats.sentinel == 1


# -- V-SOL V1600D (recorded) -------------------------------------------------------------

def test_vsol_recording():
    onus = decode_file("vsol-v1600", "vsolution_v1600d.snmprec")
    assert len(onus) == 16
    assert all(o.online for o in onus) and {o.pon for o in onus} == {"EPON0/1"}
    onu = by_id(onus)["1"]            # "0.03 mW (-14.61 dBm)": -14.61, not 0.03
    assert (onu.onu_rx_dbm, onu.onu_tx_dbm) == (-14.61, 3.77)
    assert (onu.temperature_c, onu.voltage_v, onu.bias_ma) == (30.67, 3.27, 11.65)
    assert by_id(onus)["16"].onu_rx_dbm == -28.24


def test_vsol_offline_onu_interface_and_unparsable_value():
    base = "1.3.6.1.4.1.37950.1.1.5.12.2.1.8.1"
    stats = DecodeStats()
    onus = decode_lines("vsol-v1600", [
        "1.3.6.1.2.1.2.2.1.8.9|2|2", "1.3.6.1.2.1.2.2.1.8.10|2|1",
        "1.3.6.1.2.1.31.1.1.1.1.9|4|EPON0/2:1", "1.3.6.1.2.1.31.1.1.1.1.10|4|EPON0/2:2",
        "1.3.6.1.4.1.37950.1.1.5.10.1.2.1.1.2.2|4|EPON0/2",
        f"{base}.7.2.1|4|0.03 mW (-14.61 dBm)", f"{base}.7.2.2|4|N/A",
    ], stats)
    assert [(o.pon, o.onu_id, o.online, o.onu_rx_dbm) for o in onus] == [
        ("EPON0/2", "1", False, None), ("EPON0/2", "2", True, None)]
    assert stats.offline == 1 and stats.unparsed == 1


# -- Huawei MA5800 (derived from the MIB: the recording has no ONT rows) -----------------

def test_huawei_derived_recording():
    stats = DecodeStats()
    onus = decode_file("huawei-ma5800", "huawei-ma5800-derived.snmprec", stats)
    assert len(onus) == 14
    assert sum(o.online is True for o in onus) == 12
    assert {o.pon for o in onus} == {"GPON 0/0/15", "GPON 0/1/15"}
    ont = by_id(onus, pon=True)[("GPON 0/0/15", "0")]
    assert ont.serial == "HWTCA1B23010"
    assert (ont.onu_rx_dbm, ont.onu_tx_dbm, ont.olt_rx_dbm) == (-17.9, 2.05, -21.3)
    assert (ont.temperature_c, ont.voltage_v, ont.bias_ma, ont.distance_m) == (41, 3.28, 9,
                                                                               1180)
    off = by_id(onus, pon=True)[("GPON 0/0/15", "7")]   # down, 2147483647 everywhere
    assert off.online is False and off.serial == "HWTCA1B23717"
    assert all(getattr(off, f) is None for f in ("onu_rx_dbm", "onu_tx_dbm", "olt_rx_dbm",
                                                 "temperature_c", "distance_m"))
    no_olt_rx = by_id(onus, pon=True)[("GPON 0/0/15", "10")]
    assert no_olt_rx.online and no_olt_rx.olt_rx_dbm is None and no_olt_rx.onu_rx_dbm == -23.2
    assert by_id(onus, pon=True)[("GPON 0/1/15", "2")].online is False
    assert stats.sentinel == 2 * 7 + 1


def test_huawei_sentinel_is_not_a_light_level():
    base = "1.3.6.1.4.1.2011.6.128.1.1.2"
    onus = decode_lines("huawei-ma5800", [
        "1.3.6.1.2.1.31.1.1.1.1.4194316032|4|GPON 0/1/15",
        f"{base}.46.1.15.4194316032.5|2|1",
        f"{base}.51.1.4.4194316032.5|2|2147483647",
        f"{base}.51.1.3.4194316032.5|2|231",
        f"{base}.51.1.6.4194316032.5|2|7500",
    ])
    assert [(o.pon, o.onu_id, o.onu_rx_dbm, o.onu_tx_dbm, o.olt_rx_dbm) for o in onus] == [
        ("GPON 0/1/15", "5", None, 2.31, -25.0)]


def test_implausible_values_are_rejected_not_reported():
    base = "1.3.6.1.4.1.2011.6.128.1.1.2"
    stats = DecodeStats()
    onus = decode_lines("huawei-ma5800", [
        f"{base}.46.1.15.4194316032.5|2|1",
        f"{base}.51.1.4.4194316032.5|2|-8000",     # -80 dBm
        f"{base}.51.1.6.4194316032.5|2|-2130",     # firmware with plain 0.01 dBm: -121.3
        f"{base}.51.1.3.4194316032.5|2|1500",      # +15 dBm
    ], stats)
    o = onus[0]
    assert (o.onu_rx_dbm, o.olt_rx_dbm, o.onu_tx_dbm, o.pon) == (None, None, None, "unknown")
    assert stats.implausible == 3


# -- ZTE C300/C320 (recorded ONU list and ports; derived OLT-side RX) --------------------

def test_zte_recording_inventory_and_derived_optics():
    stats = DecodeStats()
    onus = decode_file("zte-c300", "zte-c320-derived.snmprec", stats)
    assert len(onus) == 125
    per_pon: dict[str, int] = {}
    for o in onus:
        per_pon[o.pon] = per_pon.get(o.pon, 0) + 1
    assert per_pon == {"gpon_1/1/1": 5, "gpon_1/1/3": 18, "gpon_1/1/4": 39, "gpon_1/1/5": 19,
                       "gpon_1/1/6": 9, "gpon_1/1/7": 25, "gpon_1/1/8": 10}
    onu = by_id(onus, pon=True)[("gpon_1/1/1", "1")]
    assert (onu.distance_m, onu.olt_rx_dbm, onu.online) == (1235, -18.84, True)
    assert onu.onu_rx_dbm is None          # no confirmed ONU-side table: not reported
    assert by_id(onus, pon=True)[("gpon_1/1/3", "12")].online is False   # 65535000
    assert by_id(onus, pon=True)[("gpon_1/1/5", "16")].online is False   # -80000
    assert sum(o.online is True for o in onus) == 123
    assert all(o.olt_rx_dbm is None for o in onus if not o.online)


def test_zte_recording_alone_has_onus_but_no_optics():
    """The recording as recorded (no zxAnPonRxOpticalPower rows): inventory only."""
    lines = [line for line in open(DATA / "zte-c320-derived.snmprec", encoding="latin-1")
             if not line.startswith("1.3.6.1.4.1.3902.1082.500.")]
    onus = decode_lines("zte-c300", lines)
    assert len(onus) == 125
    assert all(o.online is None and o.olt_rx_dbm is None for o in onus)
    assert by_id(onus, pon=True)[("gpon_1/1/4", "1")].distance_m > 0


# -- validation: a bad profile is a clear error -------------------------------------------

GOOD = """
tables:
  t:
    index: [a, b]
    columns:
      status: 1.3.6.1.4.1.1.1
      onu_rx_dbm: {oid: 1.3.6.1.4.1.1.2, convert: {div: 100}}
reading:
  pon: "p{a}"
  onu_id: "{b}"
  online: {field: status, online: [1]}
"""


def test_a_minimal_profile_parses():
    p = parse_profile("x", yaml.safe_load(GOOD))
    assert p.columns() == [parse_oid("1.3.6.1.4.1.1.1"), parse_oid("1.3.6.1.4.1.1.2")]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["reading"].update(pon="{nope}"), r"reading.pon: unknown field\(s\) nope"),
    (lambda d: d["tables"]["t"]["columns"]["onu_rx_dbm"].update(convert="dbm"),
     "tables.t.columns.onu_rx_dbm.convert: unknown converter 'dbm'"),
    (lambda d: d["tables"]["t"]["columns"].update(x="1.3.six"), r"tables.t.columns.x.oid"),
    (lambda d: d["tables"]["t"].update(index=[]), "index must be a non-empty list"),
    (lambda d: d["tables"]["t"].update(extra=1), r"unknown key\(s\) extra"),
    (lambda d: d.update(name="y"), "differs from the file name"),
    (lambda d: d["reading"].pop("onu_id"), "reading.onu_id is required"),
    (lambda d: d["reading"].update(online={"field": "zz", "online": [1]}),
     "reading.online.field: 'zz' is not a field"),
    (lambda d: d["tables"].update(u={"index": ["c"], "columns": {"k": "1.3.6.1.4.1.1.3"}}),
     "tables.u.key: c not known from the tables before it"),
    (lambda d: d["tables"]["t"]["columns"].update(dup="1.3.6.1.4.1.1.1"),
     "the same column OID appears twice"),
    (lambda d: d["tables"]["t"]["columns"]["onu_rx_dbm"].update(valid=[5, 1]),
     r"valid: expected \[low, high\]"),
    (lambda d: d["tables"]["t"].update(index=[{"a": {"bits": {"s": [16]}}}]),
     r"expected \[shift, width\]"),
    (lambda d: d["reading"].update(remember_pon="yes"), "remember_pon: true or false"),
])
def test_bad_profiles_name_the_field(change, message):
    doc = yaml.safe_load(GOOD)
    change(doc)
    with pytest.raises(ProfileError, match=message):
        parse_profile("x", doc, "x.yaml")


def test_bad_yaml_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tables: [unclosed\n")
    with pytest.raises(ProfileError, match="broken.yaml: not valid YAML"):
        load_profile(path)
    with pytest.raises(ProfileError, match="broken.yaml"):
        load_profiles(tmp_path)


def test_bad_index_suffix_is_counted_not_fatal():
    stats = DecodeStats()
    onus = decode_lines("huawei-ma5800", [
        "1.3.6.1.4.1.2011.6.128.1.1.2.46.1.15.4194316032|2|1",        # one part short
        "1.3.6.1.4.1.2011.6.128.1.1.2.46.1.15.4194316032.3|2|1",
    ], stats)
    assert [o.onu_id for o in onus] == ["3"] and stats.bad_index == 1


def test_ufiber_onu_keeps_its_pon_when_it_goes_offline():
    """UFiber reports port 0 for an offline ONU; the serial is unique on the OLT, so with
    the poller's memory the ONU's (PON, ONU id) identity survives it going offline."""
    base = "1.3.6.1.4.1.41112.1.5.6.2.1"
    idx = "12.85.66.78.84.49.50.51.52.53.54.55.56"          # "UBNT12345678"
    online = [f"{base}.3.{idx}|2|1", f"{base}.5.{idx}|2|3", f"{base}.9.{idx}|2|-2100"]
    offline = [f"{base}.3.{idx}|2|2", f"{base}.5.{idx}|2|0", f"{base}.9.{idx}|2|0"]
    memory: dict[str, str] = {}
    assert [(o.pon, o.online) for o in decode_lines("ubiquiti-ufiber", offline, None)] == [
        ("unknown", False)]
    first = decode(PROFILES["ubiquiti-ufiber"],
                   walks_for(PROFILES["ubiquiti-ufiber"], parse_snmprec(online)), None, memory)
    later = decode(PROFILES["ubiquiti-ufiber"],
                   walks_for(PROFILES["ubiquiti-ufiber"], parse_snmprec(offline)), None, memory)
    assert [(o.pon, o.online) for o in first] == [("pon3", True)]
    assert [(o.pon, o.onu_id, o.online, o.onu_rx_dbm) for o in later] == [
        ("pon3", "UBNT12345678", False, None)]
    decode(PROFILES["ubiquiti-ufiber"], {}, None, memory)      # the ONU was deleted
    assert memory == {}


def test_remember_pon_is_off_where_onu_ids_repeat_per_pon():
    assert PROFILES["ubiquiti-ufiber"].remember_pon
    assert not any(PROFILES[p].remember_pon for p in ("huawei-ma5800", "zte-c300",
                                                      "vsol-v1600", "calix-axos"))
