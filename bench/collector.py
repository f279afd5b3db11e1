"""Collector ingest benchmark: acknowledged accounting packets/s under radclient load.

The same load (Start / Interim-Update / Stop over N sessions, see ``bench.radload``) is
sent by the same radclient invocation to each target, interleaved round by round:

- ``ispstream``: ``ispstream collect radius`` producing to an embedded Kafka-protocol
  broker hosted by this process (a fresh topic and collector per round);
- ``freeradius-sql``: FreeRADIUS 3.2 with the stock ``sql`` module and the package's
  PostgreSQL ``radacct`` queries (``radacct`` truncated before each round);
- ``freeradius-detail``: FreeRADIUS 3.2 writing only its ``detail`` file;
- ``freeradius-null`` (optional): FreeRADIUS answering without recording anything, i.e.
  the load generator's ceiling on this machine.

acked/s = packets radclient saw answered / wall time of all radclient runs. After every
ispstream round the topic is read back from the beginning and every acknowledged packet
must be there. Results: a JSON file in bench/results/ and a summary on stdout.

    .venv/bin/python -m bench.collector [--sessions 10000] [--rounds 3] [--targets ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

from bench import radload
from bench._common import (ADMIN_DSN, ROOT, cpu_by_pid, cpu_delta, cpu_seconds, dsn_for,
                           free_port, free_udp_port, loadavg, machine_info, median,
                           system_cpu, udp_counters, wait_until, write_result)

log = logging.getLogger("bench.collector")

ALL_TARGETS = ("ispstream", "freeradius-sql", "freeradius-detail", "freeradius-null")
DEFAULT_TARGETS = ("ispstream", "freeradius-sql", "freeradius-detail")
SECRET = "bench-secret-7f3a"
TENANT = "bench"
NAS_ID = "bench-nas"

# The embedded broker keeps ~5 MiB per partition and silently drops older data: give
# each round's topic enough partitions to hold the whole load with a wide margin.
RECORD_BYTES_ESTIMATE = 700
PARTITION_BUDGET_BYTES = 2 * 1024 * 1024

TARGET_VS_SQL = 2.0
TARGET_VS_DETAIL = 0.7


# --- ispstream target -----------------------------------------------------------------

class EmbeddedKafka:
    """The embedded broker, hosted in this process for the whole benchmark."""

    def __init__(self) -> None:
        from ispstream.kafka import EmbeddedBroker

        self.broker = EmbeddedBroker()
        self.bootstrap = self.broker.bootstrap

    def create_topic(self, name: str, partitions: int) -> None:
        self.broker.create_topic(name, partitions)

    def close(self) -> None:
        self.broker.close()


def _collector_command() -> list[str]:
    exe = ROOT / ".venv/bin/ispstream"
    if exe.exists():
        return [str(exe), "collect", "radius"]
    return [sys.executable, "-m", "ispstream.cli", "collect", "radius"]


def _parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class IspstreamTarget:
    """A fresh ``ispstream collect radius`` per round, on its own topic."""

    name = "ispstream"

    def __init__(self, workdir: Path, kafka: EmbeddedKafka, partitions: int,
                 admin_dsn: str) -> None:
        self.workdir = workdir
        self.kafka = kafka
        self.partitions = partitions
        self.admin_dsn = admin_dsn
        self.db_name = f"bench_isp_{uuid.uuid4().hex[:10]}"
        self.db_dsn = dsn_for(self.db_name, admin_dsn)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
        self.topic = ""
        self.log_path: Path | None = None
        self._log = None
        self._round = 0

    def setup(self) -> None:
        from ispstream.db import migrate

        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        migrate(self.db_dsn)
        with psycopg.connect(self.db_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, 'UTC', 'EUR')",
                         (TENANT,))
            conn.execute("INSERT INTO nas (tenant_id, id, ip, secret) VALUES (%s, %s, %s, %s)",
                         (TENANT, NAS_ID, "127.0.0.1", SECRET))

    def start(self) -> None:
        """Start a collector on a new topic and wait until it answers a probe."""
        self._round += 1
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        from ispstream import topics

        self.topic = f"{prefix}{topics.RADIUS_ACCT}"
        for t in topics.ALL_TOPICS:
            self.kafka.create_topic(f"{prefix}{t}", self.partitions)
        self.port = free_udp_port()
        self.metrics_port = free_port()
        spool = self.workdir / f"spool-{self._round}"
        env = {
            **os.environ,
            "ISPSTREAM_DATABASE_URL": self.db_dsn,
            "ISPSTREAM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{self.port}",
            "ISPSTREAM_SPOOL_DIR": str(spool),
            "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "ISPSTREAM_TOPIC_PREFIX": prefix,
        }
        self.log_path = self.workdir / f"collector-{self._round}.log"
        self._log = open(self.log_path, "ab")
        # cwd: the work dir, so a developer's .env in the checkout does not leak in
        self.proc = subprocess.Popen(_collector_command(), env=env, cwd=self.workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._alive_or_raise() and self.metrics(), 60,
                   "the collector's /metrics", every=0.2)
        wait_until(lambda: radload.probe("127.0.0.1", self.port, SECRET,
                                         session_id=f"bench-probe-{self._round}", timeout=1),
                   30, "the collector to answer a probe packet", every=0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _alive_or_raise(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the collector exited:\n{self.log_text()[-4000:]}")
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=2) as r:
            return _parse_metrics(r.read().decode())

    def log_text(self) -> str:
        if self._log:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def settle(self, timeout: float = 60) -> dict[str, float]:
        """Wait until nothing is in flight and the spool is empty; return the metrics."""
        def settled():
            m = self.metrics()
            if (m.get("ispstream_radius_inflight", 0) == 0
                    and m.get("ispstream_radius_spool_depth", 0) == 0):
                return m
            return None
        try:
            return wait_until(settled, timeout, "the collector to settle", every=0.2)
        except RuntimeError:
            return self.metrics()

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(40)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            rc = self.proc.returncode
            self.proc = None
        if self._log:
            self._log.close()
            self._log = None
        return rc

    def teardown(self) -> None:
        self.stop()
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except psycopg.Error as exc:
            log.warning("could not drop %s: %s", self.db_name, exc)


def read_topic(bootstrap: str, topic: str, timeout: float = 120) -> dict:
    """Every record of ``topic`` from the beginning of every partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": False})
    try:
        md = consumer.list_topics(topic, timeout=10)
        partitions = sorted(md.topics[topic].partitions)
        low, high = {}, {}
        for p in partitions:
            low[p], high[p] = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                             timeout=10)
        consumer.assign([TopicPartition(topic, p, low[p]) for p in partitions])
        values: list[bytes] = []
        remaining = {p for p in partitions if high[p] > low[p]}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(10000, timeout=1.0):
                if msg.error():
                    continue
                values.append(msg.value())
                if msg.offset() + 1 >= high[msg.partition()]:
                    remaining.discard(msg.partition())
        return {"values": values, "partitions": len(partitions),
                "low_watermarks_nonzero": sum(1 for p in partitions if low[p] > 0),
                "high_watermark_total": sum(high.values()),
                "complete": not remaining}
    finally:
        consumer.close()


