"""The telemetry endpoints against a real PostgreSQL: alerts (filters, pages, detail,
acknowledge), a device's interfaces, an OLT's PON ports, an ONU's optics and a
subscriber's line.

Devices, ONUs, samples and alerts are seeded with SQL as the table owner (the faults flow
writes them in production); the API reads them as the restricted role under row-level
security. Another tenant's objects are 404s.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from ispstream.apikeys import create_key, parse_key
from ispstream.contracts import AlertEvent
from portal_api.publisher import Publisher
from portal_api.routers import stream
from tests.integration.api_world import (
    acme_home,
    api_client,
    apply_inventory,
    beta_basic,
    get,
    tenants,
)

pytestmark = pytest.mark.integration

NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc

INVENTORY = tenants(acme_home("alice", "bob", "carol", "dave", "erin"),
                    beta_basic("alice", "zed"))

# (tenant, id, kind, address, community)
DEVICES = [
    ("acme", "olt-1", "olt", "192.0.2.10", "s3cr3t-community"),
    ("acme", "rtr-1", "router", "192.0.2.11", "s3cr3t-community"),
    ("beta", "olt-9", "olt", "192.0.2.20", "other-community"),
]

P1, P2, P10 = "gpon_0/1/1", "gpon_0/1/2", "gpon_0/1/10"

# (tenant, olt, pon, onu, serial, online, onu_rx, onu_tx, olt_rx, baseline)
ONUS = [
    ("acme", "olt-1", P1, "1", "ZTEG0001", True, -20.5, 2.1, -22.0, -19.0),
    ("acme", "olt-1", P1, "2", "ZTEG0002", True, -28.3, 2.0, -23.0, -21.0),
    ("acme", "olt-1", P1, "3", "ZTEG0003", False, -21.0, 2.0, -22.0, -21.0),
    ("acme", "olt-1", P2, "1", "ZTEG0021", True, -7.5, 2.2, -20.0, -7.4),
    ("acme", "olt-1", P10, "1", "ZTEG0101", None, None, None, None, None),
    ("acme", "olt-1", P10, "2", "ZTEG0102", True, -18.0, 1.9, -29.5, -18.0),
    ("beta", "olt-9", P1, "1", "HWTC0001", True, -15.0, 2.0, -16.0, -15.0),
]

# (tenant, username, olt, serial, pon, onu)
LINKS = [
    ("acme", "alice", "olt-1", "ZTEG0001", None, None),   # by serial
    ("acme", "bob", "olt-1", None, P1, "2"),               # by position
    ("acme", "carol", "olt-1", "ZTEG0003", P1, "3"),       # offline ONU
    ("acme", "dave", "olt-1", "NOTSEEN1", None, None),     # never discovered
    ("beta", "zed", "olt-9", "HWTC0001", None, None),
]


def _ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


# alert_id -> fields (tenant acme unless given)
ALERTS = {
    "a1": dict(key=f"onu_low_rx:olt-1/{P1}/2", kind="onu_low_rx", severity="major",
               state="open", device_id="olt-1", object=f"{P1}/2",
               title="ONU Rx low", explanation="ONU Rx -28.3 dBm is below -27 dBm",
               probable_cause="dirty connector or bend", affected=["bob"],
               suppressed_by=None, details={"onu_rx_dbm": -28.3}, opened_at=_ago(hours=3)),
    "a2": dict(key=f"pon_down:olt-1/{P1}", kind="pon_los", severity="critical",
               state="open", device_id="olt-1", object=P1, title="PON port down",
               explanation="3 of 3 ONUs lost signal together", probable_cause="feeder cut",
               affected=["alice", "bob", "carol"], suppressed_by=None,
               details={"onus": 3}, opened_at=_ago(hours=2)),
    "a3": dict(key=f"onu_los:olt-1/{P1}/3", kind="onu_los", severity="minor",
               state="open", device_id="olt-1", object=f"{P1}/3", title="ONU LOS",
               explanation="ONU lost signal", probable_cause=None, affected=["carol"],
               suppressed_by="a2", details={}, opened_at=_ago(hours=1, minutes=59)),
    "a4": dict(key="if_down:rtr-1/3", kind="if_down", severity="warning",
               state="acknowledged", device_id="rtr-1", object="ge-0/0/2",
               title="Interface down", explanation="oper-down", probable_cause=None,
               affected=[], suppressed_by=None, details={}, opened_at=_ago(hours=5),
               acknowledged_at=_ago(hours=4), acknowledged_by="000000000000"),
    "a5": dict(key="if_down:rtr-1/3", kind="if_down", severity="warning",
               state="cleared", device_id="rtr-1", object="ge-0/0/2",
               title="Interface down", explanation="oper-down", probable_cause=None,
               affected=[], suppressed_by=None, details={}, opened_at=_ago(days=1),
               cleared_at=_ago(hours=20)),
    "a6": dict(key=f"onu_high_rx:olt-1/{P2}/1", kind="onu_high_rx", severity="info",
               state="open", device_id="olt-1", object=f"{P2}/1", title="ONU Rx high",
               explanation="ONU Rx -7.5 dBm is above -8 dBm", probable_cause="no attenuator",
               affected=[], suppressed_by=None, details={}, opened_at=_ago(hours=6)),
    "b1": dict(tenant="beta", key="onu_los:olt-9/x", kind="onu_los", severity="critical",
               state="open", device_id="olt-9", object=f"{P1}/1", title="ONU LOS",
               explanation="beta's", probable_cause=None, affected=["alice", "zed"],
               suppressed_by=None, details={}, opened_at=_ago(minutes=5)),
}
LIVE_ACME_NEWEST_FIRST = ["a3", "a2", "a1", "a4", "a6"]


def seed_telemetry(dsn: str) -> None:
    """Devices, interfaces and samples, ONUs and optics, links and alerts."""
    with psycopg.connect(dsn) as conn:
        for tenant, dev, kind, addr, community in DEVICES:
            conn.execute(
                "INSERT INTO devices (tenant_id, id, kind, address, snmp_version, community, "
                "vendor_profile) VALUES (%s, %s, %s, %s, '2c', %s, %s)",
                (tenant, dev, kind, addr, community, "zte" if kind == "olt" else None))
        conn.execute("INSERT INTO device_status VALUES ('acme', 'rtr-1', true, 'recovered', "
                     "%s), ('acme', 'olt-1', false, 'timeout', %s)",
                     (_ago(days=2), _ago(minutes=3)))
        for tenant, dev, idx, name, oper in [("acme", "rtr-1", 1, "ge-0/0/0", 1),
                                             ("acme", "rtr-1", 3, "ge-0/0/2", 2),
                                             ("beta", "olt-9", 1, "uplink", 1)]:
            conn.execute(
                "INSERT INTO interfaces VALUES (%s, %s, %s, %s, 'to core', %s, 1, 1000, "
                "%s, %s)", (tenant, dev, idx, name, oper, _ago(days=3), _ago(minutes=1)))
        samples = [("acme", "rtr-1", 1, _ago(minutes=m), 1, 1e6 * m, 2e6 * m, 0.001 * m,
                    0.002 * m, False) for m in (50, 30, 10)]
        samples += [("acme", "rtr-1", 1, _ago(hours=2), 1, 5.0, 5.0, 0.0, 0.0, False),
                    ("acme", "rtr-1", 3, _ago(minutes=20), 2, None, None, None, None, True),
                    ("beta", "olt-9", 1, _ago(minutes=20), 1, 1.0, 1.0, 0.0, 0.0, False)]
        for s in samples:
            conn.execute("INSERT INTO if_samples VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                         "%s, %s)", s)
        for h in range(1, 5):
            conn.execute("INSERT INTO if_hourly VALUES ('acme', 'rtr-1', 1, %s, %s, %s, %s, "
                         "%s, 60)", (NOW - timedelta(hours=h), 1e6 * h, 2e6 * h, 3e6 * h,
                                     4e6 * h))
        for (tenant, olt, pon, onu, serial, online, rx, tx, olt_rx, base) in ONUS:
            conn.execute("INSERT INTO onus VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                         "%s)", (tenant, olt, pon, onu, serial, online, rx, tx, olt_rx,
                                 base, _ago(minutes=2)))
        for m in (25 * 60, 600, 300, 5):
            conn.execute(
                "INSERT INTO onu_optical_samples VALUES ('acme', 'olt-1', %s, '1', %s, true, "
                "%s, 2.1, -22.0, 41.5, 3.3, 12.0)", (P1, _ago(minutes=m), -20.0 - m / 1000))
        for h in range(1, 4):
            conn.execute("INSERT INTO onu_optical_hourly VALUES ('acme', 'olt-1', %s, '1', "
                         "%s, -20.2, -20.6, -22.0, -22.1, 12, 0)",
                         (P1, NOW - timedelta(hours=h)))
        for tenant, user, olt, serial, pon, onu in LINKS:
            conn.execute("INSERT INTO onu_links (tenant_id, username, olt_id, serial, pon, "
                         "onu_id) VALUES (%s, %s, %s, %s, %s, %s)",
                         (tenant, user, olt, serial, pon, onu))
        for alert_id, a in ALERTS.items():
            conn.execute(
                "INSERT INTO alerts (tenant_id, alert_id, key, kind, severity, state, "
                "device_id, object, title, explanation, probable_cause, "
                "affected_subscribers, suppressed_by, details, opened_at, last_seen_at, "
                "acknowledged_at, acknowledged_by, cleared_at) VALUES (%s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (a.get("tenant", "acme"), alert_id, a["key"], a["kind"], a["severity"],
                 a["state"], a["device_id"], a["object"], a["title"], a["explanation"],
                 a["probable_cause"], a["affected"], a["suppressed_by"],
                 json.dumps(a["details"]), a["opened_at"], _ago(minutes=1),
                 a.get("acknowledged_at"), a.get("acknowledged_by"), a.get("cleared_at")))
            conn.execute("INSERT INTO alert_history (tenant_id, alert_id, at, state) "
                         "VALUES (%s, %s, %s, 'open')",
                         (a.get("tenant", "acme"), alert_id, a["opened_at"]))


class RecordingPublisher(Publisher):
    """Confirms every record and keeps it."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []

    def publish(self, topic: str, key: str, value: bytes) -> None:
        self.records.append((topic, key, value))


