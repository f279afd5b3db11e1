"""Poller cost: IF-MIB OIDs collected per CPU-second, ``ispstream collect snmp`` against
Prometheus ``snmp_exporter`` (Debian ``prometheus-snmp-exporter`` 0.21), same devices,
same OIDs, same number of polls, interleaved round by round.

Devices: snmpsim serving the IF-MIB recordings of ``tests/data/snmprec/ifmib`` (3 routers
and 2 OLTs) as N distinct devices: every device has its own address (127.0.3.x, spread
over several snmpsim processes, one data dir each) and its own community (a copy of one
recording, in turn, named ``devNNN``).

- ispstream: the devices in a fresh database (``interval_if_s`` = 10 s, the smallest the
  schema allows), ``ispstream collect snmp --no-traps`` producing to an embedded broker
  hosted here; after every device's first poll, a window of ``--window`` seconds: OIDs =
  the collector's ``ispstream_snmp_oids_total`` delta (varbinds received), CPU = the
  collector process's user+system seconds from /proc over the same window. The
  IfStatsPoll records in Kafka are counted as a cross-check (fields x interfaces).
- snmp_exporter: one process for the whole run with one module per device community
  (``bench/snmp/ifmib_module.yml``: the same 11 IF-MIB columns + sysUpTime by numeric
  OID); each round scrapes every device ``/snmp?target=...&module=...`` as many times as
  ispstream polled it in that round (``--concurrency`` scrapes at a time); OIDs = samples
  in the responses (``snmp_scrape_*`` excluded), CPU = the exporter's /proc delta.

Target: >= 15,000 OIDs per CPU-second for ispstream; the ratio to snmp_exporter is
reported. snmpsim's own CPU (the bulk of the machine's work) is reported, not counted.

    .venv/bin/python -m bench.snmp_poller [--devices 128 --rounds 3 --window 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import yaml

from bench._common import (ADMIN_DSN, ROOT, cpu_seconds, dsn_for, free_port, free_udp_port,
                           loadavg, machine_info, median, system_cpu, wait_until,
                           write_result)

log = logging.getLogger("bench.snmp_poller")

RECORDINGS = ROOT / "tests" / "data" / "snmprec" / "ifmib"
MODULE_TEMPLATE = Path(__file__).resolve().parent / "snmp" / "ifmib_module.yml"
TENANT = "bench"
INTERVAL_S = 10
TARGET_OIDS_PER_CPU_S = 15_000
DEVICES_PER_SNMPSIM = 32
IF_FIELDS = ("name", "alias", "oper_status", "admin_status", "high_speed_mbps", "in_octets",
             "out_octets", "in_ucast_pkts", "out_ucast_pkts")
# what both pollers read: sysUpTime.0 and these IF-MIB columns (bench/snmp/ifmib_module.yml)
WALKED = ("1.3.6.1.2.1.2.2.1.2.", "1.3.6.1.2.1.2.2.1.7.", "1.3.6.1.2.1.2.2.1.8.",
          "1.3.6.1.2.1.31.1.1.1.1.", "1.3.6.1.2.1.31.1.1.1.6.", "1.3.6.1.2.1.31.1.1.1.7.",
          "1.3.6.1.2.1.31.1.1.1.10.", "1.3.6.1.2.1.31.1.1.1.11.", "1.3.6.1.2.1.31.1.1.1.15.",
          "1.3.6.1.2.1.31.1.1.1.18.")
IF_TABLE_INDEX = "1.3.6.1.2.1.2.2.1.2."


def recording_oids(path: Path) -> tuple[int, int]:
    """(OIDs one complete poll of this recording collects, interfaces in its ifTable)."""
    oids = ifs = 0
    for line in path.read_text(errors="replace").splitlines():
        oid = line.split("|", 1)[0]
        if oid == "1.3.6.1.2.1.1.3.0" or oid.startswith(WALKED):
            oids += 1
            ifs += oid.startswith(IF_TABLE_INDEX)
    return oids, ifs


def _program(name: str) -> str:
    for cand in (shutil.which(name), str(Path(sys.executable).with_name(name)),
                 f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError(f"`{name}` not found (scripts/bootstrap.sh installs it)")


def _ispstream_command(*args: str) -> list[str]:
    exe = ROOT / ".venv/bin/ispstream"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "ispstream.cli", *args]


def _parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- devices: snmpsim -------------------------------------------------------------------

class Devices:
    """N simulated devices: (address, port, community, recording) on snmpsim processes."""

    def __init__(self, work: Path, n: int) -> None:
        self.work = work
        self.recordings = sorted(RECORDINGS.glob("*.snmprec"))
        if not self.recordings:
            raise RuntimeError(f"no recordings in {RECORDINGS}")
        self.devices: list[dict] = []
        self.procs: list[subprocess.Popen] = []
        self.pids: list[int] = []
        self._logs = []
        for i in range(n):
            rec = self.recordings[i % len(self.recordings)]
            oids, ifs = recording_oids(rec)
            self.devices.append({"id": f"dev{i:03d}", "community": f"dev{i:03d}",
                                 "recording": rec.stem, "oids": oids, "ifs": ifs,
                                 "address": f"127.0.3.{i + 1}" if i < 254
                                 else f"127.0.4.{i - 253}",
                                 "group": i // DEVICES_PER_SNMPSIM})

    def start(self) -> None:
        binary = _program("snmpsim-command-responder")
        groups = sorted({d["group"] for d in self.devices})
        env = {**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}
        for g in groups:
            data = self.work / f"snmpsim-{g}" / "data"
            cache = self.work / f"snmpsim-{g}" / "cache"
            data.mkdir(parents=True)
            cache.mkdir(parents=True)
            port = free_udp_port()
            members = [d for d in self.devices if d["group"] == g]
            for d in members:
                shutil.copyfile(RECORDINGS / f"{d['recording']}.snmprec",
                                data / f"{d['community']}.snmprec")
                d["port"] = port
            logf = open(self.work / f"snmpsim-{g}.log", "ab")
            self._logs.append(logf)
            proc = subprocess.Popen(
                [binary, f"--data-dir={data}", f"--cache-dir={cache}",
                 *(f"--agent-udpv4-endpoint={d['address']}:{port}" for d in members)],
                env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=self.work)
            self.procs.append(proc)
            self.pids.append(proc.pid)
        for d in self.devices[:: max(1, DEVICES_PER_SNMPSIM // 4)] + self.devices[-1:]:
            wait_until(lambda d=d: self._answers(d), 180,
                       f"snmpsim to answer for {d['id']} at {d['address']}:{d['port']}",
                       every=0.5)

    def _answers(self, d: dict) -> bool:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"snmpsim exited (rc {proc.returncode})")
        rv = subprocess.run([_program("snmpget"), "-v2c", "-c", d["community"], "-t", "1",
                             "-r", "0", "-Oqv", f"udp:{d['address']}:{d['port']}",
                             "1.3.6.1.2.1.1.3.0"], capture_output=True, text=True,
                            env={**os.environ, "MIBS": "", "MIBDIRS": ""}, timeout=20)
        return rv.returncode == 0 and bool(rv.stdout.strip())

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def stop(self) -> None:
        for p in self.procs:
            _stop(p)
        for f in self._logs:
            f.close()


# --- ispstream ----------------------------------------------------------------------------

class Ispstream:
    """A fresh database with the devices, ``collect snmp --no-traps`` started per round."""

    def __init__(self, work: Path, devices: Devices, admin_dsn: str, partitions: int) -> None:
        from ispstream.kafka import EmbeddedBroker

        self.work = work
        self.devices = devices
        self.admin_dsn = admin_dsn
        self.partitions = partitions
        self.broker = EmbeddedBroker()
        self.db_name = f"bench_snmp_{uuid.uuid4().hex[:10]}"
        self.dsn = dsn_for(self.db_name, admin_dsn)
        self.proc: subprocess.Popen | None = None
        self.metrics_port = 0
        self.topic = ""
        self._round = 0

    def setup(self) -> None:
        from ispstream.db import migrate

        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        migrate(self.dsn)
        with psycopg.connect(self.dsn) as conn:
            conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, 'UTC', 'EUR')",
                         (TENANT,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO devices (tenant_id, id, kind, address, snmp_port, snmp_version,"
                    " community, interval_if_s, max_inflight, timeout_s, retries) VALUES "
                    "(%s, %s, 'router', %s, %s, '2c', %s, %s, 2, 10, 2)",
                    [(TENANT, d["id"], d["address"], d["port"], d["community"], INTERVAL_S)
                     for d in self.devices.devices])

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return _parse_metrics(r.read().decode())

    def start(self) -> None:
        from ispstream import topics

        self._round += 1
        prefix = f"b{uuid.uuid4().hex[:8]}."
        self.topic = f"{prefix}{topics.SNMP_IFSTATS}"
        for t in (topics.SNMP_IFSTATS, topics.DEVICE_STATUS, topics.SNMP_TRAPS):
            self.broker.create_topic(f"{prefix}{t}", self.partitions)
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISPSTREAM_")}
        env.update({
            "ISPSTREAM_DATABASE_URL": self.dsn,
            "ISPSTREAM_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "ISPSTREAM_TOPIC_PREFIX": prefix,
            "ISPSTREAM_SNMP_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "ISPSTREAM_INVENTORY_REFRESH_S": "60",
        })
        self.log_path = self.work / f"collect-snmp-{self._round}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(_ispstream_command("collect", "snmp", "--no-traps"),
                                     env=env, cwd=self.work, stdout=self._log,
                                     stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("collect snmp exited:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            return self.metrics()
        wait_until(ready, 90, "the collector's /metrics", every=0.3)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        self._log.close()

    def read_polls(self, t0: float, t1: float) -> dict:
        """IfStatsPoll records of this round's topic whose poll ended in [t0, t1] (unix s):
        OIDs (each device's complete-poll count), interfaces, non-null fields."""
        by_id = {d["id"]: d for d in self.devices.devices}
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "bench",
                      "enable.auto.commit": False})
        try:
            parts = sorted(c.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
            low_nonzero, high = 0, {}
            for p in parts:
                lo, hi = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                low_nonzero += lo > 0
                high[p] = hi
            c.assign([TopicPartition(self.topic, p, 0) for p in parts])
            remaining = {p for p in parts if high[p] > 0}
            polls = ifs = fields = oids = records = incomplete = 0
            deadline = time.monotonic() + 60
            while remaining and time.monotonic() < deadline:
                for m in c.consume(5000, timeout=1.0):
                    if m.error():
                        continue
                    poll = json.loads(m.value())
                    records += 1
                    if m.offset() + 1 >= high[m.partition()]:
                        remaining.discard(m.partition())
                    if not t0 <= poll["at"] <= t1:
                        continue
                    dev = by_id[poll["device_id"]]
                    polls += 1
                    oids += dev["oids"]
                    incomplete += len(poll["interfaces"]) != dev["ifs"]
                    fields += poll.get("sys_uptime_cs") is not None
                    for row in poll["interfaces"]:
                        ifs += 1
                        fields += sum(row.get(f) is not None for f in IF_FIELDS)
                    if m.offset() + 1 >= high[m.partition()]:
                        remaining.discard(m.partition())
            return {"records_whole_round": records, "polls_in_window": polls,
                    "oids_in_window": oids, "interfaces": ifs, "nonnull_fields": fields,
                    "polls_with_missing_interfaces": incomplete,
                    "complete": not remaining and low_nonzero == 0}
        finally:
            c.close()

    def teardown(self) -> None:
        if self.proc is not None:
            self.stop()
        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except psycopg.Error as exc:
            log.warning("could not drop %s: %s", self.db_name, exc)
        self.broker.close()


def run_ispstream(isp: Ispstream, devices: Devices, window: float) -> dict:
    isp.start()
    n = len(devices.devices)
    try:
        # the start (imports, inventory, first walks) stays outside the window: it opens
        # once half the devices have been polled (the phases spread over the interval)
        def polled():
            m = isp.metrics()
            return (m.get('ispstream_snmp_polls_total{result="ok"}', 0)
                    + m.get('ispstream_snmp_polls_total{result="failed"}', 0)) >= n / 2
        wait_until(polled, 120, "half the devices' first poll", every=0.2)
        m0, c0, s0 = isp.metrics(), cpu_seconds(isp.proc.pid), devices.cpu()
        b0, t0, u0 = system_cpu(), time.monotonic(), time.time()
        time.sleep(window)
        m1, c1, s1 = isp.metrics(), cpu_seconds(isp.proc.pid), devices.cpu()
        b1, t1, u1 = system_cpu(), time.monotonic(), time.time()
    finally:
        isp.stop()
    d = lambda k: m1.get(k, 0) - m0.get(k, 0)  # noqa: E731
    polls_ok = d('ispstream_snmp_polls_total{result="ok"}')
    varbinds = d("ispstream_snmp_oids_total")
    cpu = c1 - c0
    readback = isp.read_polls(u0, u1)
    oids = readback["oids_in_window"]
    return {
        "target": "ispstream", "wall_s": round(t1 - t0, 2), "cpu_s": round(cpu, 3),
        "oids": oids, "polls_ok": int(polls_ok), "polls_in_kafka": readback["polls_in_window"],
        "varbinds_received": int(varbinds),
        "varbinds_per_cpu_s": round(varbinds / cpu) if cpu else None,
        "polls_failed": int(d('ispstream_snmp_polls_total{result="failed"}')),
        "requests": int(d("ispstream_snmp_requests_total")),
        "oids_per_cpu_s": round(oids / cpu) if cpu else None,
        "snmpsim_cpu_s": round(s1 - s0, 2),
        "machine_busy_cpu_s": round(b1[0] - b0[0], 2),
        "kafka_failures": int(m1.get('ispstream_snmp_kafka_failures_total{reason="delivery"}', 0)
                              + m1.get('ispstream_snmp_kafka_failures_total{reason="queue_full"}',
                                       0)),
        "kafka_readback": readback,
        "loadavg": loadavg(),
    }


# --- snmp_exporter --------------------------------------------------------------------------

class Exporter:
    def __init__(self, work: Path, devices: Devices) -> None:
        self.work = work
        self.devices = devices
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        module = yaml.safe_load(MODULE_TEMPLATE.read_text())
        config = {}
        for d in self.devices.devices:
            config[d["community"]] = {**module, "auth": {"community": d["community"]}}
        conf = self.work / "snmp.yml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        binary = _program("prometheus-snmp-exporter")
        self.port = free_port()
        self._log = open(self.work / "snmp_exporter.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.work)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError("snmp_exporter exited: "
                                   + (self.work / "snmp_exporter.log").read_text()[-2000:])
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as r:
                return r.status == 200
        wait_until(up, 30, "snmp_exporter's web port", every=0.2)
        self.version = subprocess.run([binary, "--version"], capture_output=True,
                                      text=True).stderr.splitlines()[0]

    def scrape(self, d: dict) -> dict:
        url = (f"http://127.0.0.1:{self.port}/snmp?target={d['address']}:{d['port']}"
               f"&module={d['community']}")
        with urllib.request.urlopen(url, timeout=120) as r:
            text = r.read().decode()
        samples = 0
        pdus = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("snmp_scrape_"):
                if line.startswith("snmp_scrape_pdus_returned"):
                    pdus = float(line.rsplit(" ", 1)[1])
                continue
            samples += 1
        return {"samples": samples, "pdus": pdus}

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc is not None:
            self._log.close()


def run_exporter(exp: Exporter, devices: Devices, scrapes_per_device: int,
                 concurrency: int) -> dict:
    jobs = [d for _ in range(scrapes_per_device) for d in devices.devices]
    c0, s0, b0, t0 = cpu_seconds(exp.proc.pid), devices.cpu(), system_cpu(), time.monotonic()
    errors: list[str] = []
    results = []
    lock = threading.Lock()

    def one(d):
        try:
            r = exp.scrape(d)
            r["expected"] = d["oids"]
            with lock:
                results.append(r)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"{d['id']}: {exc}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    c1, s1, b1, t1 = cpu_seconds(exp.proc.pid), devices.cpu(), system_cpu(), time.monotonic()
    samples = sum(r["samples"] for r in results)
    cpu = c1 - c0
    return {
        "target": "snmp_exporter", "wall_s": round(t1 - t0, 2), "cpu_s": round(cpu, 3),
        "oids": samples, "expected_oids": sum(r["expected"] for r in results),
        "scrapes_ok": len(results), "scrapes_failed": len(errors),
        "errors_sample": errors[:3],
        "pdus": int(sum(r["pdus"] or 0 for r in results)),
        "oids_per_cpu_s": round(samples / cpu) if cpu else None,
        "snmpsim_cpu_s": round(s1 - s0, 2),
        "machine_busy_cpu_s": round(b1[0] - b0[0], 2),
        "loadavg": loadavg(),
    }


# --- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.snmp_poller", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=104)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-scrapes", type=int, default=3,
                    help="cap on snmp_exporter scrapes per device per round")
    ap.add_argument("--window", type=float, default=25,
                    help="seconds of ispstream polling measured per round (interval 10 s)")
    ap.add_argument("--concurrency", type=int, default=16,
                    help="snmp_exporter scrapes in flight")
    ap.add_argument("--targets", default="ispstream,snmp_exporter")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--admin-dsn", default=ADMIN_DSN)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    targets = args.targets.split(",")

    work = Path(tempfile.mkdtemp(prefix="bench-snmp-"))
    devices = Devices(work, args.devices)
    isp = exp = None
    rows: list[dict] = []
    t_start = time.monotonic()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        devices.start()
        log.info("%d devices on %d snmpsim processes (%s)", len(devices.devices),
                 len(devices.procs), ", ".join(r.stem for r in devices.recordings))
        if "ispstream" in targets:
            isp = Ispstream(work, devices, args.admin_dsn, args.partitions)
            isp.setup()
        if "snmp_exporter" in targets:
            exp = Exporter(work, devices)
            exp.start()
            warm = run_exporter(exp, devices, 1, args.concurrency)  # first walk of each
            log.info("snmp_exporter warm-up: %d scrapes, %d failed", warm["scrapes_ok"],
                     warm["scrapes_failed"])
        for rnd in range(1, args.rounds + 1):
            polls = None
            if isp:
                row = run_ispstream(isp, devices, args.window)
                row["round"] = rnd
                rows.append(row)
                polls = row["polls_ok"]
                log.info("round %d ispstream: %d OIDs, %d polls (%d failed), CPU %.2f s -> "
                         "%s OIDs/CPU-s; snmpsim CPU %.1f s; kafka %s", rnd, row["oids"],
                         row["polls_ok"], row["polls_failed"], row["cpu_s"],
                         row["oids_per_cpu_s"], row["snmpsim_cpu_s"],
                         row["kafka_readback"])
            if exp:
                per_device = max(1, round((polls or len(devices.devices) * 3)
                                          / len(devices.devices)))
                per_device = min(per_device, args.max_scrapes)
                row = run_exporter(exp, devices, per_device, args.concurrency)
                row["round"] = rnd
                row["scrapes_per_device"] = per_device
                rows.append(row)
                log.info("round %d snmp_exporter: %d OIDs, %d scrapes (%d failed), CPU "
                         "%.2f s -> %s OIDs/CPU-s; snmpsim CPU %.1f s", rnd, row["oids"],
                         row["scrapes_ok"], row["scrapes_failed"], row["cpu_s"],
                         row["oids_per_cpu_s"], row["snmpsim_cpu_s"])
    finally:
        if isp:
            isp.teardown()
        if exp:
            exp.stop()
        devices.stop()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def med(target, key):
        return median([r[key] for r in rows if r["target"] == target])

    ratios = []
    for rnd in range(1, args.rounds + 1):
        a = next((r for r in rows if r["round"] == rnd and r["target"] == "ispstream"), None)
        b = next((r for r in rows if r["round"] == rnd and r["target"] == "snmp_exporter"),
                 None)
        if a and b and a["oids_per_cpu_s"] and b["oids_per_cpu_s"]:
            ratios.append(round(a["oids_per_cpu_s"] / b["oids_per_cpu_s"], 2))
    summary = {
        "ispstream_oids_per_cpu_s_median": med("ispstream", "oids_per_cpu_s"),
        "ispstream_oids_per_cpu_s_all": [r["oids_per_cpu_s"] for r in rows
                                         if r["target"] == "ispstream"],
        "snmp_exporter_oids_per_cpu_s_median": med("snmp_exporter", "oids_per_cpu_s"),
        "snmp_exporter_oids_per_cpu_s_all": [r["oids_per_cpu_s"] for r in rows
                                             if r["target"] == "snmp_exporter"],
        "ratio_per_round": ratios,
        "ratio_median": median(ratios),
        "target_oids_per_cpu_s": TARGET_OIDS_PER_CPU_S,
    }
    if summary["ispstream_oids_per_cpu_s_median"] is not None:
        summary["target_met"] = summary["ispstream_oids_per_cpu_s_median"] >= TARGET_OIDS_PER_CPU_S
    result = {
        "benchmark": "snmp-poller",
        "command": "python -m bench.snmp_poller " + " ".join(argv or []),
        "params": {"devices": args.devices, "rounds": args.rounds, "window_s": args.window,
                   "interval_s": INTERVAL_S, "concurrency": args.concurrency,
                   "targets": targets, "snmpsim_processes": len(devices.procs),
                   "recordings": [r.stem for r in devices.recordings],
                   "snmp_exporter": getattr(exp, "version", None)},
        "machine": machine_info(),
        "duration_s": round(time.monotonic() - t_start, 1),
        "runs": rows,
        "summary": summary,
    }
    path = None if args.no_write else write_result("snmp_poller", result)
    print(json.dumps(summary, indent=2))
    if path:
        print(f"result: {path}")
    bad = [r for r in rows if r.get("polls_failed") or r.get("scrapes_failed")]
    if bad:
        print(f"WARNING: {len(bad)} runs had failed polls/scrapes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