def verify_kafka(load: radload.Load, sent: radload.SendResult, metrics_before: dict,
                 metrics_after: dict, topic_read: dict, probe_prefix: str) -> dict:
    """Every acknowledged packet in Kafka: counts against radclient and the collector."""
    def m(d: dict, result: str) -> int:
        return int(d.get(f'ispstream_radius_packets_total{{result="{result}"}}', 0))

    acked = m(metrics_after, "acked") - m(metrics_before, "acked")
    spooled = m(metrics_after, "spooled") - m(metrics_before, "spooled")
    duplicate = m(metrics_after, "duplicate") - m(metrics_before, "duplicate")
    other = {}
    for name, value in metrics_after.items():
        mm = re.match(r'ispstream_radius_packets_total\{result="([a-z_]+)"\}', name)
        if mm and mm.group(1) not in ("acked", "spooled", "duplicate"):
            delta = int(value) - int(metrics_before.get(name, 0))
            if delta:
                other[mm.group(1)] = delta

    found: dict[tuple, int] = {}
    probes = undecodable = 0
    nbytes = sum(len(v) for v in topic_read["values"])
    for raw in topic_read["values"]:
        try:
            ev = json.loads(raw)
        except ValueError:
            undecodable += 1
            continue
        sid = ev.get("session_id") or ""
        if sid.startswith(probe_prefix):
            probes += 1
            continue
        k = (sid, ev.get("status"), ev.get("event_timestamp"))
        found[k] = found.get(k, 0) + 1
    expected = load.keys()
    missing = expected - found.keys()
    unexpected = found.keys() - expected
    records = sum(found.values())
    checks = {
        # the broker did not drop anything (retention) and we read to the end
        "topic_read_complete": topic_read["complete"]
        and topic_read["low_watermarks_nonzero"] == 0,
        # everything the collector acknowledged (to Kafka or spool) is in the topic
        "records_ge_collector_acked": len(found) >= acked + spooled,
        # everything radclient saw answered is in the topic
        "records_ge_radclient_answered": len(found) >= sent.answered,
        # the collector's count of answered packets matches radclient's exactly, unless
        # retransmits were involved (then a packet may be answered from the duplicate
        # cache, or answered twice)
        "collector_acked_eq_radclient_answered": (acked + spooled == sent.answered)
        if not (duplicate or sent.lost) else None,
        # a packet missing from the topic must be one radclient saw unanswered; when
        # radclient lost nothing, every single packet of the load is in the topic
        "missing_le_radclient_lost": len(missing) <= sent.lost,
        "every_packet_present": (not missing) if sent.lost == 0 else None,
        "no_unexpected_records": not unexpected and undecodable == 0,
    }
    ok = all(v for v in checks.values() if v is not None)
    return {
        "ok": ok,
        "checks": checks,
        "collector_acked": acked,
        "collector_spooled": spooled,
        "collector_duplicate": duplicate,
        "collector_not_answered": other,
        "kafka_records": records,
        "kafka_distinct_packets": len(found),
        "kafka_duplicate_records": records - len(found),
        "kafka_probe_records": probes,
        "kafka_value_bytes_mean": round(nbytes / len(topic_read["values"]))
        if topic_read["values"] else None,
        "missing_packets": len(missing),
        "missing_sample": sorted(missing)[:5],
        "unexpected_records": len(unexpected) + undecodable,
        "kafka_delivery_failures": int(metrics_after.get(
            "ispstream_radius_kafka_delivery_failures_total", 0)),
        "spool_depth_after": int(metrics_after.get("ispstream_radius_spool_depth", 0)),
        "inflight_after": int(metrics_after.get("ispstream_radius_inflight", 0)),
    }