@pytest.fixture
def world(pg_dsn, tmp_path):
    apply_inventory(pg_dsn, tmp_path, INVENTORY)
    seed_telemetry(pg_dsn)
    keys = {
        "acme": create_key(pg_dsn, "acme", "operator"),
        "acme_admin": create_key(pg_dsn, "acme", "admin"),
        "analyst": create_key(pg_dsn, "acme", "analyst"),
        "bob": create_key(pg_dsn, "acme", "customer", subscriber="bob"),
        "beta": create_key(pg_dsn, "beta", "operator"),
    }
    return pg_dsn, keys


@pytest.fixture
def api(world):
    dsn, keys = world
    publisher = RecordingPublisher()
    with api_client(dsn, NOW, publisher=publisher) as client:
        client.publisher = publisher
        yield client, keys


def ack(client: TestClient, key: str, alert_id: str, body=None) -> httpx.Response:
    return client.post(f"/v1/alerts/{alert_id}/ack", json=body,
                       headers={"Authorization": f"Bearer {key}"})


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [a["alert_id"] for a in r.json()["items"]]


def onu_path(olt: str, pon: str, onu: str) -> str:
    return f"/v1/onus/{quote(f'{olt}:{pon}:{onu}', safe='')}/optical"


# --- alerts -----------------------------------------------------------------------------


