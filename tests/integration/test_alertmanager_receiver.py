"""The Alertmanager-compatible receiver (``portal_api.routers.alertmanager``) against a
real PostgreSQL, as the restricted API role: firing opens, resolved clears, repeats
change nothing, a new ``startsAt`` is a new episode, tenants stay apart, the API role
cannot touch the fault flow's alerts, and the queued announcements are delivered by the
same worker as the flow's."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import psycopg
import pytest
from fastapi.testclient import TestClient

from ispstream.apikeys import create_key, parse_key
from ispstream.db import tenant_transaction
from ispstream.settings import Settings
from pipelines.alert_delivery import AlertDelivery, verify
from portal_api.app import create_app
from portal_api.publisher import Publisher, PublishError
from portal_api.routers import alertmanager
from tests.integration.test_faults_delivery import SECRET, WebhookPeer

pytestmark = pytest.mark.integration

NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)


class RecordingPublisher(Publisher):
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []
        self.fail = False

    def publish(self, topic: str, key: str, value: bytes) -> None:
        if self.fail:
            raise PublishError("Kafka did not confirm")
        self.sent.append((topic, key, value))


@pytest.fixture
def am(pg_dsn):
    hook = WebhookPeer()
    with psycopg.connect(pg_dsn) as conn:
        for t in ("acme", "beta"):
            conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, 'UTC', 'EUR')",
                         (t,))
        conn.execute("INSERT INTO alert_channels (tenant_id, id, kind, config, min_severity) "
                     "VALUES ('acme', 'hook', 'webhook', %s, 'warning')",
                     (psycopg.types.json.Jsonb({"url": hook.url, "secret": SECRET}),))
    keys = {"acme": create_key(pg_dsn, "acme", "operator"),
            "analyst": create_key(pg_dsn, "acme", "analyst"),
            "beta": create_key(pg_dsn, "beta", "admin")}
    publisher = RecordingPublisher()
    app = create_app(Settings(_env_file=None, database_url=pg_dsn, kafka_bootstrap="kafka:9092",
                              topic_prefix="p."),
                     clock=lambda: NOW, publisher=publisher)
    app.include_router(alertmanager.router)
    with TestClient(app) as client:
        yield client, keys, pg_dsn, publisher, hook
    hook.close()


def alert(fp: str, status: str = "firing", starts: str = "2024-03-15T11:00:00Z",
          ends: str = "0001-01-01T00:00:00Z", **labels) -> dict:
    return {"status": status, "fingerprint": fp, "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus:9090/graph",
            "labels": {"alertname": "HighLatency", "instance": "bng-1:9100", **labels},
            "annotations": {"summary": "p99 above 200 ms", "description": "long text"}}


def notify(client, key: str | None, alerts: list[dict], version: str = "4"):
    body = {"version": version, "groupKey": "{}:{alertname=\"HighLatency\"}", "status":
            "firing", "receiver": "ispstream", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am:9093", "truncatedAlerts": 0,
            "alerts": alerts}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/alertmanager/webhook", json=body, headers=headers)


def rows(dsn, sql, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def test_firing_resolved_repeats_and_episodes(am):
    client, keys, dsn, publisher, _ = am
    r = notify(client, keys["acme"], [alert("fp1", severity="critical"),
                                      alert("fp2", severity="bogus")])
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert (receipt["received"], receipt["opened"], receipt["cleared"]) == (2, 2, 0)
    id1, id2 = receipt["alert_ids"]
    assert rows(dsn, "SELECT alert_id, key, kind, severity, state, device_id, object, title, "
                     "explanation, details->'labels'->>'alertname', "
                     "extract(epoch FROM opened_at)::bigint FROM alerts ORDER BY key") == [
        (id1, "am:fp1", "alertmanager", "critical", "open", "bng-1:9100", "HighLatency",
         "HighLatency: p99 above 200 ms", "long text", "HighLatency", 1710500400),
        (id2, "am:fp2", "alertmanager", "warning", "open", "bng-1:9100", "HighLatency",
         "HighLatency: p99 above 200 ms", "long text", "HighLatency", 1710500400)]
    key_id = parse_key(keys["acme"])[0]
    assert rows(dsn, "SELECT alert_id, state, note, by_key FROM alert_history ORDER BY 1") == \
        sorted([(id1, "open", "opened by Alertmanager", key_id),
                (id2, "open", "opened by Alertmanager", key_id)])
    assert rows(dsn, "SELECT count(*) FROM alert_deliveries WHERE status = 'pending' "
                     "AND state = 'open'") == [(2,)]
    assert [(t, k) for t, k, _ in publisher.sent] == [("p.alerts", "acme/am:fp1"),
                                                      ("p.alerts", "acme/am:fp2")]
    assert rows(dsn, "SELECT action, target, detail->>'firing' FROM audit_log "
                     "WHERE action = 'alertmanager.webhook'") == [
        ("alertmanager.webhook", "ispstream", "2")]

    # Alertmanager repeats the notification: nothing new.
    r = notify(client, keys["acme"], [alert("fp1", severity="critical")])
    assert (r.json()["opened"], r.json()["cleared"]) == (0, 0)
    assert rows(dsn, "SELECT count(*) FROM alert_history") == [(2,)]

    # Resolved: cleared at endsAt; the clearing is queued where the opening was.
    r = notify(client, keys["acme"], [alert("fp1", "resolved", ends="2024-03-15T11:30:00Z",
                                            severity="critical")])
    assert (r.json()["opened"], r.json()["cleared"]) == (0, 1)
    assert rows(dsn, "SELECT state, extract(epoch FROM cleared_at)::bigint FROM alerts "
                     "WHERE alert_id = %s", id1) == [("cleared", 1710502200)]
    assert rows(dsn, "SELECT state, status FROM alert_deliveries WHERE alert_id = %s "
                     "ORDER BY state", id1) == [("cleared", "pending"), ("open", "pending")]
    r = notify(client, keys["acme"], [alert("fp1", "resolved", ends="2024-03-15T11:30:00Z")])
    assert r.json()["cleared"] == 0

    # It fires again: a new episode. fp2 fires again with a new startsAt while its first
    # episode was never resolved: the new one supersedes it.
    r = notify(client, keys["acme"], [alert("fp1", starts="2024-03-15T11:45:00Z"),
                                      alert("fp2", starts="2024-03-15T11:50:00Z")])
    new1, new2 = r.json()["alert_ids"]
    assert r.json()["opened"] == 2 and new1 != id1 and new2 != id2
    assert rows(dsn, "SELECT key, count(*) FILTER (WHERE state <> 'cleared'), count(*) "
                     "FROM alerts GROUP BY key ORDER BY key") == [("am:fp1", 1, 2),
                                                                  ("am:fp2", 1, 2)]
    assert rows(dsn, "SELECT note FROM alert_history WHERE alert_id = %s AND "
                     "state = 'cleared'", id2) == [(f"superseded by {new2}",)]


def test_roles_tenants_and_bad_payloads(am):
    client, keys, dsn, _, _ = am
    assert notify(client, None, [alert("fp1")]).status_code == 401
    assert notify(client, keys["analyst"], [alert("fp1")]).status_code == 403
    assert notify(client, keys["acme"], [alert("fp1")], version="3").status_code == 422
    bad = alert("fp1")
    bad["status"] = "pending"
    assert notify(client, keys["acme"], [bad]).status_code == 422
    assert rows(dsn, "SELECT count(*) FROM alerts") == [(0,)]
    a = notify(client, keys["acme"], [alert("fp1")]).json()["alert_ids"][0]
    b = notify(client, keys["beta"], [alert("fp1")]).json()["alert_ids"][0]
    assert a != b
    assert sorted(rows(dsn, "SELECT tenant_id, key FROM alerts")) == [("acme", "am:fp1"),
                                                                     ("beta", "am:fp1")]
    # beta has no channels: nothing queued for it
    assert rows(dsn, "SELECT DISTINCT tenant_id FROM alert_deliveries") == [("acme",)]


def test_kafka_unconfirmed_is_503_and_the_retry_records_nothing_twice(am):
    client, keys, dsn, publisher, _ = am
    publisher.fail = True
    r = notify(client, keys["acme"], [alert("fp9")])
    assert r.status_code == 503 and "recorded" in r.json()["detail"]
    publisher.fail = False
    r = notify(client, keys["acme"], [alert("fp9")])
    assert r.status_code == 200 and r.json()["opened"] == 0
    assert rows(dsn, "SELECT count(*) FROM alerts") == [(1,)]
    assert len(publisher.sent) == 1


def test_api_role_cannot_rewrite_the_flows_alerts(am):
    _, _, dsn, _, _ = am
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO alerts (tenant_id, alert_id, key, kind, severity, state, "
                     "title, explanation, opened_at, last_seen_at) VALUES ('acme', 'x1', "
                     "'pon_down:olt-1/p1', 'pon_down', 'critical', 'open', 't', 'e', now(), "
                     "now())")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with tenant_transaction(conn, "acme"):  # acknowledging is allowed
            conn.execute("UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), "
                         "acknowledged_by = 'k' WHERE alert_id = 'x1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="fault flow"):
            with tenant_transaction(conn, "acme"):
                conn.execute("UPDATE alerts SET severity = 'info' WHERE alert_id = 'x1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(conn, "acme"):
                conn.execute("INSERT INTO alerts (tenant_id, alert_id, key, kind, severity, "
                             "state, title, explanation, opened_at, last_seen_at) VALUES "
                             "('acme', 'x2', 'pon_down:olt-1/p2', 'pon_down', 'critical', "
                             "'open', 't', 'e', now(), now())")
    assert rows(dsn, "SELECT state, severity FROM alerts") == [("acknowledged", "critical")]


def test_queued_announcements_are_delivered_by_the_worker(am):
    client, keys, dsn, _, hook = am
    notify(client, keys["acme"], [alert("fp1", severity="major")])
    notify(client, keys["acme"], [alert("fp1", "resolved", ends="2024-03-15T11:30:00Z",
                                        severity="major")])
    worker = AlertDelivery(dsn, poll_s=0.05)
    try:
        deadline = time.monotonic() + 30
        while len(hook.requests) < 2 and time.monotonic() < deadline:
            worker.run_once()
            time.sleep(0.05)
    finally:
        worker.stop()
    events = hook.events()
    assert [(e["key"], e["state"], e["severity"]) for e in events] == [
        ("am:fp1", "open", "major"), ("am:fp1", "cleared", "major")]
    for headers, body in hook.requests:
        assert verify(body, SECRET, headers["x-ispstream-signature"])