def _log_findings(text: str) -> dict:
    lines = [ln for ln in text.splitlines()
             if re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", ln)]
    return {"warnings_or_errors": len(lines), "sample": lines[:8]}


# --- the run ----------------------------------------------------------------------------

class Measure:
    """CPU, UDP counters and wall time around one timed load.

    ``server_cpu_s``: the server process and its descendants (all threads);
    ``db_cpu_s``: the PostgreSQL backends connected to the target's database (FreeRADIUS's
    connection pool; the collector's inventory refresh); ``bench_process_cpu_s``: this
    process, i.e. mostly the embedded broker's threads; ``radclient_cpu_s``: the load
    generator; ``other_cpu_s``: everything else the machine did meanwhile (noise).
    """

    def __init__(self, server_pid: int, admin_dsn: str, db_name: str | None) -> None:
        self.pid = server_pid
        self.admin_dsn = admin_dsn
        self.db_name = db_name

    def _db_backends(self) -> dict[int, float]:
        if not self.db_name:
            return {}
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                pids = [r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db_name,))]
        except psycopg.Error:
            return {}
        return cpu_by_pid(pids)

    def __enter__(self) -> "Measure":
        self.db0 = self._db_backends()
        self.load0 = loadavg()
        self.udp0 = udp_counters()
        self.ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self0 = cpu_seconds(os.getpid(), include_children=False)
        self.cpu0 = cpu_seconds(self.pid)
        self.sys0 = system_cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.sys1 = system_cpu()
        self.cpu1 = cpu_seconds(self.pid)
        self.self1 = cpu_seconds(os.getpid(), include_children=False)
        self.ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.udp1 = udp_counters()
        self.load1 = loadavg()
        self.db1 = self._db_backends()

    def result(self) -> dict:
        busy = self.sys1[0] - self.sys0[0]
        total = self.sys1[1] - self.sys0[1]
        server = self.cpu1 - self.cpu0
        db = cpu_delta(self.db0, self.db1)
        bench = self.self1 - self.self0
        radclient = ((self.ru1.ru_utime + self.ru1.ru_stime)
                     - (self.ru0.ru_utime + self.ru0.ru_stime))
        return {
            "server_cpu_s": round(server, 3),
            "db_cpu_s": round(db, 3),
            "bench_process_cpu_s": round(bench, 3),
            "radclient_cpu_s": round(radclient, 3),
            "other_cpu_s": round(max(0.0, busy - server - db - bench - radclient), 3),
            "other_cores": round(max(0.0, busy - server - db - bench - radclient)
                                 / (total / (os.cpu_count() or 1)), 2) if total else None,
            "machine_busy_fraction": round(busy / total, 3) if total else None,
            "loadavg_1m": [self.load0, self.load1],
            "udp_rcvbuf_errors": self.udp1.get("RcvbufErrors", 0)
            - self.udp0.get("RcvbufErrors", 0),
            "udp_in_errors": self.udp1.get("InErrors", 0) - self.udp0.get("InErrors", 0),
        }