def test_alerts_default_to_live_newest_first_with_explanations(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/alerts")
    assert ids(r) == LIVE_ACME_NEWEST_FIRST
    assert r.json()["next_cursor"] is None
    by_id = {a["alert_id"]: a for a in r.json()["items"]}
    a2 = by_id["a2"]
    assert (a2["explanation"], a2["probable_cause"], a2["affected_subscribers"],
            a2["suppressed"], a2["suppressed_by"], a2["details"]) == (
        "3 of 3 ONUs lost signal together", "feeder cut", ["alice", "bob", "carol"],
        False, None, {"onus": 3})
    assert by_id["a3"]["suppressed"] is True and by_id["a3"]["suppressed_by"] == "a2"
    assert by_id["a4"]["acknowledged_by"] == "000000000000"
    assert datetime.fromisoformat(a2["opened_at"]) == _ago(hours=2)


@pytest.mark.parametrize("params, expected", [
    ({"state": "open"}, ["a3", "a2", "a1", "a6"]),
    ({"state": "acknowledged"}, ["a4"]),
    ({"state": "cleared"}, ["a5"]),
    ({"state": "all"}, ["a3", "a2", "a1", "a4", "a6", "a5"]),
    ({"severity": "major"}, ["a2", "a1"]),          # at least major
    ({"severity": "critical"}, ["a2"]),
    ({"severity": "info"}, LIVE_ACME_NEWEST_FIRST),
    ({"device": "rtr-1"}, ["a4"]),
    ({"device": "rtr-1", "state": "all"}, ["a4", "a5"]),
    ({"device": "olt-9"}, []),                      # beta's device
    ({"suppressed": "false"}, ["a2", "a1", "a4", "a6"]),
    ({"suppressed": "true"}, ["a3"]),
    ({"severity": "minor", "device": "olt-1", "suppressed": "false"}, ["a2", "a1"]),
])
def test_alert_filters(api, params, expected):
    client, keys = api
    assert ids(get(client, keys["acme"], "/v1/alerts", **params)) == expected


def test_alert_keyset_pages(api):
    client, keys = api
    seen, cursor, pages = [], None, 0
    while True:
        params = {"state": "all", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = get(client, keys["acme"], "/v1/alerts", **params)
        seen += ids(r)
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a3", "a2", "a1", "a4", "a6", "a5"] and pages == 3


@pytest.mark.parametrize("params, message", [
    ({"state": "closed"}, "Input should be 'live', 'open', 'acknowledged', 'cleared' or 'all'"),
    ({"severity": "urgent"}, "Input should be 'critical', 'major', 'minor', 'warning' or "
                             "'info'"),
    ({"limit": 0}, "greater than or equal to 1"),
    ({"suppressed": "maybe"}, "valid boolean"),
    ({"cursor": "nonsense"}, "invalid cursor"),
])
def test_bad_alert_params_are_422(api, params, message):
    client, keys = api
    r = get(client, keys["acme"], "/v1/alerts", **params)
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json())


def test_alerts_are_tenant_isolated(api):
    client, keys = api
    assert ids(get(client, keys["beta"], "/v1/alerts")) == ["b1"]
    assert ids(get(client, keys["beta"], "/v1/alerts", state="all", device="olt-1")) == []
    assert get(client, keys["beta"], "/v1/alerts/a1").status_code == 404
    assert get(client, keys["acme"], "/v1/alerts/b1").status_code == 404
    r = ack(client, keys["beta"], "a1")
    assert r.status_code == 404 and r.json() == {"detail": "alert not found"}


def test_alerts_need_an_operator(api):
    client, keys = api
    assert get(client, None, "/v1/alerts").status_code == 401
    assert get(client, "isk_nope", "/v1/alerts").status_code == 401
    for who in ("bob", "analyst"):
        assert get(client, keys[who], "/v1/alerts").status_code == 403
        assert ack(client, keys[who], "a1").status_code == 403
    assert get(client, keys["acme_admin"], "/v1/alerts").status_code == 200


def test_alert_detail_with_history(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/alerts/a1")
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "onu_low_rx" and r.json()["object"] == f"{P1}/2"
    assert [(h["state"], h["by_key"]) for h in r.json()["history"]] == [("open", None)]
    assert get(client, keys["acme"], "/v1/alerts/nope").status_code == 404


def test_ack_lifecycle(api, world):
    client, keys = api
    dsn, _ = world
    key_id = parse_key(keys["acme"])[0]
    r = ack(client, keys["acme"], "a1", {"note": "  truck rolled  "})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["acknowledged_by"], body["cleared_at"]) == (
        "acknowledged", key_id, None)
    assert datetime.fromisoformat(body["acknowledged_at"]) == NOW
    assert [(h["state"], h["note"], h["by_key"]) for h in body["history"]] == [
        ("open", None, None), ("acknowledged", "truck rolled", key_id)]
    # the change is announced on the alerts topic, keyed tenant/alert key
    [(topic, kafka_key, value)] = client.publisher.records
    event = AlertEvent.model_validate_json(value)
    assert (topic, kafka_key) == ("alerts", f"acme/onu_low_rx:olt-1/{P1}/2")
    assert (event.tenant_id, event.alert_id, event.state, event.changed_at,
            event.affected_subscribers) == ("acme", "a1", "acknowledged", NOW.timestamp(),
                                            ["bob"])
    # the list shows it acknowledged
    assert ids(get(client, keys["acme"], "/v1/alerts", state="acknowledged")) == ["a1", "a4"]
    # acknowledging again changes nothing
    again = ack(client, keys["acme_admin"], "a1", {"note": "me too"})
    assert again.status_code == 200 and again.json() == body
    assert len(client.publisher.records) == 1
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT state, acknowledged_by FROM alerts WHERE alert_id = "
                            "'a1'").fetchone() == ("acknowledged", key_id)
        assert conn.execute("SELECT count(*) FROM alert_history WHERE alert_id = 'a1' AND "
                            "state = 'acknowledged'").fetchone() == (1,)
        assert conn.execute(
            "SELECT tenant_id, api_key_id, target, detail FROM audit_log "
            "WHERE action = 'alert.ack'").fetchall() == [
            ("acme", key_id, "a1", {"note": "truck rolled",
                                    "key": f"onu_low_rx:olt-1/{P1}/2"})]


