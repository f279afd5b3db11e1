"""Trap mapping as data: the shipped traps.yaml and the rule language."""

from __future__ import annotations

import pytest

from collectors.snmp.traps import KINDS, TrapMapper, value_text

MAPPER = TrapMapper.load()


def test_shipped_rules_are_valid_and_the_unverified_ones_are_marked():
    assert MAPPER.rules and all(r.kind in KINDS for r in MAPPER.rules)
    standard = {r.name for r in MAPPER.rules if r.verified}
    assert standard == {"coldStart", "warmStart", "linkDown", "linkUp"}
    vendors = {r.name.split()[0] for r in MAPPER.rules if not r.verified}
    assert {"huawei", "zte", "vsol", "generic"} <= vendors


def test_link_down_and_up_carry_the_if_index():
    m = MAPPER.map("1.3.6.1.6.3.1.1.5.3", [("1.3.6.1.2.1.2.2.1.1.12", 12),
                                           ("1.3.6.1.2.1.2.2.1.7.12", 1),
                                           ("1.3.6.1.2.1.2.2.1.8.12", 2)])
    assert (m.kind, m.if_index, m.pon, m.onu_id) == ("link_down", 12, None, None)
    m = MAPPER.map("1.3.6.1.6.3.1.1.5.4", [("1.3.6.1.2.1.2.2.1.1.268435456", 268435456)])
    assert (m.kind, m.if_index) == ("link_up", 268435456)
    assert MAPPER.map("1.3.6.1.6.3.1.1.5.3", []).if_index is None
    assert MAPPER.map("1.3.6.1.6.3.1.1.5.1", []).kind == "cold_start"
    assert MAPPER.map("1.3.6.1.6.3.1.1.5.2", []).kind == "warm_start"


def test_huawei_ont_alarms_by_text_with_pon_and_ont_from_the_index():
    xpon = "1.3.6.1.4.1.2011.6.128.1.1.2.43.1.3"
    m = MAPPER.map("1.3.6.1.4.1.2011.6.128.1.1.2.0.99",
                   [(f"{xpon}.4194316032.7", b"HWTC1A2B3C4D"),
                    ("1.3.6.1.4.1.2011.2.15.1.7.1.3.0", b"The ONT dying gasp alarm occurs")])
    assert (m.kind, m.pon, m.onu_id) == ("onu_dying_gasp", "4194316032", "7")
    # the PON is named as the ONU poller names it once the OLT's interfaces were polled
    m = MAPPER.map("1.3.6.1.4.1.2011.6.128.1.1.2.0.99",
                   [(f"{xpon}.4194316032.7", b"The ONT dying gasp alarm occurs")],
                   if_names={4194316032: "GPON 0/1/15", 1: "ethernet0/9/0"})
    assert (m.kind, m.pon, m.onu_id) == ("onu_dying_gasp", "GPON 0/1/15", "7")
    m = MAPPER.map("1.3.6.1.4.1.2011.6.128.1.1.2.0.98",
                   [(f"{xpon}.4194316032.7", b"ONT LOSi alarm")])
    assert (m.kind, m.pon, m.onu_id) == ("onu_los", "4194316032", "7")
    m = MAPPER.map("1.3.6.1.4.1.2011.6.128.1.1.2.0.98",
                   [(f"{xpon}.4194316032.7", b"The ONT LOS alarm is cleared")])
    assert m.kind == "onu_up"
    # another Huawei trap without such text stays "other"
    assert MAPPER.map("1.3.6.1.4.1.2011.5.25.1", [("1.3.6.1.2.1.1.5.0", b"x")]).kind == \
        "other"


@pytest.mark.parametrize(("trap", "vb", "pon", "onu"), [
    ("1.3.6.1.4.1.3902.1082.500.20.2.1", "1.3.6.1.4.1.3902.1012.3.28.1.1.268501248.12",
     "268501248", "12"),
    ("1.3.6.1.4.1.37950.1.1.5.10.0.1", "1.3.6.1.4.1.37950.1.1.5.12.1.1.1.2.5", "2", "5"),
])
def test_zte_and_vsol_onu_alarms(trap, vb, pon, onu):
    m = MAPPER.map(trap, [(vb, b"ONU Dying Gasp")])
    assert (m.kind, m.pon, m.onu_id) == ("onu_dying_gasp", pon, onu)


def test_generic_text_rules_and_unknown_traps():
    m = MAPPER.map("1.3.6.1.4.1.99999.1.0.1", [("1.3.6.1.4.1.99999.1.1.0",
                                                b"PON 3 ONU 5: Loss of Signal")])
    assert (m.kind, m.pon, m.onu_id) == ("onu_los", None, None)
    assert MAPPER.map("1.3.6.1.4.1.99999.1.0.1", [("1.3.6.1.4.1.99999.1.1.0", b"fan ok")]) \
        .kind == "other"
    assert MAPPER.map("1.3.6.1.2.1.14.16.2.2", []).kind == "other"  # an OSPF trap


def test_rule_language():
    mapper = TrapMapper.parse({"rules": [
        {"oid": "1.3.6.1.4.1.1.0.1", "kind": "onu_los",
         "pon": {"value_of": "1.3.6.1.4.1.1.2"},
         "onu_id": {"index_of": "1.3.6.1.4.1.1.3", "part": 0}},
        {"oid_prefix": "1.3.6.1.4.1.1", "kind": "onu_up",
         "onu_id": {"index_of": "1.3.6.1.4.1.1.3"}},
    ]})
    vbs = [("1.3.6.1.4.1.1.2.0", b"gpon_1/1/3"), ("1.3.6.1.4.1.1.3.17.4", 1)]
    m = mapper.map("1.3.6.1.4.1.1.0.1", vbs)
    assert (m.kind, m.pon, m.onu_id) == ("onu_los", "gpon_1/1/3", "17")
    m = mapper.map("1.3.6.1.4.1.1.0.2", vbs)
    assert (m.kind, m.pon, m.onu_id) == ("onu_up", None, "17.4")
    # a prefix is a subtree, not a string prefix
    assert mapper.map("1.3.6.1.4.1.10.0.1", vbs).kind == "other"


@pytest.mark.parametrize("rules", [
    [{"oid": "1.2.3", "kind": "explosion"}],
    [{"kind": "onu_los"}],
    [{"oid": "1.2.3", "kind": "onu_los", "pon": {"column": "1.2"}}],
    [{"oid": "1.2.3", "kind": "onu_los", "pon": {"value_of": "1.2", "lookup": "ifDescr"}}],
])
def test_bad_rules_are_refused(rules):
    with pytest.raises(ValueError):
        TrapMapper.parse({"rules": rules})


def test_value_text():
    assert value_text(b"eth0") == "eth0"
    assert value_text(b"\x00\x01\xff") == "0x0001ff"
    assert value_text(42) == "42" and value_text(None) == ""