def run_one(target: str, rnd: int, load: radload.Load, peers: dict, isp: IspstreamTarget | None,
            lanes: int, admin_dsn: str) -> dict:
    row: dict = {"round": rnd, "target": target}
    if target == "ispstream":
        assert isp is not None
        isp.start()
        pid, port, db = isp.pid, isp.port, isp.db_name
        alive = isp.alive
        before = isp.metrics()
    else:
        peer = peers[target]
        if not peer.alive():
            log.warning("%s is not running any more (killed by something else on the "
                        "machine?): restarting it", target)
            peer.restart()
        peer.reset()
        pid, port, db = peer.pid, peer.port, peer.db_name
        alive = peer.alive
    with Measure(pid, admin_dsn, db) as meas:
        sent = radload.send(load, "127.0.0.1", port, SECRET, lanes=lanes, server_alive=alive)
    row.update({
        "sent": sent.sent, "answered": sent.answered, "lost": sent.lost,
        "rejected": sent.rejected, "wall_s": round(sent.wall_s, 3),
        "acked_per_s": round(sent.acked_per_s, 1), "radclient_failed_runs": sent.failed_runs,
        "radclient_timed_out_runs": sent.timed_out_runs, "radclient_stderr": sent.stderr,
        "valid": True,
    })
    if sent.aborted:
        row["valid"] = False
        row["invalid_reason"] = f"sending aborted: {sent.aborted}"
    row.update(meas.result())
    row["server_cpu_us_per_packet"] = (round(row["server_cpu_s"] / sent.answered * 1e6, 1)
                                       if sent.answered else None)
    if target == "ispstream":
        if isp.alive():
            after = isp.settle()
            topic = read_topic(isp.kafka.bootstrap, isp.topic)
            row["verification"] = verify_kafka(load, sent, before, after, topic,
                                               "bench-probe")
        else:
            # a crash of the collector is a finding, not noise: the run counts and fails
            row["verification"] = {"ok": False, "checks": {},
                                   "error": "the collector exited during the run",
                                   "collector_acked": 0, "collector_spooled": 0,
                                   "kafka_distinct_packets": 0, "missing_packets": None}
        rc = isp.stop()
        row["collector_exit_code"] = rc
        row["collector_log"] = _log_findings(isp.log_text())
    else:
        peer = peers[target]
        if not peer.alive():
            # not a measurement of FreeRADIUS: something else stopped it mid-run
            row.pop("invalid_reason", None)
            row["valid"] = False
            row["invalid_reason"] = (f"FreeRADIUS exited during the run (exit code "
                                     f"{peer.proc.returncode}): killed by something else?")
        else:
            row["stored"] = peer.stored()
    return row


