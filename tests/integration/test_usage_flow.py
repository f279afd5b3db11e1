"""The usage flow as a real process, fed directly through Kafka: inventory changes apply
without a restart, stale sessions close on event time, unknown subscribers are recorded,
and a restart with other shard counts is refused without touching the state."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Producer

from ispstream import topics
from ispstream.inventory import apply_file
from ispstream.kafka import producer_config
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration

INVENTORY = """
tenants:
  - id: acme
    timezone: UTC
    currency: EUR
    plans:
      - id: cheap
        monthly_fee: "10"
        quota_gb: 1
        after_quota: {overage_per_gb: "1.00"}
      - id: dear
        monthly_fee: "10"
        quota_gb: 1
        after_quota: {overage_per_gb: "2.00"}
    nas:
      - {ip: 127.0.0.1, name: bng-1, secret: "x"}
    subscribers:
      - {username: alice, plan: PLAN, cycle_anchor_day: 1}
"""


@pytest.fixture
def flow_env(pg_dsn, broker, topic_prefix, tmp_path) -> dict:
    """The inventory applied, the topics created; the flow's environment."""
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY.replace("PLAN", "cheap"))
    apply_file(pg_dsn, str(inv))
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    return {"ISPSTREAM_DATABASE_URL": pg_dsn, "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
            "ISPSTREAM_RECOVERY_DIR": str(tmp_path / "rec"),
            "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5", "ISPSTREAM_INVENTORY_REFRESH_S": "0.5"}


@pytest.fixture
def flow(flow_env, pg_dsn, broker, topic_prefix, tmp_path):
    proc = Proc("flow", ["flow", "usage"], flow_env, tmp_path)
    producer = Producer(producer_config(broker.bootstrap))

    def send(status, session, user, t, up=None, down=None, **extra):
        ev = {"v": 1, "tenant_id": "acme", "nas_id": "bng-1", "nas_ip": "127.0.0.1",
              "status": status, "session_id": session, "username": user,
              "received_at": t, "event_timestamp": t, **extra}
        if up is not None:
            ev.update(input_octets=up % 2**32, input_gigawords=up >> 32,
                      output_octets=down % 2**32, output_gigawords=down >> 32)
        producer.produce(topic_prefix + topics.RADIUS_ACCT, key=f"acme/bng-1/{session}",
                         value=json.dumps(ev))
        assert producer.flush(10) == 0

    yield send, tmp_path / "inv.yaml", pg_dsn, proc
    proc.stop()


def _one(dsn, sql, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()


def test_plan_change_applies_without_restart(flow):
    send, inv, dsn, _ = flow
    t0 = int(time.time()) - 3000
    send("Start", "s1", "alice", t0)
    send("Interim-Update", "s1", "alice", t0 + 300, up=0, down=2 * 10**9)
    wait_until(lambda: _one(dsn, "SELECT sum(charge) FROM usage_rated")[0] == Decimal("1.00"),
               30, "the first GB over quota charged at 1.00")
    inv.write_text(INVENTORY.replace("PLAN", "dear"))
    apply_file(dsn, str(inv))
    time.sleep(1.5)  # longer than the flow's inventory refresh interval
    send("Interim-Update", "s1", "alice", t0 + 600, up=0, down=3 * 10**9)
    wait_until(lambda: _one(dsn, "SELECT sum(charge) FROM usage_rated")[0] == Decimal("3.00"),
               30, "the next GB charged at the new plan's 2.00")
    assert _one(dsn, "SELECT plan_id FROM usage_rated ORDER BY ts DESC LIMIT 1") == ("dear",)


def test_stale_sessions_close_on_event_time_and_unknown_users_are_recorded(flow):
    send, _, dsn, _ = flow
    t0 = int(time.time()) - 5000
    send("Start", "quiet", "alice", t0, **{"interim_interval": 300})
    send("Interim-Update", "quiet", "alice", t0 + 300, up=10, down=20, interim_interval=300)
    # Records of different sessions sit on different partitions: make sure the quiet
    # session is known before event time moves on (the watermark is per NAS).
    wait_until(lambda: _one(dsn, "SELECT state FROM sessions WHERE session_id = 'quiet'"),
               30, "the quiet session")
    # Another session of the same NAS keeps talking; event time moves on past
    # 2.5 x 300 s after the quiet session's last record (plus one sweep period).
    for i in range(0, 25):
        send("Interim-Update", "busy", "mallory", t0 + 300 + i * 60, up=i, down=i)
    wait_until(lambda: _one(dsn, "SELECT state, close_reason FROM sessions "
                            "WHERE session_id = 'quiet'") == ("stale", "stale"),
               30, "the quiet session to be closed as stale")
    assert _one(dsn, "SELECT state FROM sessions WHERE session_id = 'busy'") == ("open",)
    # mallory is not in the inventory: usage is kept, unrated, and flagged.
    row = wait_until(lambda: _one(dsn, "SELECT sum(upload_bytes), bool_and(plan_id IS NULL), "
                                  "bool_and('unknown_subscriber' = ANY(flags)) FROM usage_rated "
                                  "WHERE username = 'mallory' HAVING sum(upload_bytes) = 24"),
                     30, "mallory's usage")
    assert row == (24, True, True)


def test_a_restart_with_other_shard_counts_is_refused_and_the_state_kept(flow, flow_env,
                                                                          tmp_path):
    send, _, dsn, running = flow
    t0 = int(time.time()) - 3000
    send("Start", "s1", "alice", t0)
    send("Interim-Update", "s1", "alice", t0 + 300, up=0, down=10**6)
    wait_until(lambda: _one(dsn, "SELECT count(*) FROM usage_rated")[0] == 1, 30,
               "the first rated row")
    time.sleep(1.5)  # a few epochs: the rating state is in the recovery store
    running.stop()
    other = Proc("flow-resharded", ["flow", "usage"],
                 {**flow_env, "ISPSTREAM_RATING_SHARDS": "8"}, tmp_path)
    wait_until(lambda: not other.alive(), 30, "the resharded flow to refuse to start")
    log = other.log()
    assert other.stop() != 0
    assert "ISPSTREAM_RATING_SHARDS" in log and "configured with" in log
    again = Proc("flow-again", ["flow", "usage"], flow_env, tmp_path)  # same counts: resumes
    try:
        send("Interim-Update", "s1", "alice", t0 + 600, up=0, down=3 * 10**6)
        wait_until(lambda: _one(dsn, "SELECT sum(download_bytes) FROM usage_rated")[0]
                   == 3 * 10**6, 30, "the resumed flow to rate only the new bytes")
    finally:
        again.stop()
