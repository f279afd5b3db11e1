"""The fault flow's pure steps (pipelines.faults) and its inventory view
(pipelines.telemetry_catalog), without Bytewax or services."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Message

from ispstream.contracts import DeadLetter, DeviceStatus, IfStatsPoll, OnuOpticalPoll, TrapEvent
from pipelines.fault_rules import AlertChange, OnuRef
from pipelines.faults import (
    alert_kv,
    alert_record,
    detect_optics,
    device_key,
    is_optics,
    parse_message,
)
from pipelines.telemetry_catalog import TelemetryCatalog

T0 = 1_700_000_000.0
MODELS = {"snmp.ifstats": IfStatsPoll, "snmp.traps": TrapEvent, "onu.optical": OnuOpticalPoll,
          "device.status": DeviceStatus}


def msg(topic: str, value) -> Message:
    raw = value if isinstance(value, (bytes, type(None))) else json.dumps(value).encode()
    return Message(key=b"acme/x", value=raw, topic=topic, partition=1, offset=7)


def trap(kind: str, **kw) -> dict:
    return {"v": 1, "tenant_id": "acme", "device_id": "olt-1", "source_ip": "192.0.2.1",
            "received_at": T0, "snmp_version": "v2c", "trap_oid": "1.3", "kind": kind, **kw}


POLL = {"v": 1, "tenant_id": "acme", "olt_id": "olt-1", "profile": "zte", "at": T0,
        "onus": [{"pon": "gpon_1/1/1", "onu_id": "1", "onu_rx_dbm": -20.0}]}


@pytest.mark.parametrize("topic, value, expect", [
    ("onu.optical", POLL, OnuOpticalPoll),
    ("snmp.traps", trap("onu_los", pon="gpon_1/1/1", onu_id="1"), TrapEvent),
    ("snmp.traps", trap("onu_los", pon="gpon_1/1/1"), TrapEvent),     # whole PON
    ("snmp.traps", trap("onu_dying_gasp", onu_id="ZTEG0001"), TrapEvent),  # by serial
    ("snmp.traps", trap("link_down", if_index=3), TrapEvent),
    ("device.status", {"v": 1, "tenant_id": "acme", "device_id": "r", "at": T0,
                       "reachable": False, "reason": "timeout"}, DeviceStatus),
    ("snmp.traps", trap("onu_los"), "onu_los trap names neither a PON nor an ONU"),
    ("snmp.traps", trap("link_up"), "link_up trap without an ifIndex"),
    ("onu.optical", {**POLL, "v": 2}, "invalid OnuOpticalPoll: "),
    ("snmp.ifstats", b"not json", "invalid IfStatsPoll: "),
    ("snmp.ifstats", None, "empty message value"),
    ("other", POLL, "unexpected topic 'other'"),
])
def test_parse_message(topic, value, expect):
    out = parse_message(MODELS, msg(topic, value))
    if isinstance(expect, str):
        assert isinstance(out, DeadLetter)
        assert expect in out.reason
        assert (out.source_topic, out.partition, out.offset, out.key, out.stage) == \
            (topic, 1, 7, "acme/x", "flow.faults")
    else:
        assert isinstance(out, expect)


@pytest.mark.parametrize("value, optics, key", [
    (OnuOpticalPoll.model_validate(POLL), True, "acme/olt-1"),
    (TrapEvent.model_validate(trap("onu_up", pon="p", onu_id="1")), True, "acme/olt-1"),
    (TrapEvent.model_validate(trap("link_down", if_index=1)), False, "acme/olt-1"),
    (TrapEvent.model_validate(trap("cold_start")), False, "acme/olt-1"),
    (DeviceStatus(tenant_id="acme", device_id="r", at=T0, reachable=True, reason="ok"),
     False, "acme/r"),
])
def test_routing(value, optics, key):
    assert is_optics(value) is optics
    assert device_key(value) == key


def catalog() -> TelemetryCatalog:
    c = TelemetryCatalog(None)
    c.load_rows([("acme", "alice", "olt-1", "SN1", None, None),
                 ("acme", "bob", "olt-1", None, "p1", "2"),
                 ("acme", "carol", "olt-1", "SN3", "p1", "3")], [], full=True)
    return c


def test_subscribers_by_serial_then_position():
    c = catalog()
    assert c.subscriber("acme", "olt-1", "p9", "9", "SN1") == "alice"
    assert c.subscriber("acme", "olt-1", "p1", "2", None) == "bob"
    assert c.subscriber("acme", "olt-1", "p1", "3", "other") == "carol"
    assert c.subscriber("beta", "olt-1", "p1", "2", None) is None
    # bob moves to another ONU: the old position is free again
    c.load_rows([("acme", "bob", "olt-1", None, "p2", "5")], [], full=False)
    assert c.subscriber("acme", "olt-1", "p1", "2", None) is None
    assert c.subscriber("acme", "olt-1", "p2", "5", None) == "bob"


def test_thresholds_layered_and_bad_rows_skipped(caplog):
    c = TelemetryCatalog(None)
    c.load_rows([], [("acme", "tenant", "", {"onu_rx_min": -28, "flap_transitions": 5}),
                     ("acme", "profile", "zte", {"onu_rx_min": -29}),
                     ("acme", "device", "olt-9", json.dumps({"onu_rx_min": -30}))], full=True)
    assert c.thresholds("acme", "olt-1", None).onu_rx_min == -28.0
    assert c.thresholds("acme", "olt-1", "zte").onu_rx_min == -29.0
    assert c.thresholds("acme", "olt-1", "zte").flap_transitions == 5
    assert c.thresholds("acme", "olt-9", "zte").onu_rx_min == -30.0
    assert c.thresholds("beta", "olt-1", "zte").onu_rx_min == -27.0
    c.load_rows([], [("acme", "profile", "zte", {"onu_rx_minimum": -31})], full=False)
    assert "invalid and keeps its previous version" in caplog.text
    assert c.thresholds("acme", "olt-1", "zte").onu_rx_min == -29.0
    c.load_rows([], [("acme", "profile", "zte", {"onu_rx_min": -25})], full=False)
    assert c.thresholds("acme", "olt-1", "zte").onu_rx_min == -25.0


def test_detect_optics_uses_the_olts_thresholds():
    c = TelemetryCatalog(None)
    c.load_rows([], [("acme", "profile", "zte", {"onu_rx_min": -29})], full=True)
    poll = OnuOpticalPoll.model_validate(POLL)
    state, _ = detect_optics(c, None, poll)
    low = OnuOpticalPoll.model_validate({**POLL, "at": T0 + 300, "onus": [
        {"pon": "gpon_1/1/1", "onu_id": "1", "online": True, "onu_rx_dbm": -28.0}]})
    state, out = detect_optics(c, state, low)
    assert [x for x in out if isinstance(x, AlertChange)] == []
    # an ONU trap has no profile of its own: the OLT's last one applies
    state, out = detect_optics(c, state, TrapEvent.model_validate(
        trap("onu_los", pon="gpon_1/1/1", onu_id="1", received_at=T0 + 310)))
    assert [x.kind for x in out] == ["onu_los"]


def test_alert_record_links_subscribers_and_is_keyed_by_alert_key():
    change = AlertChange("acme", "id1", "pon_down:olt-1/p1", "pon_down", "critical", "open",
                         "olt-1", "p1", "title", "why", "feeder fibre cut",
                         (OnuRef("p1", "2"), OnuRef("p1", "3", "SN3"), OnuRef("p1", "4")),
                         {"pon": "p1"}, None, T0, T0, "opened", True)
    key, rec = alert_record(catalog(), change)
    assert key == "acme/pon_down:olt-1/p1"
    assert rec.event.affected_subscribers == ["bob", "carol"]
    assert rec.details == {"pon": "p1", "onus": ["p1/2", "p1/3", "p1/4"]}
    assert (rec.note, rec.history, rec.onu_level) == ("opened", True, False)
    key, value = alert_kv(rec)
    assert key == b"acme/pon_down:olt-1/p1"
    assert json.loads(value)["probable_cause"] == "feeder fibre cut"