def summarize(rows: list[dict], targets: list[str]) -> dict:
    """Medians over the valid runs; ratios only between runs of the same round."""
    rows = [r for r in rows if r.get("valid", True)]
    by_target: dict[str, dict] = {}
    for t in targets:
        rs = [r for r in rows if r["target"] == t]
        rates = [r["acked_per_s"] for r in rs]
        by_target[t] = {
            "rounds": len(rs),
            "acked_per_s_median": median(rates),
            "acked_per_s_min": min(rates) if rates else None,
            "acked_per_s_max": max(rates) if rates else None,
            "server_cpu_s_median": median([r["server_cpu_s"] for r in rs]),
            "server_cpu_us_per_packet_median": median(
                [r["server_cpu_us_per_packet"] for r in rs]),
            "db_cpu_s_median": median([r["db_cpu_s"] for r in rs]),
            "bench_process_cpu_s_median": median([r["bench_process_cpu_s"] for r in rs]),
            "radclient_cpu_s_median": median([r["radclient_cpu_s"] for r in rs]),
            "other_cpu_s_median": median([r["other_cpu_s"] for r in rs]),
            "other_cores_median": median([r["other_cores"] for r in rs]),
            "lost_total": sum(r["lost"] for r in rs),
            "udp_rcvbuf_errors_total": sum(r["udp_rcvbuf_errors"] for r in rs),
        }
    ratios: dict[str, dict] = {}
    rounds = sorted({r["round"] for r in rows})
    for peer, name in (("freeradius-sql", "ispstream_vs_freeradius_sql"),
                       ("freeradius-detail", "ispstream_vs_freeradius_detail"),
                       ("freeradius-null", "ispstream_vs_freeradius_null")):
        if "ispstream" not in targets or peer not in targets:
            continue
        per_round = []
        for rnd in rounds:
            a = [r for r in rows if r["round"] == rnd and r["target"] == "ispstream"]
            b = [r for r in rows if r["round"] == rnd and r["target"] == peer]
            if a and b and b[0]["acked_per_s"]:
                per_round.append(round(a[0]["acked_per_s"] / b[0]["acked_per_s"], 3))
        ratios[name] = {"per_round": per_round, "median": median(per_round)}
    verdict = {}
    if "ispstream" in targets:
        ver = [r["verification"]["ok"] for r in rows if r["target"] == "ispstream"]
        verdict["every_acked_packet_in_kafka"] = bool(ver) and all(ver)
        if "ispstream_vs_freeradius_sql" in ratios:
            med = ratios["ispstream_vs_freeradius_sql"]["median"]
            verdict[f"vs_freeradius_sql_ge_{TARGET_VS_SQL}"] = (
                med is not None and med >= TARGET_VS_SQL)
        if "ispstream_vs_freeradius_detail" in ratios:
            med = ratios["ispstream_vs_freeradius_detail"]["median"]
            verdict[f"vs_freeradius_detail_ge_{TARGET_VS_DETAIL}"] = (
                med is not None and med >= TARGET_VS_DETAIL)
        verdict["target_met"] = all(verdict.values())
    return {"targets": by_target, "ratios": ratios, "verdict": verdict}