def test_ack_without_a_body(api):
    client, keys = api
    r = client.post("/v1/alerts/a6/ack", headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["history"][-1]["note"] is None


def test_acking_a_cleared_alert_is_409(api, world):
    client, keys = api
    r = ack(client, keys["acme"], "a5", {"note": "late"})
    assert r.status_code == 409
    assert r.json()["detail"] == (f"alert a5 was cleared at {_ago(hours=20).isoformat()}; "
                                  "a cleared alert cannot be acknowledged")
    assert client.publisher.records == []
    with psycopg.connect(world[0]) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'alert.ack'"
                            ).fetchone() == (0,)


@pytest.mark.parametrize("body, message", [
    ({"note": "x" * 1001}, "at most 1000 characters"),
    ({"nope": 1}, "Extra inputs are not permitted"),
])
def test_bad_ack_body_is_422(api, body, message):
    client, keys = api
    r = ack(client, keys["acme"], "a1", body)
    assert r.status_code == 422 and message in r.text


def test_ack_records_nothing_when_kafka_does_not_confirm(world):
    dsn, keys = world
    with api_client(dsn, NOW) as client:
        r = ack(client, keys["acme"], "a1", {"note": "x"})
    assert r.status_code == 503 and "nothing was recorded" in r.json()["detail"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT state FROM alerts WHERE alert_id = 'a1'"
                            ).fetchone() == ("open",)
        assert conn.execute("SELECT count(*) FROM alert_history WHERE alert_id = 'a1'"
                            ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'alert.ack'"
                            ).fetchone() == (0,)


