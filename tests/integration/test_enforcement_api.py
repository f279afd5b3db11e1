"""Enforcement through the API against a real PostgreSQL and the embedded broker.

Operator actions are published on the ``actions`` topic (confirmed by the broker) and
recorded with an audit entry in one step; the enforced state and the action history
are read as the restricted role under row-level security.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient

from ispstream.apikeys import create_key, parse_key
from ispstream.contracts import ActionEvent
from procs import free_port
from tests.integration.api_world import api_client, apply_inventory, auth, beta_basic, get

pytestmark = pytest.mark.integration

NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)
PARTITIONS = 2

INVENTORY = """\
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - {id: small, monthly_fee: "10.00", quota_gb: 100, after_quota: {throttle: "1M/1M"}}
    nas:
      - {ip: 192.0.2.1, name: bng-1, secret: s1, vendor: mikrotik}
    subscribers:
      - {username: alice, plan: small}
      - {username: carol, plan: small}
""" + beta_basic("alice")


@pytest.fixture
def world(pg_dsn, tmp_path):
    apply_inventory(pg_dsn, tmp_path, INVENTORY)
    keys = {
        "acme": create_key(pg_dsn, "acme", "operator"),
        "acme_admin": create_key(pg_dsn, "acme", "admin"),
        "acme_analyst": create_key(pg_dsn, "acme", "analyst"),
        "acme_radius": create_key(pg_dsn, "acme", "radius"),
        "carol": create_key(pg_dsn, "acme", "customer", subscriber="carol"),
        "beta": create_key(pg_dsn, "beta", "admin"),
    }
    return pg_dsn, keys


@pytest.fixture
def actions_topic(broker, topic_prefix) -> str:
    name = f"{topic_prefix}actions"
    broker.create_topic(name, PARTITIONS)
    return name


def make_client(dsn: str, kafka: str = "", prefix: str = "", timeout_ms: int = 3000):
    return api_client(dsn, NOW, kafka, topic_prefix=prefix,
                      kafka_delivery_timeout_ms=timeout_ms)


@pytest.fixture
def api(world, broker, topic_prefix, actions_topic):
    dsn, keys = world
    with make_client(dsn, broker.bootstrap, topic_prefix) as client:
        yield client, keys


def post(client: TestClient, key: str | None, username: str, body: dict) -> httpx.Response:
    return client.post(f"/v1/subscribers/{username}/actions", json=body, headers=auth(key))


def consume(bootstrap: str, topic: str, timeout: float = 20.0) -> list:
    """Every record on ``topic``: read until the end of every partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    records, at_end = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, "timed out reading the actions topic"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                at_end.add(msg.partition())
                continue
            at_end.discard(msg.partition())
            records.append(msg)
    finally:
        consumer.close()
    return records


