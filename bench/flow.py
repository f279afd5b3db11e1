"""Usage flow throughput: accounting events/s end to end on one worker.

Kafka in -> parse -> sessions -> rating -> rated rows committed in PostgreSQL (and
``usage.rated`` produced), measured from flow start until the last row is committed,
against a pass-through Bytewax flow (Kafka in -> json map -> Kafka out) over the same
input in the same run. Both read with ``tail=False`` and stop at the end of the topic.

    .venv/bin/python -m bench.flow [--sessions 2000 --interims 40 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
from bytewax._bytewax import cli_main
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
import bytewax.operators as op
from confluent_kafka import Producer

from bench._common import ADMIN_DSN, dsn_for, machine_info, write_result
from ispstream import topics
from ispstream.db import migrate
from ispstream.kafka import EmbeddedBroker, producer_config
from ispstream.settings import Settings
from pipelines.catalog import Catalog
from pipelines.runtime import run
from pipelines.usage import build_flow

PARTITIONS = 16


def make_db(subscribers: int) -> str:
    """A fresh database with the schema and one tenant, plan and ``subscribers``."""
    name = f"ispbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(name)
    migrate(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES "
                     "('bench', 'Europe/Berlin', 'EUR')")
        conn.execute("INSERT INTO plans (tenant_id, id, monthly_fee, quota_bytes, quota_counts,"
                     " overage_per_gb, off_peak) VALUES ('bench', 'p', 30, 50000000000, "
                     "'total', 1.5, '[{\"from\": \"00:00\", \"to\": \"06:00\", \"rate\": \"0\"}]')")
        with conn.cursor().copy("COPY subscribers (tenant_id, username, plan_id) FROM STDIN") as cp:
            for i in range(subscribers):
                cp.write_row(("bench", f"u{i}", "p"))
    return dsn


def drop_db(dsn: str) -> None:
    # FORCE cannot end an autovacuum worker that is busy in the database: retry
    for attempt in range(20):
        try:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == 19:
                raise
            time.sleep(0.5)


def load_events(sessions: int, interims: int, t0: int) -> Iterator[dict]:
    """The benchmark's ``radius.acct`` events from ``t0`` on: Start, ``interims``
    Interim-Updates with growing counters (incl. gigawords) and Stop for every session,
    sessions over 4 NAS, interleaved by time like a real NAS (step by step)."""
    for step in range(interims + 2):
        status = "Start" if step == 0 else ("Stop" if step == interims + 1 else "Interim-Update")
        for s in range(sessions):
            up, down = step * 1_000_003 * (s % 7 + 1), step * 25_000_017 * (s % 11 + 1)
            t = t0 + step * 300 + s % 300
            yield {"v": 1, "tenant_id": "bench", "nas_id": f"nas{s % 4}", "nas_ip": "127.0.0.1",
                   "status": status, "session_id": f"S{s}", "username": f"u{s}",
                   "received_at": t, "event_timestamp": t,
                   "input_octets": up % 2**32, "input_gigawords": up >> 32,
                   "output_octets": down % 2**32, "output_gigawords": down >> 32,
                   "framed_ip": f"10.{s >> 16 & 255}.{s >> 8 & 255}.{s & 255}"}


def produce_load(bootstrap: str, topic: str, sessions: int, interims: int) -> int:
    """``load_events`` ending now, produced to ``topic``; returns the count."""
    p = Producer(producer_config(bootstrap, **{"linger.ms": 20}))
    n = 0
    for ev in load_events(sessions, interims, int(time.time()) - (interims + 2) * 300):
        while True:
            try:
                p.produce(topic, key=f"bench/{ev['nas_id']}/{ev['session_id']}",
                          value=json.dumps(ev))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.1)
        n += 1
        if n % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0, "not every benchmark record was delivered"
    return n


def run_usage(settings: Settings, expected_rows: int) -> tuple[float, float]:
    """Run the usage flow to the end of the topic; return seconds until every row is
    committed, and until the first one was."""
    catalog = Catalog(settings.dsn(), settings.inventory_refresh_s)
    flow = build_flow(settings, catalog=catalog, tail=False)
    first_row: list[float] = []
    done = threading.Event()
    watcher = threading.Thread(target=_watch_first_row, args=(settings.dsn(), first_row, done),
                               daemon=True)
    start = time.perf_counter()
    watcher.start()
    run(flow, settings, settings.recovery_dir, workers=1)  # what `ispstream flow usage` runs
    elapsed = time.perf_counter() - start
    catalog.stop()
    done.set()
    watcher.join()
    with psycopg.connect(settings.dsn()) as conn:
        rows = conn.execute("SELECT count(DISTINCT record_id) FROM usage_rated").fetchone()[0]
    if rows != expected_rows:
        raise SystemExit(f"usage flow wrote {rows} rated records, expected {expected_rows}")
    return elapsed, (first_row[0] - start) if first_row else float("nan")


def _watch_first_row(dsn: str, out: list[float], done: threading.Event) -> None:
    """Record when the first rated row is committed (startup: catalog, Bytewax, consumers,
    the first epoch's writes), polling every 50 ms."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not done.is_set():
            if conn.execute("SELECT 1 FROM usage_rated LIMIT 1").fetchone():
                out.append(time.perf_counter())
                return
            time.sleep(0.05)


def _passthrough_map(msg):
    return KafkaSinkMessage(key=msg.key, value=json.dumps(json.loads(msg.value)).encode())


def run_passthrough(bootstrap: str, topic_in: str, topic_out: str) -> float:
    flow = Dataflow("passthrough")
    inp = kop.input("in", flow, brokers=[bootstrap], topics=[topic_in], tail=False)
    kop.output("out", op.map("json", inp.oks, _passthrough_map), brokers=[bootstrap],
               topic=topic_out)
    start = time.perf_counter()
    cli_main(flow, workers_per_process=1)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--interims", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    broker = EmbeddedBroker()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    for t in topics.ALL_TOPICS:
        broker.create_topic(prefix + t, PARTITIONS)
    broker.create_topic(prefix + "passthrough.out", PARTITIONS)
    n = produce_load(broker.bootstrap, prefix + topics.RADIUS_ACCT, args.sessions, args.interims)
    expected_rows = args.sessions * (args.interims + 1)
    print(f"flow bench: {n} accounting events ({args.sessions} sessions x "
          f"{args.interims + 2} records) on {PARTITIONS} partitions", flush=True)

    usage_s, first_s, pass_s = [], [], []
    for r in range(args.rounds):
        dsn = make_db(args.sessions)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                settings = Settings(database_url=dsn, kafka_bootstrap=broker.bootstrap,
                                    topic_prefix=prefix, recovery_dir=Path(tmp) / "rec")
                total_s, to_first_s = run_usage(settings, expected_rows)
                usage_s.append(total_s)
                first_s.append(to_first_s)
        finally:
            drop_db(dsn)
        pass_s.append(run_passthrough(broker.bootstrap, prefix + topics.RADIUS_ACCT,
                                      prefix + "passthrough.out"))
        print(f"  round {r + 1}: usage {n / usage_s[-1]:,.0f} ev/s (first row after "
              f"{first_s[-1]:.2f} s), pass-through {n / pass_s[-1]:,.0f} ev/s, ratio "
              f"{pass_s[-1] / usage_s[-1]:.2f}", flush=True)
    ratios = [p / u for u, p in zip(usage_s, pass_s)]
    result = {
        "events": n,
        "usage_events_per_s_median": round(n / statistics.median(usage_s)),
        "passthrough_events_per_s_median": round(n / statistics.median(pass_s)),
        "ratio_usage_to_passthrough_median": round(statistics.median(ratios), 3),
        # after startup: events over the time from the first committed row to the last
        "usage_events_per_s_after_first_row_median": round(statistics.median(
            n / (u - f) for u, f in zip(usage_s, first_s))),
        "first_row_seconds": [round(x, 3) for x in first_s],
        "rounds": args.rounds,
        "usage_seconds": [round(x, 3) for x in usage_s],
        "passthrough_seconds": [round(x, 3) for x in pass_s],
        "target_events_per_s": 30000,
        "machine": machine_info(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"result written to {write_result('flow', result)}")
    broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
