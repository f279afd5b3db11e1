"""Throughput and latency of the enforce flow against 10 NAS (FreeRADIUS, one listener per
address 127.0.0.1-10): a burst of throttles (exchanges/s), then a steady stream of them
(latency from the action's time to the NAS's answer being recorded).

Prints its measurements; the assertions are deliberately loose so a loaded test machine
does not fail them. Scale with ``ISPSTREAM_ENFORCE_BENCH_N`` (default 3000 actions per
phase) and ``ISPSTREAM_ENFORCE_BENCH_RATE`` (steady phase, actions/s, default 500).
"""

from __future__ import annotations

import os
import time

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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_idle() -> tuple[float, float]:
    """(idle, total) jiffies of the whole machine so far."""
    cpu = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return cpu[3] + cpu[4], sum(cpu)


def _backends_cpu_s(dsn: str) -> float:
    """CPU seconds of the flow's own PostgreSQL backends (same host) so far."""
    with psycopg.connect(dsn) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'ispstream' AND pid <> pg_backend_pid()")]
    total = 0.0
    for pid in pids:
        try:
            total += _cpu_s(pid)
        except OSError:
            pass
    return total


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def test_enforce_throughput_and_latency_with_ten_nas(pg_dsn, broker, topic_prefix, tmp_path,
                                                     coa_nas):
    n = int(os.environ.get("ISPSTREAM_ENFORCE_BENCH_N", "3000"))
    rate = float(os.environ.get("ISPSTREAM_ENFORCE_BENCH_RATE", "500"))
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    port = free_udp_port()
    users = [f"u{i:06d}" for i in range(2 * n)]
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
        "ISPSTREAM_KAFKA_CONFIG": os.environ.get("ISPSTREAM_ENFORCE_BENCH_KAFKA_CONFIG", "{}"),
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
        # the sessions are in the flow's state once a probe action reaches the last one
        probe = ActionEvent(intent_id="probe", tenant_id="acme", username=users[-1],
                            kind="notify", source="operator", reason="probe", at=time.time())
        time.sleep(3)
        producer.produce(topic_prefix + topics.ACTIONS, key=f"acme/{users[-1]}",
                         value=probe.model_dump_json())
        producer.flush(10)

        def count_final(prefix: str) -> int:
            with psycopg.connect(pg_dsn) as conn:
                return conn.execute("SELECT count(*) FROM action_attempts WHERE state <> "
                                    "'sending' AND intent_id LIKE %s", (prefix + "%",)
                                    ).fetchone()[0]

        wait_until(lambda: _count_actions(pg_dsn) >= 1, 120, "the flow to catch up")
        time.sleep(2)

        def throttle(prefix: str, u: str) -> None:
            a = ActionEvent(intent_id=f"{prefix}{u}", tenant_id="acme", username=u,
                            kind="throttle", rate="2M/2M", source="operator", reason="bench",
                            at=time.time())
            producer.produce(topic_prefix + topics.ACTIONS, key=f"acme/{u}",
                             value=a.model_dump_json())

        # 1. burst: exchanges per second
        cpu0 = _cpu_s(flow.popen.pid)
        nas_cpu0 = _cpu_s(nas.proc.pid)
        pg_cpu0 = _backends_cpu_s(pg_dsn)
        idle0 = _machine_idle()
        t0 = time.monotonic()
        for u in users[:n]:
            throttle("b-", u)
        producer.flush(30)
        wait_until(lambda: count_final("b-") >= n, 300, "the burst", every=0.05)
        burst_s = time.monotonic() - t0
        burst_cpu = _cpu_s(flow.popen.pid) - cpu0
        nas_cpu = _cpu_s(nas.proc.pid) - nas_cpu0
        pg_cpu = _backends_cpu_s(pg_dsn) - pg_cpu0
        idle1 = _machine_idle()
        busy = 1 - (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])

        # 2. steady: latency from the action's time to the answer being recorded
        t1 = time.monotonic()
        for i, u in enumerate(users[n:]):
            target = t1 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            throttle("s-", u)
            producer.poll(0)
        producer.flush(30)
        wait_until(lambda: count_final("s-") >= n, 300, "the steady phase", every=0.2)
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM x.answered_at - a.at), "
                "extract(epoch FROM x.created_at - a.at) FROM action_attempts x "
                "JOIN actions a USING (tenant_id, intent_id) WHERE x.intent_id LIKE 's-%'"
            ).fetchall()
            lat = [float(x) for x, _ in rows]
            to_intent = [float(y) for _, y in rows]
            states = dict(conn.execute("SELECT state, count(*) FROM action_attempts "
                                       "GROUP BY state").fetchall())
    finally:
        flow.stop()
    seen = len(nas.requests())
    print(f"\nenforce flow, {N_NAS} NAS: burst of {n} throttles in {burst_s:.2f}s = "
          f"{n / burst_s:.0f} exchanges/s ({burst_cpu / n * 1e6:.0f} µs of flow CPU each; "
          f"cores used: flow {burst_cpu / burst_s:.2f}, its PostgreSQL backends "
          f"{pg_cpu / burst_s:.2f}, FreeRADIUS {nas_cpu / burst_s:.2f}; machine {busy:.0%} "
          f"busy of {os.cpu_count()} cores); steady {rate:.0f}/s: action -> answer recorded "
          f"p50 {_pct(lat, 0.5) * 1000:.0f} ms, p99 {_pct(lat, 0.99) * 1000:.0f} ms, "
          f"max {max(lat) * 1000:.0f} ms (to the intent recorded: p50 "
          f"{_pct(to_intent, 0.5) * 1000:.0f} ms); NAS saw {seen} requests; attempts {states}")
    assert states == {"ack": 2 * n}
    assert seen == 2 * n  # no retransmission was needed, nothing sent twice
    assert n / burst_s > 200 and _pct(lat, 0.99) < 5.0


def _count_actions(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM actions WHERE intent_id = 'probe'"
                            ).fetchone()[0]


def test_coa_client_alone_against_ten_nas(coa_nas):
    """The CoA client without the flow: a burst to 10 FreeRADIUS NAS (exchanges/s, RTT)."""
    import asyncio

    from collectors.radius.coa import (
        AttributeEncoder,
        CoaClient,
        Target,
        event_timestamp_attribute,
    )

    n = int(os.environ.get("ISPSTREAM_ENFORCE_BENCH_N", "3000")) * 2
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
            t0 = time.perf_counter()
            res = await asyncio.gather(*(client.request(targets[k % N_NAS], "coa", attrs[k])
                                         for k in range(n)))
            return res, time.perf_counter() - t0, client.stats
        finally:
            client.close()

    res, secs, stats = asyncio.run(main())
    rtts = [r.rtt_s for r in res if r.rtt_s is not None]
    print(f"\nCoA client alone, {N_NAS} NAS: {n} exchanges in {secs:.2f}s = {n / secs:.0f}/s; "
          f"RTT p50 {_pct(rtts, 0.5) * 1000:.0f} ms, p99 {_pct(rtts, 0.99) * 1000:.0f} ms; "
          f"retransmits {stats.retransmits}")
    assert all(r.outcome == "ack" for r in res)
    assert len(nas.requests()) == n + stats.retransmits