def print_summary(result: dict, path: Path | None) -> None:
    p = result["params"]
    print()
    print(f"Collector ingest benchmark: {result['load']['packets']} packets "
          f"({result['load']['mix']}) over {p['sessions']} sessions, {p['rounds']} rounds, "
          f"radclient {' '.join(radload.RADCLIENT_OPTS)}, {p['chunk_size']}-packet chunks, "
          f"{p['lanes']} lane(s)")
    print()
    print(f"{'round':>5} {'target':<18} {'acked/s':>9} {'answered':>9} {'lost':>5} "
          f"{'wall s':>7} {'srv cpu s':>9} {'us/pkt':>7} {'db cpu s':>8} {'other s':>8} "
          f"{'rcvbuf':>6} {'busy':>5}  check")
    for r in result["runs"]:
        check = ""
        if "verification" in r and r["verification"].get("error"):
            check = f"kafka check FAILED: {r['verification']['error']}"
        elif "verification" in r:
            v = r["verification"]
            check = (f"kafka {'OK' if v['ok'] else 'FAILED'} ({v['kafka_distinct_packets']} "
                     f"in topic, collector acked {v['collector_acked']}"
                     f"{', spooled ' + str(v['collector_spooled']) if v['collector_spooled'] else ''}"
                     f"{', missing ' + str(v['missing_packets']) if v['missing_packets'] else ''})")
        elif r.get("stored"):
            check = ", ".join(f"{k}={v}" for k, v in r["stored"].items())
        if not r.get("valid", True):
            check = f"INVALID, not counted: {r['invalid_reason']}; " + check
        print(f"{r['round']:>5} {r['target']:<18} {r['acked_per_s']:>9.0f} {r['answered']:>9} "
              f"{r['lost']:>5} {r['wall_s']:>7.2f} {r['server_cpu_s']:>9.2f} "
              f"{(r['server_cpu_us_per_packet'] or 0):>7.1f} {r['db_cpu_s']:>8.2f} "
              f"{r['other_cpu_s']:>8.2f} "
              f"{r['udp_rcvbuf_errors']:>6} {(r['machine_busy_fraction'] or 0):>5.2f}  {check}")
    for r in result.get("discarded_runs", []):
        print(f"{r['round']:>5} {r['target']:<18} discarded and run again: "
              f"{r['invalid_reason']}")
    s = result["summary"]
    print()
    print("median acked/s per target (min-max):")
    for t, d in s["targets"].items():
        print(f"  {t:<18} {d['acked_per_s_median']:>9.0f}  ({d['acked_per_s_min']:.0f}-"
              f"{d['acked_per_s_max']:.0f}), server CPU {d['server_cpu_s_median']:.2f} s "
              f"= {d['server_cpu_us_per_packet_median'] or 0:.0f} us/packet"
              + (f", its PostgreSQL backends {d['db_cpu_s_median']:.2f} s"
                 if d['db_cpu_s_median'] else "")
              + (f", embedded broker {d['bench_process_cpu_s_median']:.2f} s"
                 if t == "ispstream" else "")
              + f"; radclient {d['radclient_cpu_s_median']:.2f} s, "
              f"other processes {d['other_cpu_s_median']:.2f} s")
    noise = median([r["other_cores"] for r in result["runs"] if r.get("valid", True)])
    if noise is not None:
        print(f"machine noise: other processes used a median {noise:.2f} of "
              f"{result['machine']['cpus']} cores during the timed runs"
              + (" -- the figures are contended; compare ratios of the same round"
                 if noise >= 0.2 else ""))
    if s["ratios"]:
        print("ratios (same round, then median):")
        for name, d in s["ratios"].items():
            print(f"  {name:<32} {d['median']}  per round {d['per_round']}")
    if s["verdict"]:
        print("verdict:")
        for k, v in s["verdict"].items():
            print(f"  {k:<32} {'yes' if v else 'NO'}")
    if path:
        print(f"\nresult: {path}")


