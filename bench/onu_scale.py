"""Scale: 1,000 OLTs x 128 ONUs at a 5-minute optical interval on this machine.

Two sides, measured separately:

A. **Fault flow + PostgreSQL (measured).** A fresh database with ``--olts`` OLT devices;
   ``ispstream flow faults`` reads ``onu.optical`` from the embedded broker (hosted here,
   ``--partitions`` partitions per topic, so retention is not hit: checked) and writes
   every ONU sample, the ONUs' current state, hourly rollups and alerts. This process
   produces ``OnuOpticalPoll`` records (``--onus`` ONUs each, stable per-ONU levels with
   a little noise, ~0.5 % of ONUs below the class B+ limit so alerts exist) OLT after
   OLT, each OLT every ``--interval`` seconds of *event time*. At ``--speedup 1`` that is
   the real rate (1,000 x 128 / 300 s = 427 samples/s, 3.33 polls/s); ``--speedup S``
   produces S times as fast with event time advancing S times as fast (compressed
   time: the same polls, the same per-OLT spacing of event time, S x the load). Before
   the timed part every OLT is polled once, untimed (``--no-prewarm`` to skip), so the
   timed polls meet known ONUs as in steady state; the flow's idle CPU is measured
   for ``--idle`` seconds after it. Measured
   over the ``--duration`` wall seconds of producing: the flow process's CPU (/proc, all
   threads), the CPU of the PostgreSQL backends connected to the bench database, the
   rows written (``pg_stat_user_tables``), the backlog (samples produced - samples
   stored) sampled every few seconds and at the end, and how long the flow takes to
   drain after the producer stops. CPU share at the real rate = measured share / S
   (assumes cost linear in load; ``--speedup 1`` measures it directly).
B. **Collector (per-poll measured, fleet extrapolated).** ``python -m collectors.onu.probe``
   polls OLT recordings served by snmpsim ``--probe-repeat`` times and reports its CPU
   per poll (walk + decode + JSON) per 128 ONUs; the fleet's share = that x ``--olts`` /
   ``--interval``. Not measured as a fleet.

    .venv/bin/python -m bench.onu_scale [--olts 1000 --onus 128 --speedup 4 --duration 120]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench._common import (ADMIN_DSN, ROOT, cpu_by_pid, cpu_delta, cpu_seconds,
                           dsn_for, free_udp_port, loadavg, machine_info, system_cpu,
                           wait_until, write_result)

log = logging.getLogger("bench.onu_scale")

TENANT = "bench"
PONS = 8
OLT_RECORDINGS = ROOT / "tests" / "data" / "snmprec" / "olts"
PROBE_TARGETS = (("axos_e7-2", "calix-axos"), ("zte-c320-derived", "zte-c300"),
                 ("huawei-ma5800-derived", "huawei-ma5800"))


def _ispstream_command(*args: str) -> list[str]:
    exe = ROOT / ".venv/bin/ispstream"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "ispstream.cli", *args]


def _backend_pids(dsn: str, db: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,))]


def _table_writes(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return {r[0]: int(r[1]) for r in conn.execute(
            "SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname IN "
            "('onu_optical_samples', 'onus', 'onu_optical_hourly', 'alerts', "
            "'alert_history')")}


def _samples_stored(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM onu_optical_samples").fetchone()[0]


# --- side A: the flow ---------------------------------------------------------------------

def run_flow(args, work: Path) -> dict:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from ispstream import topics
    from ispstream.db import migrate
    from ispstream.kafka import EmbeddedBroker, producer_config

    db = f"bench_onu_{uuid.uuid4().hex[:8]}"
    dsn = dsn_for(db, args.admin_dsn)
    broker = EmbeddedBroker()
    flow = producer = None
    logf = None
    try:
        with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db}"')
        migrate(dsn)
        olts = [f"olt-{i:04d}" for i in range(args.olts)]
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, 'UTC', 'EUR')",
                         (TENANT,))
            with conn.cursor().copy("COPY devices (tenant_id, id, kind, address, snmp_version, "
                                    "community, vendor_profile) FROM STDIN") as cp:
                for i, olt in enumerate(olts):
                    cp.write_row((TENANT, olt, "olt", f"10.{i // 65536}.{i // 256 % 256}."
                                  f"{i % 256}", "2c", "public", "huawei-ma5800"))
        prefix = f"b{uuid.uuid4().hex[:8]}."
        for t in topics.ALL_TOPICS:
            broker.create_topic(prefix + t, args.partitions)
        topic = prefix + topics.ONU_OPTICAL
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISPSTREAM_")}
        env.update({"ISPSTREAM_DATABASE_URL": dsn, "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
                    "ISPSTREAM_TOPIC_PREFIX": prefix,
                    "ISPSTREAM_FAULTS_RECOVERY_DIR": str(work / "recovery")})
        logf = open(work / "flow-faults.log", "ab")
        flow = subprocess.Popen(_ispstream_command("flow", "faults"), env=env, cwd=work,
                                stdout=logf, stderr=subprocess.STDOUT)

        def alive():
            if flow.poll() is not None:
                raise RuntimeError("flow faults exited:\n"
                                   + (work / "flow-faults.log").read_text()[-3000:])
            return True

        # per-ONU stable levels (seeded), a few below the -27 dBm limit
        rng = random.Random(args.seed)
        per_pon = -(-args.onus // PONS)
        onu_ids = [(f"gpon_0/1/{j // per_pon + 1}", str(j % per_pon + 1))
                   for j in range(args.onus)]
        levels = [[(-28.0 if rng.random() < args.low_share else rng.uniform(-24.0, -16.0))
                   for _ in range(args.onus)] for _ in olts]

        def body(i: int, at: float) -> bytes:
            return json.dumps({
                "v": 1, "tenant_id": TENANT, "olt_id": olts[i], "profile": "huawei-ma5800",
                "at": at,
                "onus": [{"pon": p, "onu_id": o, "serial": f"HWTC{i:04d}{j:04d}",
                          "online": True,
                          "onu_rx_dbm": round(levels[i][j] + rng.uniform(-0.2, 0.2), 2),
                          "onu_tx_dbm": 2.1, "olt_rx_dbm": round(levels[i][j] - 1.5, 2),
                          "temperature_c": 45.0, "voltage_v": 3.3, "bias_ma": 12.0}
                         for j, (p, o) in enumerate(onu_ids)]}).encode()

        polls_per_s = args.olts / args.interval * args.speedup
        total_polls = int(polls_per_s * args.duration)
        # event time: OLT i's k-th poll at t0 + k * interval + i * interval / olts; the whole
        # span ends before now (no sample from the future)
        span = total_polls / args.olts * args.interval
        t_event0 = float(int(time.time() - span - 600))
        producer = Producer(producer_config(broker.bootstrap,
                                            **{"queue.buffering.max.kbytes": 512 * 1024}))
        wait_until(alive, 1, "the flow")
        # warm-up, not timed: every OLT's previous poll (one interval earlier in event
        # time), so the timed polls find their ONUs known (steady state, not first sight);
        # --no-prewarm: only one poll, to see that the flow is up
        warm_polls = args.olts if args.prewarm else 1
        t_warm = time.monotonic()
        for i in range(warm_polls):
            producer.produce(topic, key=f"{TENANT}/{olts[i]}",
                             value=body(i, t_event0 - args.interval + i * args.interval
                                        / args.olts))
            producer.poll(0)
        producer.flush(60)
        wait_until(lambda: alive() and _samples_stored(dsn) >= warm_polls * args.onus, 600,
                   "the flow to store the warm-up polls", every=0.5)
        warm = _samples_stored(dsn)
        warm_s = time.monotonic() - t_warm
        # let the flow finish the warm-up (rollups, alerts) and PostgreSQL's table
        # statistics catch up (they are flushed about once a second): the write counters
        # must be still for 3 s; then the flow's idle CPU over --idle seconds
        last, still = None, time.monotonic()
        while time.monotonic() - still < 3 and time.monotonic() - t_warm < 600:
            now_w = _table_writes(dsn)
            if now_w != last:
                last, still = now_w, time.monotonic()
            time.sleep(0.5)
        i0, ti0 = cpu_seconds(flow.pid), time.monotonic()
        time.sleep(args.idle)
        idle_share = (cpu_seconds(flow.pid) - i0) / (time.monotonic() - ti0)

        pg0_pids = _backend_pids(args.admin_dsn, db)
        pg0 = cpu_by_pid(pg0_pids)
        f0 = cpu_seconds(flow.pid)
        me0 = cpu_seconds(os.getpid(), include_children=False)
        w0 = _table_writes(dsn)
        s0 = system_cpu()
        t0 = time.monotonic()
        backlog_trace = []
        produced = produced_bytes = 0
        next_check = t0 + args.check_every
        for k in range(total_polls):
            due = t0 + k / polls_per_s
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            i = k % args.olts
            at = t_event0 + (k // args.olts) * args.interval + i * args.interval / args.olts
            value = body(i, at)
            producer.produce(topic, key=f"{TENANT}/{olts[i]}", value=value)
            producer.poll(0)
            produced += 1
            produced_bytes += len(value)
            if time.monotonic() >= next_check:
                next_check += args.check_every
                stored = _table_writes(dsn).get("onu_optical_samples", 0) - w0.get(
                    "onu_optical_samples", 0)
                backlog_trace.append((round(time.monotonic() - t0, 1),
                                      produced * args.onus - stored))
        producer.flush(30)
        t1 = time.monotonic()
        f1 = cpu_seconds(flow.pid)
        me1 = cpu_seconds(os.getpid(), include_children=False)
        pg1_pids = _backend_pids(args.admin_dsn, db)
        pg1 = cpu_by_pid(sorted(set(pg0_pids) | set(pg1_pids)))
        s1 = system_cpu()
        w1 = _table_writes(dsn)
        stored_end = _samples_stored(dsn) - warm
        alive()
        # drain: how long until every produced sample is stored
        expected = produced * args.onus
        drained_at = None
        deadline = t1 + args.drain_timeout
        while time.monotonic() < deadline:
            if _samples_stored(dsn) - warm >= expected:
                drained_at = time.monotonic()
                break
            time.sleep(0.5)
        stored_final = _samples_stored(dsn) - warm
        f2 = cpu_seconds(flow.pid)
        pg2 = cpu_by_pid(sorted(set(pg0_pids) | set(_backend_pids(args.admin_dsn, db))))

        # the broker kept everything (retention): watermarks from 0, sum = produced + warm-up
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench"})
        lows = highs = 0
        for p in range(args.partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            lows += lo
            highs += hi
        c.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
            onus = conn.execute("SELECT count(*) FROM onus").fetchone()[0]
        wall = t1 - t0
        flow_cpu = f1 - f0
        pg_cpu = cpu_delta(pg0, pg1)
        writes = {k: w1.get(k, 0) - w0.get(k, 0) for k in w1}
        return {
            "olts": args.olts, "onus_per_olt": args.onus, "interval_s": args.interval,
            "speedup": args.speedup, "partitions": args.partitions,
            "target_polls_per_s": round(polls_per_s, 3),
            "target_samples_per_s": round(polls_per_s * args.onus, 1),
            "produce_wall_s": round(wall, 2), "polls_produced": produced,
            "samples_produced": produced * args.onus,
            "achieved_samples_per_s": round(produced * args.onus / wall, 1),
            "mean_poll_bytes": round(produced_bytes / produced),
            "event_time_span_s": round(span, 1),
            "flow_cpu_s": round(flow_cpu, 2),
            "flow_cpu_share_of_one_core": round(flow_cpu / wall, 4),
            "flow_cpu_share_at_real_rate": round(flow_cpu / wall / args.speedup, 4),
            "flow_cpu_ms_per_poll": round(flow_cpu / produced * 1000, 2),
            "pg_backends": len(pg1),
            "pg_cpu_s": round(pg_cpu, 2),
            "pg_cpu_share_of_one_core": round(pg_cpu / wall, 4),
            "pg_cpu_share_at_real_rate": round(pg_cpu / wall / args.speedup, 4),
            "bench_process_cpu_s": round(me1 - me0, 2),
            "machine_busy_cpu_s": round(s1[0] - s0[0], 2),
            "machine_cores_busy": round((s1[0] - s0[0]) / wall, 2),
            "rows_written": writes,
            "sample_rows_per_s": round(writes.get("onu_optical_samples", 0) / wall, 1),
            "all_rows_per_s": round(sum(writes.values()) / wall, 1),
            "backlog_trace_samples": backlog_trace,
            "backlog_at_end_samples": expected - stored_end,
            "backlog_at_end_s_of_load": round((expected - stored_end)
                                              / (polls_per_s * args.onus), 2),
            "drain_s": round(drained_at - t1, 2) if drained_at else None,
            "stored_final": stored_final, "all_stored": stored_final >= expected,
            "flow_cpu_s_incl_drain": round(f2 - f0, 2),
            "pg_cpu_s_incl_drain": round(cpu_delta(pg0, pg2), 2),
            "broker_low_watermarks_sum": lows, "broker_records": highs,
            "broker_kept_everything": lows == 0 and highs == produced + warm_polls,
            "warmup_polls": warm_polls, "warmup_s": round(warm_s, 1),
            "flow_idle_cpu_share": round(idle_share, 4),
            "alerts": alerts, "onus_rows": onus, "loadavg": loadavg(),
        }
    finally:
        if flow is not None and flow.poll() is None:
            flow.send_signal(signal.SIGTERM)
            try:
                flow.wait(30)
            except subprocess.TimeoutExpired:
                flow.kill()
                flow.wait(10)
        if logf:
            logf.close()
        del producer
        broker.close()
        try:
            with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        except psycopg.Error as exc:
            log.warning("could not drop %s: %s", db, exc)


# --- side B: the collector, per poll --------------------------------------------------------

def run_probe(args, work: Path) -> dict:
    binary = shutil.which("snmpsim-command-responder") or str(
        Path(sys.executable).with_name("snmpsim-command-responder"))
    data, cache = work / "olts", work / "snmpsim-cache"
    data.mkdir()
    cache.mkdir()
    for name, _ in PROBE_TARGETS:
        shutil.copyfile(OLT_RECORDINGS / f"{name}.snmprec", data / f"{name}.snmprec")
    port = free_udp_port()
    logf = open(work / "snmpsim.log", "ab")
    sim = subprocess.Popen([binary, f"--data-dir={data}", f"--cache-dir={cache}",
                            f"--agent-udpv4-endpoint=127.0.0.1:{port}"],
                           env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}, stdout=logf,
                           stderr=subprocess.STDOUT, cwd=work)
    out = {}
    try:
        for name, profile in PROBE_TARGETS:
            cmd = [sys.executable, "-m", "collectors.onu.probe", f"127.0.0.1:{port}",
                   "--community", name, "--profile", profile, "--repeat",
                   str(args.probe_repeat), "--quiet", "--timeout", "10", "--retries", "3"]
            deadline = time.monotonic() + 120
            while True:
                rv = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
                if rv.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(1)  # snmpsim still indexing its files
            m = re.search(r"CPU per poll \(median of (\d+)\): ([\d.]+) ms(?: = ([\d.]+) ms per "
                          r"128 ONUs)?; wall (\d+) ms", rv.stderr)
            n = re.search(r": (\d+) ONUs \((\d+) online\), (\d+) requests/poll", rv.stderr)
            if rv.returncode != 0 or not m:
                out[name] = {"error": rv.stderr[-500:]}
                continue
            per128 = float(m.group(3)) if m.group(3) else None
            out[name] = {"profile": profile, "onus": int(n.group(1)) if n else None,
                         "requests_per_poll": int(n.group(3)) if n else None,
                         "polls": int(m.group(1)), "cpu_ms_per_poll": float(m.group(2)),
                         "cpu_ms_per_128_onus": per128, "wall_ms_per_poll": int(m.group(4))}
            if per128:
                out[name]["fleet_cpu_share_extrapolated"] = round(
                    per128 / 1000 * args.olts * (args.onus / 128) / args.interval, 4)
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(20)
        except subprocess.TimeoutExpired:
            sim.kill()
        logf.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.onu_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--olts", type=int, default=1000)
    ap.add_argument("--onus", type=int, default=128)
    ap.add_argument("--interval", type=float, default=300.0, help="optical interval, s")
    ap.add_argument("--speedup", type=float, default=4.0,
                    help="compressed time: produce S x the real rate (1 = real rate)")
    ap.add_argument("--duration", type=float, default=120.0, help="wall seconds of producing")
    ap.add_argument("--partitions", type=int, default=32)
    ap.add_argument("--low-share", type=float, default=0.005,
                    help="share of ONUs below the Rx limit")
    ap.add_argument("--check-every", type=float, default=5.0)
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds of the flow's idle CPU measured before the timed part")
    ap.add_argument("--prewarm", action=argparse.BooleanOptionalAction, default=True,
                    help="one untimed poll of every OLT first (steady state)")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--probe-repeat", type=int, default=20)
    ap.add_argument("--sides", default="flow,collector")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--admin-dsn", default=ADMIN_DSN)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sides = args.sides.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-onu-"))
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    result = {"benchmark": "onu-scale",
              "command": "python -m bench.onu_scale " + " ".join(argv or []),
              "params": vars(args), "machine": machine_info()}
    try:
        if "flow" in sides:
            result["flow"] = run_flow(args, work)
            log.info("flow: %s", json.dumps({k: v for k, v in result["flow"].items()
                                             if k != "backlog_trace_samples"}))
        if "collector" in sides:
            result["collector"] = run_probe(args, work)
            log.info("collector: %s", json.dumps(result["collector"]))
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["duration_s"] = round(time.monotonic() - t_start, 1)
    f = result.get("flow")
    if f:
        result["summary"] = {
            "kept_up": f["all_stored"] and f["broker_kept_everything"]
            and f["backlog_at_end_s_of_load"] <= 10,
            "flow_cpu_share_at_real_rate": f["flow_cpu_share_at_real_rate"],
            "pg_cpu_share_at_real_rate": f["pg_cpu_share_at_real_rate"],
            "backlog_at_end_s_of_load": f["backlog_at_end_s_of_load"],
            "drain_s": f["drain_s"], "sample_rows_per_s": f["sample_rows_per_s"],
        }
    path = None if args.no_write else write_result("onu_scale", result)
    print(json.dumps({k: result.get(k) for k in ("summary", "flow", "collector")}, indent=2))
    if path:
        print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