# --- interfaces -------------------------------------------------------------------------


def test_interfaces_with_the_last_hour_of_samples(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/devices/rtr-1/interfaces")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["device_id"], body["kind"], body["reachable"], body["granularity"]) == (
        "rtr-1", "router", True, "raw")
    assert datetime.fromisoformat(body["from"]) == _ago(hours=1)
    assert datetime.fromisoformat(body["to"]) == NOW
    if1, if3 = body["interfaces"]
    assert (if1["if_index"], if1["name"], if1["alias"], if1["oper_status"],
            if1["admin_status"], if1["high_speed_mbps"], if1["hours"]) == (
        1, "ge-0/0/0", "to core", "up", "up", 1000, None)
    assert [(datetime.fromisoformat(s["ts"]), s["in_bps"], s["out_bps"])
            for s in if1["samples"]] == [(_ago(minutes=m), 1e6 * m, 2e6 * m)
                                         for m in (50, 30, 10)]
    assert if3["oper_status"] == "down"
    assert [(s["in_bps"], s["discontinuity"]) for s in if3["samples"]] == [(None, True)]
    # the API role never reads SNMP secrets
    assert "s3cr3t" not in r.text


def test_interfaces_explicit_window_and_hourly_rollups(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/devices/rtr-1/interfaces",
            **{"from": _ago(hours=3).isoformat(), "to": _ago(minutes=40).isoformat()})
    if1 = r.json()["interfaces"][0]
    assert [datetime.fromisoformat(s["ts"]) for s in if1["samples"]] == [
        _ago(hours=2), _ago(minutes=50)]
    r = get(client, keys["acme"], "/v1/devices/rtr-1/interfaces", granularity="hour",
            **{"from": "2024-03-15T09:30:00+01:00"})   # 08:30 UTC: from the 08:00 hour
    if1 = r.json()["interfaces"][0]
    assert if1["samples"] is None
    assert [(datetime.fromisoformat(h["hour"]), h["in_bps_avg"], h["out_bps_max"],
             h["samples"]) for h in if1["hours"]] == [
        (NOW - timedelta(hours=h), 1e6 * h, 4e6 * h, 60) for h in (4, 3, 2, 1)]
    assert r.json()["interfaces"][1]["hours"] == []