def _raise_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.collector",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--interims", type=int, default=4,
                    help="Interim-Updates per session (each session: Start, these, Stop)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help=f"comma-separated, run in this order each round; of {ALL_TARGETS}")
    ap.add_argument("--chunk-size", type=int, default=2000,
                    help="packets per radclient input file")
    ap.add_argument("--lanes", type=int, default=1,
                    help="radclient processes at a time (1: chunks strictly in sequence)")
    ap.add_argument("--partitions", type=int, default=0,
                    help="partitions of each round's topic (0: enough for the embedded "
                    "broker's bounded retention to keep the whole load, at least 16)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--admin-dsn", default=ADMIN_DSN,
                    help="PostgreSQL role allowed to CREATE DATABASE (bench databases are "
                    "created and dropped)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in args.targets if t not in ALL_TARGETS]
    if bad:
        ap.error(f"unknown target(s) {bad}; choose from {ALL_TARGETS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from bench import frpeer

    fr_kinds = [t.split("-", 1)[1] for t in args.targets if t.startswith("freeradius-")]
    frpeer.check_installed(fr_kinds)
    radload.radclient_path()

    work = Path(tempfile.mkdtemp(prefix="ispstream-bench-collector-"))
    log.info("work directory %s", work)
    load = radload.build(work / "load", args.sessions, args.interims, args.chunk_size,
                         args.seed)
    partitions = args.partitions or max(16, math.ceil(len(load.packets) * RECORD_BYTES_ESTIMATE
                                                      / PARTITION_BUDGET_BYTES))
    log.info("load: %d packets %s in %d chunk files, packets of one session >= %d apart",
             len(load.packets), load.mix(), len(load.chunks), load.min_gap)
    if load.min_gap <= 2 * radload.PARALLEL:
        log.warning("packets of one session can be as close as %d positions: with -p %d "
                    "a server may process them out of order (use more --sessions)",
                    load.min_gap, radload.PARALLEL)

    kafka = None
    isp = None
    peers: dict[str, frpeer.FreeRadiusPeer] = {}
    rows: list[dict] = []
    discarded: list[dict] = []
    t_start = time.monotonic()
    # SIGTERM: unwind through the finally below (stop servers, drop databases)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        for t in args.targets:
            if t.startswith("freeradius-"):
                kind = t.split("-", 1)[1]
                peer = frpeer.FreeRadiusPeer(kind, work / t, free_udp_port(), SECRET,
                                             admin_dsn=args.admin_dsn)
                peers[t] = peer
                peer.start()
                log.info("%s answers on udp 127.0.0.1:%d (pid %d)", t, peer.port, peer.pid)
        if "ispstream" in args.targets:
            kafka = EmbeddedKafka()
            isp = IspstreamTarget(work, kafka, partitions, args.admin_dsn)
            isp.setup()
            log.info("embedded broker %s, %d partitions per topic", kafka.bootstrap,
                     partitions)
        for rnd in range(1, args.rounds + 1):
            for t in args.targets:
                row = run_one(t, rnd, load, peers, isp, args.lanes, args.admin_dsn)
                if not row["valid"] and t != "ispstream":
                    # the machine is shared: a peer killed from outside is retried once
                    log.warning("round %d %s discarded: %s; running it again", rnd, t,
                                row["invalid_reason"])
                    discarded.append(row)
                    row = run_one(t, rnd, load, peers, isp, args.lanes, args.admin_dsn)
                rows.append(row)
                extra = ""
                if "verification" in row:
                    extra = " kafka check " + ("ok" if row["verification"]["ok"] else
                                               f"FAILED {row['verification']['checks']}")
                log.info("round %d %-18s %8.0f acked/s (answered %d, lost %d, %.2f s, "
                         "server CPU %.2f s)%s", rnd, t, row["acked_per_s"], row["answered"],
                         row["lost"], row["wall_s"], row["server_cpu_s"], extra)
    finally:
        if isp:
            isp.teardown()
        for peer in peers.values():
            peer.stop()
        if kafka:
            kafka.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

    result = {
        "benchmark": "collector-ingest",
        "command": "python -m bench.collector " + " ".join(argv or []),
        "params": {"sessions": args.sessions, "interims": args.interims,
                   "rounds": args.rounds, "targets": args.targets,
                   "chunk_size": args.chunk_size, "lanes": args.lanes, "seed": args.seed,
                   "radclient_options": radload.RADCLIENT_OPTS,
                   "kafka_partitions": partitions if "ispstream" in args.targets else None},
        "machine": machine_info(),
        "load": {"packets": len(load.packets), "mix": load.mix(), "chunks": len(load.chunks),
                 "min_session_gap": load.min_gap},
        "duration_s": round(time.monotonic() - t_start, 1),
        "runs": rows,
        "discarded_runs": discarded,
        "summary": summarize(rows, args.targets),
    }
    path = None if args.no_write else write_result("collector", result)
    print_summary(result, path)
    verdict = result["summary"]["verdict"]
    if verdict and not verdict.get("every_acked_packet_in_kafka", True):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
