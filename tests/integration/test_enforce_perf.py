"""The enforce flow and the CoA client under a burst to 10 NAS (FreeRADIUS, one listener per
address 127.0.0.1-10): every attempt is ACKed and nothing is sent twice.

Correctness only, with a small N and no timing assertions: a loaded CI machine must not
fail on speed. Throughput and latency are measured by ``python -m bench.enforce``
(results in docs/PERFORMANCE.md). ``ISPSTREAM_ENFORCE_TEST_N`` sets the burst size
(default 200 actions).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import psycopg
import pytest
from confluent_kafka import Producer

from ispstream import topics
from ispstream.contracts import AcctEvent, ActionEvent
from ispstream.inventory import apply_file
from ispstream.kafka import producer_config
from tests.integration.nas_coa import coa_nas, free_udp_port  # noqa: F401
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-nas"
N_NAS = 10


def _n() -> int:
    return int(os.environ.get("ISPSTREAM_ENFORCE_TEST_N", "200"))


def _inventory(port: int, users: list[str]) -> str:
    nas = "\n".join(f"      - {{ip: 127.0.0.{i}, name: bng-{i}, secret: {SECRET}, "
                    f"vendor: mikrotik, coa_port: {port}}}" for i in range(1, N_NAS + 1))
    subs = "\n".join(f"      - {{username: {u}, plan: p}}" for u in users)
    return f"""
tenants:
  - id: acme
    timezone: UTC
    currency: EUR
    plans:
      - {{id: p, monthly_fee: "10"}}
    nas:
{nas}
    subscribers:
{subs}
"""


def _rows(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args or None).fetchall()


def test_burst_to_ten_nas_every_attempt_acked_once(pg_dsn, broker, topic_prefix, tmp_path,
                                                   coa_nas):
    n = _n()
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    port = free_udp_port()
    users = [f"u{i:06d}" for i in range(n)]
    inv = tmp_path / "inventory.yaml"
    inv.write_text(_inventory(port, users))
    apply_file(pg_dsn, str(inv))
    nas = coa_nas([(f"127.0.0.{i}", port, "ack") for i in range(1, N_NAS + 1)], secret=SECRET)
    env = {
        "ISPSTREAM_DATABASE_URL": pg_dsn,
        "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
        "ISPSTREAM_ENFORCE_RECOVERY_DIR": str(tmp_path / "recovery"),
        "ISPSTREAM_SNAPSHOT_INTERVAL_S": "2",
    }
    producer = Producer(producer_config(broker.bootstrap, None, **{"linger.ms": 5}))
    now = int(time.time())
    for i, u in enumerate(users):
        k = i % N_NAS + 1
        ev = AcctEvent(tenant_id="acme", nas_id=f"bng-{k}", nas_ip=f"127.0.0.{k}",
                       status="Start", session_id=f"s{i}", username=u, received_at=now,
                       event_timestamp=now)
        producer.produce(topic_prefix + topics.RADIUS_ACCT, key=ev.key(),
                         value=ev.model_dump_json())
    assert producer.flush(30) == 0
    flow = Proc("enforce", ["flow", "enforce"], env, tmp_path)
    try:
        # the sessions are in the flow's state once a probe action has been consumed
        # (accounting and actions are read in parallel: give the Starts a head start)
        time.sleep(3)
        probe = ActionEvent(intent_id="probe", tenant_id="acme", username=users[-1],
                            kind="notify", source="operator", reason="probe", at=time.time())
        producer.produce(topic_prefix + topics.ACTIONS, key=f"acme/{users[-1]}",
                         value=probe.model_dump_json())
        producer.flush(10)
        wait_until(lambda: _rows(pg_dsn, "SELECT 1 FROM actions WHERE intent_id = 'probe'"),
                   120, "the flow to catch up")
        time.sleep(2)

        for u in users:
            a = ActionEvent(intent_id=f"b-{u}", tenant_id="acme", username=u, kind="throttle",
                            rate="2M/2M", source="operator", reason="test", at=time.time())
            producer.produce(topic_prefix + topics.ACTIONS, key=f"acme/{u}",
                             value=a.model_dump_json())
        producer.flush(30)

        def final():
            return _rows(pg_dsn, "SELECT count(*) FROM action_attempts WHERE state <> "
                         "'sending'")[0][0]

        wait_until(lambda: final() >= n, 300, "every attempt answered", every=0.2)
        time.sleep(1)  # anything sent twice would have arrived by now
        states = dict(_rows(pg_dsn, "SELECT state, count(*) FROM action_attempts GROUP BY 1"))
        actions = dict(_rows(pg_dsn, "SELECT state, count(*) FROM actions WHERE intent_id "
                             "LIKE %s GROUP BY 1", "b-%"))
        assert flow.alive(), flow.log()[-3000:]
    finally:
        flow.stop()
    assert states == {"ack": n}
    assert actions == {"done": n}
    seen = nas.requests()
    # one request per session, each at the NAS that holds it, none retransmitted
    assert Counter(r.get("Acct-Session-Id") for r in seen) == {f"s{i}": 1 for i in range(n)}
    for r in seen:
        i = int(r.get("Acct-Session-Id")[1:])
        assert r.address == f"127.0.0.{i % N_NAS + 1}:{port}"
        assert (r.type, r.get("User-Name"), r.get("Mikrotik-Rate-Limit")) == (
            "CoA-Request", users[i], "2M/2M")


def test_coa_client_alone_against_ten_nas(coa_nas):
    """The CoA client without the flow: a burst to 10 FreeRADIUS NAS, every request
    ACKed, the NAS saw each exactly once (plus retransmissions, if any were needed)."""
    import asyncio

    from collectors.radius.coa import (
        AttributeEncoder,
        CoaClient,
        Target,
        event_timestamp_attribute,
    )

    n = _n() * 2
    port = free_udp_port()
    nas = coa_nas([(f"127.0.0.{i}", port, "ack") for i in range(1, N_NAS + 1)], secret=SECRET)
    enc = AttributeEncoder()
    targets = [Target(f"127.0.0.{i}", port, SECRET.encode()) for i in range(1, N_NAS + 1)]
    ts = event_timestamp_attribute(int(time.time()))
    attrs = [enc.encode_all([("NAS-IP-Address", targets[k % N_NAS].host),
                             ("User-Name", f"u{k}"), ("Acct-Session-Id", f"s{k}"),
                             ("Mikrotik-Rate-Limit", "2M/2M")]) + ts for k in range(n)]

    async def main():
        client = CoaClient(timeout_s=1.0, retries=2)
        try:
            res = await asyncio.gather(*(client.request(targets[k % N_NAS], "coa", attrs[k])
                                         for k in range(n)))
            return res, client.stats
        finally:
            client.close()

    res, stats = asyncio.run(main())
    assert all(r.outcome == "ack" for r in res)
    seen = wait_until(lambda: (r := nas.requests()) and len(r) >= n + stats.retransmits and r,
                      30, "every request logged by the NAS")
    assert len(seen) == n + stats.retransmits
    assert set(Counter(r.get("Acct-Session-Id") for r in seen)) == {f"s{k}" for k in range(n)}