@pytest.mark.parametrize("params, message", [
    ({"from": "2024-03-15T12:00:00Z", "to": "2024-03-15T11:00:00Z"},
     "'from' must be before 'to'"),
    ({"from": "2024-03-13T12:00:00Z"}, "longer than 24 hours for granularity=raw (use "
                                       "granularity=hour"),
    ({"from": "2023-03-13T12:00:00Z", "granularity": "hour"}, "longer than 92 days"),
    ({"from": "2024-03-15T11:00:00"}, "timezone"),
    ({"granularity": "day"}, "Input should be 'raw' or 'hour'"),
])
def test_bad_interface_windows_are_422(api, params, message):
    client, keys = api
    r = get(client, keys["acme"], "/v1/devices/rtr-1/interfaces", **params)
    assert r.status_code == 422, r.text
    assert message in json.dumps(r.json())


def test_interfaces_of_another_tenants_device_are_404(api):
    client, keys = api
    assert get(client, keys["beta"], "/v1/devices/rtr-1/interfaces").status_code == 404
    assert get(client, keys["acme"], "/v1/devices/olt-9/interfaces").status_code == 404
    assert get(client, keys["acme"], "/v1/devices/nope/interfaces").status_code == 404
    r = get(client, keys["beta"], "/v1/devices/olt-9/interfaces")
    assert [i["name"] for i in r.json()["interfaces"]] == ["uplink"]
    assert "community" not in r.text


# --- PON ports and ONUs -----------------------------------------------------------------