def db_rows(dsn: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def recorded(dsn: str) -> tuple[list, list]:
    """(actions rows, audit rows of actions): what a POST records."""
    return (db_rows(dsn, "SELECT tenant_id, intent_id FROM actions"),
            db_rows(dsn, "SELECT id FROM audit_log WHERE action LIKE 'action.%%'"))


# --- POST /v1/subscribers/{username}/actions -----------------------------------------


def test_throttle_is_published_once_and_recorded_with_the_key(api, world, broker,
                                                              actions_topic):
    client, keys = api
    dsn, _ = world
    r = post(client, keys["acme"], "alice",
             {"action": "throttle", "rate": "2M/2M", "reason": "  abuse ticket 42 "})
    assert r.status_code == 202, r.text
    body = r.json()
    key_id, _ = parse_key(keys["acme"])
    assert len(body["intent_id"]) == 32 and int(body["intent_id"], 16) >= 0
    assert body == {
        "v": 1, "intent_id": body["intent_id"], "tenant_id": "acme", "username": "alice",
        "kind": "throttle", "rate": "2M/2M", "source": "operator",
        "reason": "abuse ticket 42", "threshold_pct": None, "cycle_start": None,
        "cycle_end": None, "requested_by": key_id, "at": NOW.timestamp(),
    }

    records = consume(broker.bootstrap, actions_topic)
    assert len(records) == 1
    assert records[0].key() == b"acme/alice"
    event = ActionEvent.model_validate_json(records[0].value())
    assert event.model_dump(mode="json") == body

    assert db_rows(dsn, "SELECT tenant_id, intent_id, username, kind, rate, source, reason, "
                        "requested_by, at, state, completed_at FROM actions") == [
        ("acme", body["intent_id"], "alice", "throttle", "2M/2M", "operator",
         "abuse ticket 42", key_id, NOW, "pending", None)]
    assert db_rows(dsn, "SELECT tenant_id, api_key_id, action, target, detail FROM audit_log "
                        "WHERE action LIKE 'action.%%'") == [
        ("acme", key_id, "action.throttle", "alice",
         {"intent_id": body["intent_id"], "rate": "2M/2M", "reason": "abuse ticket 42"})]


def test_every_action_kind_by_operator_and_admin(api, world, broker, actions_topic):
    client, keys = api
    dsn, _ = world
    ids = []
    for key, action in (("acme", "disconnect"), ("acme_admin", "suspend"),
                        ("acme", "resume")):
        r = post(client, keys[key], "carol", {"action": action, "reason": "ticket"})
        assert r.status_code == 202, r.text
        assert (r.json()["kind"], r.json()["rate"]) == (action, None)
        assert r.json()["requested_by"] == parse_key(keys[key])[0]
        ids.append(r.json()["intent_id"])
    assert len(set(ids)) == 3
    events = [ActionEvent.model_validate_json(m.value())
              for m in consume(broker.bootstrap, actions_topic)]
    # one subscriber's actions share a key, so one partition keeps them in order
    assert [e.intent_id for e in events] == ids
    assert sorted(r[0] for r in db_rows(dsn, "SELECT intent_id FROM actions")) == sorted(ids)
    assert db_rows(dsn, "SELECT action FROM audit_log WHERE action LIKE 'action.%%' "
                        "ORDER BY id") == [("action.disconnect",), ("action.suspend",),
                                           ("action.resume",)]


def test_503_and_nothing_recorded_when_kafka_is_not_configured(world):
    dsn, keys = world
    with make_client(dsn) as client:
        r = post(client, keys["acme"], "alice", {"action": "suspend", "reason": "unpaid"})
        assert r.status_code == 503
        assert "Kafka is not configured" in r.json()["detail"]
        # validation and lookups still come first
        assert post(client, keys["acme"], "nobody",
                    {"action": "suspend", "reason": "x"}).status_code == 404
        assert post(client, keys["acme"], "alice", {"action": "suspend"}).status_code == 422
    assert recorded(dsn) == ([], [])


def test_503_and_nothing_recorded_when_kafka_is_unreachable(world, topic_prefix):
    dsn, keys = world
    with make_client(dsn, f"127.0.0.1:{free_port()}", topic_prefix,
                     timeout_ms=1000) as client:
        started = time.monotonic()
        r = post(client, keys["acme"], "alice", {"action": "suspend", "reason": "unpaid"})
        assert r.status_code == 503, r.text
        assert "nothing was recorded" in r.json()["detail"]
        assert time.monotonic() - started < 30
    assert recorded(dsn) == ([], [])


def test_another_tenants_subscriber_is_404_and_nothing_happens(api, world, broker,
                                                               actions_topic):
    client, keys = api
    dsn, _ = world
    r = post(client, keys["beta"], "carol", {"action": "suspend", "reason": "x"})
    assert r.status_code == 404 and r.json() == {"detail": "subscriber not found"}
    assert post(client, keys["acme"], "nobody",
                {"action": "suspend", "reason": "x"}).status_code == 404
    assert recorded(dsn) == ([], [])
    # the same username in both tenants: each key acts on its own tenant's subscriber
    r = post(client, keys["beta"], "alice", {"action": "suspend", "reason": "x"})
    assert r.status_code == 202 and r.json()["tenant_id"] == "beta"
    assert db_rows(dsn, "SELECT tenant_id, username FROM actions") == [("beta", "alice")]
    [msg] = consume(broker.bootstrap, actions_topic)
    assert msg.key() == b"beta/alice"


def test_customers_analysts_and_radius_keys_may_not_act(api, world):
    client, keys = api
    dsn, _ = world
    for who in ("carol", "acme_analyst", "acme_radius"):
        r = post(client, keys[who], "carol", {"action": "suspend", "reason": "x"})
        assert r.status_code == 403, (who, r.text)
    assert post(client, None, "carol", {"action": "suspend", "reason": "x"}).status_code == 401
    assert recorded(dsn) == ([], [])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "suspend"}, "Field required"),
        ({"action": "suspend", "reason": ""}, "at least 1 character"),
        ({"action": "suspend", "reason": "   "}, "reason must not be blank"),
        ({"action": "suspend", "reason": "x" * 501}, "at most 500 characters"),
        ({"action": "throttle", "reason": "x"}, "throttle needs a rate"),
        ({"action": "throttle", "reason": "x", "rate": "fast"}, "is not upload/download"),
        ({"action": "throttle", "reason": "x", "rate": "2M"}, "is not upload/download"),
        ({"action": "throttle", "reason": "x", "rate": "0M/2M"}, "a direction is zero"),
        ({"action": "throttle", "reason": "x", "rate": "1.5/1M"},
         "not a whole number of bit/s"),
        ({"action": "suspend", "reason": "x", "rate": "2M/2M"}, "suspend takes no rate"),
        ({"action": "notify", "reason": "x"}, "Input should be 'disconnect'"),
        ({"action": "suspend", "reason": "x", "force": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_action_bodies_are_422(api, world, body, message):
    client, keys = api
    r = post(client, keys["acme"], "alice", body)
    assert r.status_code == 422, r.text
    assert any(message in e["msg"] for e in r.json()["detail"]), r.json()
    assert recorded(world[0]) == ([], [])


# --- GET enforcement and actions -----------------------------------------------------


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# (tenant, intent, user, kind, rate, source, reason, threshold, cycle, by, at, state,
#  completed)
ACTIONS = [
    ("acme", "q1", "alice", "throttle", "1M/1M", "quota", "quota 100% reached", 100,
     "2024-03-01", None, "2024-03-10T08:00Z", "done", "2024-03-10T08:00:02Z"),
    ("acme", "o1", "alice", "suspend", None, "operator", "unpaid", None, None, "k1",
     "2024-03-12T09:00Z", "partial", "2024-03-12T09:00:09Z"),
    ("acme", "o2", "alice", "disconnect", None, "operator", "support", None, None, "k1",
     "2024-03-14T10:00Z", "pending", None),
    ("acme", "o3", "carol", "suspend", None, "operator", "unpaid", None, None, "k2",
     "2024-03-13T10:00Z", "no_sessions", "2024-03-13T10:00:01Z"),
    ("beta", "b1", "alice", "suspend", None, "operator", "beta's", None, None, "k9",
     "2024-03-14T11:00Z", "done", "2024-03-14T11:00:01Z"),
]
# (tenant, intent, nas, session, request, state, error_cause, attempts, created, answered)
ATTEMPTS = [
    ("acme", "q1", "bng-1", "S1", "coa", "ack", None, 1, "2024-03-10T08:00:01Z",
     "2024-03-10T08:00:02Z"),
    ("acme", "o1", "bng-1", "S1", "disconnect", "ack", None, 1, "2024-03-12T09:00:01Z",
     "2024-03-12T09:00:01Z"),
    ("acme", "o1", "bng-2", "S7", "disconnect", "nak", 503, 3, "2024-03-12T09:00:02Z",
     "2024-03-12T09:00:09Z"),
    ("acme", "o2", "bng-1", "S9", "disconnect", "sending", None, 1, "2024-03-14T10:00:01Z",
     None),
]


def seed_enforcement(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for (tenant, intent, user, kind, rate, source, reason, threshold, cycle, by, at,
             state, completed) in ACTIONS:
            conn.execute(
                "INSERT INTO actions (tenant_id, intent_id, username, kind, rate, source, "
                "reason, threshold_pct, cycle_start, requested_by, at, state, created_at, "
                "completed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s)",
                (tenant, intent, user, kind, rate, source, reason, threshold,
                 date.fromisoformat(cycle) if cycle else None, by, ts(at), state, ts(at),
                 ts(completed) if completed else None))
        for (tenant, intent, nas, sid, request, state, cause, attempts, created,
             answered) in ATTEMPTS:
            conn.execute(
                "INSERT INTO action_attempts (tenant_id, intent_id, nas_id, session_id, "
                "request, state, error_cause, attempts, event_timestamp, created_at, "
                "answered_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s)",
                (tenant, intent, nas, sid, request, state, cause, attempts, ts(created),
                 ts(answered) if answered else None))
        conn.execute(
            "INSERT INTO enforcement_state (tenant_id, username, state, rate, reason, "
            "source, intent_id, since, until) VALUES "
            "('acme', 'alice', 'suspended', NULL, 'unpaid', 'operator', 'o1', "
            " '2024-03-12T09:00:09Z', NULL), "
            "('acme', 'carol', 'throttled', '1M/1M', 'quota 100% reached', 'quota', 'q9', "
            " '2024-03-11T00:00Z', '2024-04-01T00:00Z'), "
            "('beta', 'alice', 'suspended', NULL, 'beta''s', 'operator', 'b1', "
            " '2024-03-14T11:00:01Z', NULL)")


def normalised(value):
    """Timestamps parsed, so equal instants compare equal whatever their rendering."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        return ts(value)
    return value


def action(intent, user, kind, rate, source, reason, threshold, cycle, by, at, state,
           completed, attempts):
    return {"intent_id": intent, "username": user, "kind": kind, "rate": rate,
            "source": source, "reason": reason, "threshold_pct": threshold,
            "cycle_start": cycle, "requested_by": by, "at": ts(at), "state": state,
            "created_at": ts(at), "completed_at": ts(completed) if completed else None,
            "attempts": attempts}


def attempt(nas, sid, request, state, cause, attempts, created, answered):
    return {"nas_id": nas, "session_id": sid, "request": request, "state": state,
            "error_cause": cause, "attempts": attempts, "created_at": ts(created),
            "answered_at": ts(answered) if answered else None}


O2 = action("o2", "alice", "disconnect", None, "operator", "support", None, None, "k1",
            "2024-03-14T10:00Z", "pending", None,
            [attempt("bng-1", "S9", "disconnect", "sending", None, 1,
                     "2024-03-14T10:00:01Z", None)])
O1 = action("o1", "alice", "suspend", None, "operator", "unpaid", None, None, "k1",
            "2024-03-12T09:00Z", "partial", "2024-03-12T09:00:09Z",
            [attempt("bng-1", "S1", "disconnect", "ack", None, 1, "2024-03-12T09:00:01Z",
                     "2024-03-12T09:00:01Z"),
             attempt("bng-2", "S7", "disconnect", "nak", 503, 3, "2024-03-12T09:00:02Z",
                     "2024-03-12T09:00:09Z")])
Q1 = action("q1", "alice", "throttle", "1M/1M", "quota", "quota 100% reached", 100,
            "2024-03-01", None, "2024-03-10T08:00Z", "done", "2024-03-10T08:00:02Z",
            [attempt("bng-1", "S1", "coa", "ack", None, 1, "2024-03-10T08:00:01Z",
                     "2024-03-10T08:00:02Z")])
O3 = action("o3", "carol", "suspend", None, "operator", "unpaid", None, None, "k2",
            "2024-03-13T10:00Z", "no_sessions", "2024-03-13T10:00:01Z", [])


@pytest.fixture
def seeded(api, world):
    seed_enforcement(world[0])
    return api


def test_enforcement_state_why_since_and_history(seeded):
    client, keys = seeded
    r = get(client, keys["acme"], "/v1/subscribers/alice/enforcement")
    assert r.status_code == 200, r.text
    assert normalised(r.json()) == {
        "username": "alice", "state": "suspended", "rate": None, "reason": "unpaid",
        "source": "operator", "intent_id": "o1", "since": ts("2024-03-12T09:00:09Z"),
        "until": None, "history": [O2, O1, Q1],
    }
    body = get(client, keys["acme"], "/v1/subscribers/alice/enforcement", limit=2).json()
    assert [a["intent_id"] for a in body["history"]] == ["o2", "o1"]
    carol = normalised(get(client, keys["acme_admin"],
                           "/v1/subscribers/carol/enforcement").json())
    assert {k: carol[k] for k in ("state", "rate", "source", "since", "until")} == {
        "state": "throttled", "rate": "1M/1M", "source": "quota",
        "since": ts("2024-03-11T00:00Z"), "until": ts("2024-04-01T00:00Z")}


def test_no_enforced_state_is_normal(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/carol/enforcement")
    assert r.status_code == 200
    assert r.json() == {"username": "carol", "state": "normal", "rate": None,
                        "reason": None, "source": None, "intent_id": None, "since": None,
                        "until": None, "history": []}


def test_enforcement_is_tenant_isolated_and_customers_see_only_their_own(seeded):
    client, keys = seeded
    beta = get(client, keys["beta"], "/v1/subscribers/alice/enforcement").json()
    assert (beta["reason"], [a["intent_id"] for a in beta["history"]]) == ("beta's", ["b1"])
    assert get(client, keys["beta"], "/v1/subscribers/carol/enforcement").status_code == 404
    assert get(client, keys["acme"], "/v1/subscribers/nobody/enforcement").status_code == 404
    own = get(client, keys["carol"], "/v1/subscribers/carol/enforcement")
    assert own.status_code == 200
    # which API key asked is not the customer's business
    assert normalised(own.json()["history"]) == [{**O3, "requested_by": None}]
    assert get(client, keys["carol"], "/v1/subscribers/alice/enforcement").status_code == 404
    for who in ("acme_analyst", "acme_radius"):
        assert get(client, keys[who],
                   "/v1/subscribers/carol/enforcement").status_code == 403


def test_actions_newest_first_with_keyset_pages(seeded):
    client, keys = seeded
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = get(client, keys["acme"], "/v1/actions", **params)
        assert r.status_code == 200, r.text
        seen += normalised(r.json()["items"])
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [O2, O3, O1, Q1] and pages == 2


def test_actions_filters(seeded):
    client, keys = seeded

    def ids(**params):
        r = get(client, keys["acme"], "/v1/actions", **params)
        assert r.status_code == 200, r.text
        return [a["intent_id"] for a in r.json()["items"]]

    assert ids(state="partial") == ["o1"]
    assert ids(state="failed") == []
    assert ids(since="2024-03-12T09:00:00Z") == ["o2", "o3", "o1"]
    assert ids(since="2024-03-13T00:00:00+01:00", state="no_sessions") == ["o3"]
    assert ids(state="done") == ["q1"]  # beta's done action is not acme's
    assert [a["intent_id"] for a in get(client, keys["beta"], "/v1/actions").json()[
        "items"]] == ["b1"]


def test_actions_list_is_for_operators_and_admins(seeded):
    client, keys = seeded
    assert get(client, keys["acme_admin"], "/v1/actions").status_code == 200
    for who in ("carol", "acme_analyst", "acme_radius"):
        assert get(client, keys[who], "/v1/actions").status_code == 403, who
    assert get(client, None, "/v1/actions").status_code == 401


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "weird"}, "Input should be 'pending'"),
        ({"since": "2024-03-10T00:00:00"}, "Input should have timezone info"),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 501}, "less than or equal to 500"),
        ({"cursor": "nope"}, "invalid cursor"),
    ],
)
def test_bad_action_list_params_are_422(seeded, params, message):
    client, keys = seeded
    r = get(client, keys["acme"], "/v1/actions", **params)
    assert r.status_code == 422, r.text
    assert any(message in e["msg"] for e in r.json()["detail"]), r.json()


def test_posted_action_appears_in_history_and_list(api):
    client, keys = api
    r = post(client, keys["acme"], "alice", {"action": "suspend", "reason": "unpaid"})
    assert r.status_code == 202
    history = get(client, keys["acme"], "/v1/subscribers/alice/enforcement").json()
    assert history["state"] == "normal"  # the enforcer has not applied it yet
    [item] = history["history"]
    assert (item["intent_id"], item["state"], item["attempts"]) == (
        r.json()["intent_id"], "pending", [])
    assert normalised(item["at"]) == NOW
    listed = get(client, keys["acme"], "/v1/actions", state="pending").json()["items"]
    assert [a["intent_id"] for a in listed] == [r.json()["intent_id"]]


def test_radius_keys_read_no_subscriber_data(api):
    client, keys = api
    for url in ("/v1/subscribers/alice/usage", "/v1/subscribers/alice/cycle",
                "/v1/sessions"):
        assert get(client, keys["acme_radius"], url).status_code == 403, url