def test_pon_ports(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/olts/olt-1/pon-ports")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["olt_id"] == "olt-1" and body["reachable"] is False
    assert body["limits"] == {"onu_rx_min_dbm": -27.0, "onu_rx_max_dbm": -8.0,
                              "olt_rx_min_dbm": -28.0, "olt_rx_max_dbm": -8.0,
                              "onu_tx_min_dbm": 0.5, "onu_tx_max_dbm": 5.0}
    ports = {p["pon"]: p for p in body["pon_ports"]}
    assert list(ports) == [P1, P2, P10]          # natural order
    assert ports[P1] == {
        "pon": P1, "onus_total": 3, "onus_online": 2, "onus_offline": 1, "onus_unknown": 0,
        # the offline ONU's stale reading is left out
        "onu_rx_dbm_min": -28.3, "onu_rx_dbm_avg": -24.4,
        "olt_rx_dbm_min": -23.0, "olt_rx_dbm_avg": -22.5,
        "onus_out_of_limits": 1, "open_alerts": 3}   # a1 (ONU 2), a2 (port), a3 (ONU 3)
    assert (ports[P2]["onus_out_of_limits"], ports[P2]["open_alerts"]) == (1, 1)
    assert ports[P10] == {
        "pon": P10, "onus_total": 2, "onus_online": 1, "onus_offline": 0, "onus_unknown": 1,
        "onu_rx_dbm_min": -18.0, "onu_rx_dbm_avg": -18.0, "olt_rx_dbm_min": -29.5,
        "olt_rx_dbm_avg": -29.5, "onus_out_of_limits": 1, "open_alerts": 0}


def test_pon_ports_only_for_the_tenants_olts(api):
    client, keys = api
    assert get(client, keys["acme"], "/v1/olts/rtr-1/pon-ports").status_code == 404
    assert get(client, keys["acme"], "/v1/olts/olt-9/pon-ports").status_code == 404
    assert get(client, keys["beta"], "/v1/olts/olt-1/pon-ports").status_code == 404
    r = get(client, keys["beta"], "/v1/olts/olt-9/pon-ports")
    assert [(p["pon"], p["onus_total"], p["open_alerts"]) for p in r.json()["pon_ports"]] \
        == [(P1, 1, 1)]


def test_onu_optical_samples_default_to_the_last_day(api):
    client, keys = api
    r = get(client, keys["acme"], onu_path("olt-1", P1, "1"))
    assert r.status_code == 200, r.text
    body = r.json()
    onu = body["onu"]
    assert datetime.fromisoformat(onu.pop("last_seen")) == _ago(minutes=2)
    assert onu == {"id": f"olt-1:{P1}:1", "olt_id": "olt-1", "pon": P1, "onu_id": "1",
                   "serial": "ZTEG0001", "online": True}
    assert body["limits"]["onu_rx_min_dbm"] == -27.0
    assert datetime.fromisoformat(body["from"]) == _ago(hours=24)
    assert body["hours"] is None
    assert [(datetime.fromisoformat(s["ts"]), s["onu_rx_dbm"], s["olt_rx_dbm"],
             s["temperature_c"]) for s in body["samples"]] == [
        (_ago(minutes=m), -20.0 - m / 1000, -22.0, 41.5) for m in (600, 300, 5)]


def test_onu_optical_hourly_and_unencoded_slashes(api):
    client, keys = api
    # the id also works with the PON's slashes left unencoded
    r = get(client, keys["acme"], f"/v1/onus/olt-1:{P1}:1/optical", granularity="hour",
            **{"from": _ago(hours=5).isoformat()})
    assert r.status_code == 200, r.text
    assert r.json()["samples"] is None
    assert [(datetime.fromisoformat(h["hour"]), h["onu_rx_avg"], h["onu_rx_min"],
             h["samples"], h["offline_samples"]) for h in r.json()["hours"]] == [
        (NOW - timedelta(hours=h), -20.2, -20.6, 12, 0) for h in (3, 2, 1)]


def test_onu_errors(api):
    client, keys = api
    assert get(client, keys["acme"], onu_path("olt-1", P1, "9")).status_code == 404
    assert get(client, keys["beta"], onu_path("olt-1", P1, "1")).status_code == 404
    assert get(client, keys["acme"], onu_path("olt-9", P1, "1")).status_code == 404
    r = get(client, keys["acme"], f"/v1/onus/{quote('olt-1-no-colons', safe='')}/optical")
    assert r.status_code == 422 and "expected <olt>:<pon>:<onu_id>" in r.text
    r = get(client, keys["acme"], onu_path("olt-1", P1, "1"),
            **{"from": "2024-01-01T00:00:00Z"})
    assert r.status_code == 422 and "longer than 31 days" in r.text
    assert get(client, keys["bob"], onu_path("olt-1", P1, "2")).status_code == 403


# --- a subscriber's line ----------------------------------------------------------------


def levels(body: dict) -> dict:
    return {k: (body[k]["dbm"], body[k]["verdict"]) for k in ("onu_rx", "olt_rx", "onu_tx")}


def test_line_by_serial(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/line")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["link"] == {"olt_id": "olt-1", "serial": "ZTEG0001", "pon": None,
                            "onu_id": None}
    assert (body["onu"]["id"], body["onu"]["online"]) == (f"olt-1:{P1}:1", True)
    assert levels(body) == {"onu_rx": (-20.5, "ok"), "olt_rx": (-22.0, "ok"),
                            "onu_tx": (2.1, "ok")}
    assert (body["onu_rx"]["min_dbm"], body["onu_rx"]["max_dbm"]) == (-27.0, -8.0)
    assert (body["baseline_rx_dbm"], body["drift_db"]) == (-19.0, -1.5)
    # the PON alert names alice
    assert [a["alert_id"] for a in body["alerts"]] == ["a2"]


def test_line_by_position_with_its_alerts(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/bob/line").json()
    assert body["onu"]["id"] == f"olt-1:{P1}:2"
    assert levels(body)["onu_rx"] == (-28.3, "low")
    assert body["drift_db"] == -7.3
    # the ONU's own alert and the PON port's, newest first
    assert [a["alert_id"] for a in body["alerts"]] == ["a2", "a1"]


def test_line_of_an_offline_onu_has_no_readings(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/carol/line").json()
    assert body["onu"]["online"] is False
    assert levels(body) == {k: (None, "no_reading") for k in ("onu_rx", "olt_rx", "onu_tx")}
    assert body["drift_db"] is None and body["baseline_rx_dbm"] == -21.0
    # its own LOS alert (suppressed by the PON alert) and the PON alert
    assert [(a["alert_id"], a["suppressed"]) for a in body["alerts"]] == [
        ("a3", True), ("a2", False)]


def test_line_without_an_onu(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/dave/line").json()
    assert body["link"]["serial"] == "NOTSEEN1" and body["onu"] is None
    assert (body["onu_rx"], body["olt_rx"], body["onu_tx"], body["alerts"]) == (
        None, None, None, [])
    body = get(client, keys["acme"], "/v1/subscribers/erin/line").json()
    assert (body["link"], body["onu"], body["alerts"]) == (None, None, [])


def test_customer_reads_only_its_own_line(api):
    client, keys = api
    r = get(client, keys["bob"], "/v1/subscribers/bob/line")
    assert r.status_code == 200, r.text
    by_id = {a["alert_id"]: a for a in r.json()["alerts"]}
    # the PON alert, without the neighbours, the detector's details or the operator key
    assert by_id["a2"]["affected_subscribers"] == ["bob"]
    assert by_id["a2"]["details"] == {} and by_id["a2"]["acknowledged_by"] is None
    assert get(client, keys["bob"], "/v1/subscribers/alice/line").status_code == 404
    assert get(client, keys["bob"], "/v1/subscribers/nobody/line").status_code == 404
    assert get(client, keys["analyst"], "/v1/subscribers/bob/line").status_code == 403


def test_line_is_tenant_isolated(api):
    client, keys = api
    assert get(client, keys["beta"], "/v1/subscribers/bob/line").status_code == 404
    assert get(client, keys["acme"], "/v1/subscribers/zed/line").status_code == 404
    # beta's alice is another subscriber: no link, and only beta's alert naming her
    body = get(client, keys["beta"], "/v1/subscribers/alice/line").json()
    assert body["link"] is None and [a["alert_id"] for a in body["alerts"]] == ["b1"]
    body = get(client, keys["beta"], "/v1/subscribers/zed/line").json()
    assert body["onu"]["id"] == f"olt-9:{P1}:1"


# --- the stream's errors and the OpenAPI document ----------------------------------------


def test_alert_stream_errors_before_streaming(api, monkeypatch):
    client, keys = api
    assert get(client, None, "/v1/stream/alerts").status_code == 401
    assert get(client, keys["bob"], "/v1/stream/alerts").status_code == 403
    r = get(client, keys["acme"], "/v1/stream/alerts")   # Kafka not configured
    assert r.status_code == 503 and "Kafka is not configured" in r.json()["detail"]
    assert get(client, keys["acme"], "/v1/stream/alerts", heartbeat=0).status_code == 422
    monkeypatch.setattr(stream, "MAX_STREAMS", 0)
    r = get(client, keys["acme"], "/v1/stream/alerts")
    assert r.status_code == 503 and "too many alert streams" in r.json()["detail"]


def test_openapi_documents_the_telemetry_endpoints(api):
    client, _ = api
    spec = client.get("/openapi.json").json()
    assert {"/v1/alerts", "/v1/alerts/{alert_id}", "/v1/alerts/{alert_id}/ack",
            "/v1/devices/{device_id}/interfaces", "/v1/olts/{olt_id}/pon-ports",
            "/v1/onus/{onu}/optical", "/v1/subscribers/{username}/line",
            "/v1/stream/alerts"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"AlertPublic", "AlertPagePublic", "AlertDetailPublic", "AlertAckCreate",
            "DeviceInterfacesPublic", "OltPonPortsPublic", "OnuOpticalPublic",
            "LinePublic", "AlertEvent"} <= set(schemas)
    stream = spec["paths"]["/v1/stream/alerts"]["get"]["responses"]["200"]["content"]
    assert stream["text/event-stream"]["itemSchema"]["properties"]["data"][
        "contentSchema"] == {"$ref": "#/components/schemas/AlertEvent"}
    onu = spec["paths"]["/v1/onus/{onu}/optical"]["get"]["parameters"][0]
    assert onu["in"] == "path" and "<olt>:<pon>:<onu_id>" in onu["description"]
