"""Enforcement: quota crossing -> CoA ACK latency under load, and CoA/Disconnect throughput.

Two phases, each on its own fresh database, topics and FreeRADIUS NAS, all real processes:

``latency``: ``ispstream collect radius``, ``ispstream flow usage`` and ``ispstream flow
enforce`` against the embedded broker (hosted by this process) and PostgreSQL; one NAS
(127.0.0.1) whose CoA port is a FreeRADIUS 3.2 CoA receiver that ACKs. A paced sender
carries ``--bg-rate`` Interim-Updates/s of other subscribers (an unlimited plan) to the
collector for the whole phase. ``--crossings`` subscribers on a plan with a 1 GB quota
and a 100 % throttle policy each get a Start (radclient, before the timed part), then one
Interim-Update carrying 1.1 GB, sent by its own ``radclient`` invocation, ``--crossing-rate``
per second. Send time = the wall clock right before that radclient is spawned (so the
latency includes radclient's own start, a few ms). ACK time = the enforce flow's
``ActionResult.at`` on ``actions.results`` (its wall clock when it handled the CoA-ACK);
``action_attempts.answered_at`` (PostgreSQL's clock, same machine, the recording
transaction's start) is reported too. Target: p99 <= 1 s.

``throughput``: ``ispstream flow enforce`` alone, 10 NAS (one FreeRADIUS with a CoA listener
on each of 127.0.0.1-10), ``--burst`` subscribers with an open session (Starts produced to
``radius.acct``), then a burst of that many throttle actions produced to ``actions``.
Exchanges/s = ACKed attempts / (first attempt row written - last answer recorded);
CPU of the flow process, its PostgreSQL backends and FreeRADIUS over the burst.
Target: >= 2,000 exchanges/s.

    .venv/bin/python -m bench.enforce                          # both phases, ~3-4 min
    .venv/bin/python -m bench.enforce --phases latency --crossings 1000 --bg-rate 2000
    .venv/bin/python -m bench.enforce --phases throughput --burst 20000

Needs root (FreeRADIUS on private config dirs), a local PostgreSQL (a role with CREATEDB:
``--admin-dsn`` or ISPSTREAM_BENCH_DATABASE_URL), ``radclient`` and ``freeradius``.
Exit code 1 when a crossing or a burst action was not ACKed, or a request was sent twice;
missing a target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

from bench._common import ADMIN_DSN, cpu_by_pid, cpu_delta, cpu_seconds, dsn_for, free_port, \
    free_udp_port, machine_info, system_cpu, udp_counters, wait_until, write_result

SECRET = "bench-nas-secret"
TENANT = "bench"
GB = 10**9


# --- helpers ------------------------------------------------------------------------

def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if not path:
        raise SystemExit(f"`{name}` is not installed (scripts/bootstrap.sh installs it)")
    return path


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _dist(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(statistics.median(values), 3),
            "p90_s": round(_pct(values, 90), 3), "p99_s": round(_pct(values, 99), 3),
            "max_s": round(max(values), 3), "min_s": round(min(values), 3)}


def _create_db(admin_dsn: str, tag: str) -> str:
    from ispstream.db import migrate

    name = f"ispbench_enf_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(name, admin_dsn)
    migrate(dsn)
    return dsn


def _drop_db(admin_dsn: str, dsn: str) -> None:
    name = dsn.rpartition("/")[2]
    for attempt in range(10):
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.Error:
            time.sleep(0.5 * (attempt + 1))


def _rows(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args or None).fetchall()


def _pg_backends(dsn: str) -> list[int]:
    return [r[0] for r in _rows(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                "current_database() AND pid <> pg_backend_pid()")]


def _apply_inventory(dsn: str, workdir: Path, plans: str, nas: list[tuple[str, str, int]],
                     subscribers: list[tuple[str, str]]) -> str:
    from ispstream.inventory import apply_file

    lines = ["tenants:", f"  - id: {TENANT}", "    timezone: UTC", "    currency: EUR",
             "    plans:", plans.rstrip("\n"), "    nas:"]
    for name, ip, port in nas:
        lines.append(f"      - {{ip: {ip}, name: {name}, secret: {SECRET}, vendor: mikrotik, "
                     f"coa_port: {port}}}")
    lines.append("    subscribers:")
    lines += [f"      - {{username: {u}, plan: {p}}}" for u, p in subscribers]
    path = workdir / "inventory.yaml"
    path.write_text("\n".join(lines) + "\n")
    return apply_file(dsn, str(path))


def _start_nas(workdir: Path, listeners: list[tuple[str, int, str]]):
    from tests.integration.nas_coa import FreeRadiusNas

    return FreeRadiusNas(_binary("freeradius"), workdir, SECRET, listeners).start()


def _env(dsn: str, bootstrap: str, prefix: str, tmp: Path, args) -> dict:
    return {
        "ISPSTREAM_DATABASE_URL": dsn,
        "ISPSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "ISPSTREAM_TOPIC_PREFIX": prefix,
        "ISPSTREAM_SPOOL_DIR": str(tmp / "spool"),
        "ISPSTREAM_RECOVERY_DIR": str(tmp / "recovery-usage"),
        "ISPSTREAM_ENFORCE_RECOVERY_DIR": str(tmp / "recovery-enforce"),
        "ISPSTREAM_SNAPSHOT_INTERVAL_S": str(args.snapshot_s),
        "ISPSTREAM_ENFORCE_WRITERS": str(args.writers),
    }


def _probe_enforce(bootstrap: str, prefix: str, dsn: str) -> None:
    """A notify action for a nobody: the enforce flow consumes once it is recorded."""
    from confluent_kafka import Producer

    from ispstream import topics
    from ispstream.contracts import ActionEvent
    from ispstream.kafka import producer_config

    probe = ActionEvent(intent_id="probe", tenant_id=TENANT, username="probe", kind="notify",
                        source="operator", reason="probe", at=time.time())
    p = Producer(producer_config(bootstrap))
    p.produce(prefix + topics.ACTIONS, key=f"{TENANT}/probe", value=probe.model_dump_json())
    p.flush(10)
    wait_until(lambda: _rows(dsn, "SELECT 1 FROM actions WHERE intent_id = 'probe'"), 120,
               "the enforce flow to consume")


class _Cpu:
    """CPU of named processes (with their descendants), PostgreSQL backends and the machine."""

    def __init__(self, procs: dict[str, int], dsn: str) -> None:
        self.procs, self.dsn = procs, dsn

    def __enter__(self) -> "_Cpu":
        self.pg_pids = _pg_backends(self.dsn)
        self.pg0 = cpu_by_pid(self.pg_pids)
        self.procs = {**self.procs, "bench_process": os.getpid()}
        self.p0 = {k: cpu_seconds(pid, include_children=k != "bench_process")
                   for k, pid in self.procs.items()}
        self.sys0 = system_cpu()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.t0
        pids = sorted(set(self.pg_pids) | set(_pg_backends(self.dsn)))
        self.pg_s = cpu_delta(self.pg0, cpu_by_pid(pids))
        self.p_s = {k: cpu_seconds(pid, include_children=k != "bench_process") - self.p0[k]
                    for k, pid in self.procs.items()}
        busy1, total1 = system_cpu()
        self.machine_busy = (busy1 - self.sys0[0]) / max(1e-9, total1 - self.sys0[1])
        # everything else on the machine (the rest of the busy time, all cores)
        self.others_s = (busy1 - self.sys0[0]) - sum(self.p_s.values()) - self.pg_s

    def report(self) -> dict:
        out = {f"{k}_cores": round(v / self.seconds, 3) for k, v in self.p_s.items()}
        out["postgresql_backends_cores"] = round(self.pg_s / self.seconds, 3)
        out["other_processes_cores"] = round(max(0.0, self.others_s) / self.seconds, 3)
        out["machine_busy"] = round(self.machine_busy, 3)
        out["cpus"] = os.cpu_count()
        out["window_s"] = round(self.seconds, 2)
        return out


# --- latency phase ------------------------------------------------------------------

def _acct_packet(d, user: str, session: str, status: str, down: int, ts: int) -> bytes:
    from pyrad.packet import AccountingRequest, AcctPacket

    p = AcctPacket(code=AccountingRequest, secret=SECRET.encode(), dict=d)
    p["User-Name"] = user
    p["Acct-Session-Id"] = session
    p["Acct-Status-Type"] = status
    p["NAS-IP-Address"] = "127.0.0.1"
    p["Event-Timestamp"] = ts
    p["Acct-Input-Octets"] = (down // 10) % 2**32
    p["Acct-Input-Gigawords"] = (down // 10) >> 32
    p["Acct-Output-Octets"] = down % 2**32
    p["Acct-Output-Gigawords"] = down >> 32
    return p.RequestPacket()


def _background(port: int, rate: int, sessions: int, stop: threading.Event, stats: dict) -> None:
    """``rate`` Interim-Updates/s of ``sessions`` other subscribers, paced in 10 ms slices,
    until ``stop``; answers are counted on the same socket."""
    from collectors.radius.dictionary import load as load_dictionary

    d = load_dictionary()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    start = time.monotonic()
    sent = answered = behind = 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        if due - sent > rate:  # more than a second behind: note it, do not burst
            behind += due - sent - rate
            sent_target = due - rate
        else:
            sent_target = due
        now = int(time.time())
        while sent < sent_target:
            i = sent % sessions
            rnd = sent // sessions + 1
            sock.sendto(_acct_packet(d, f"b{i:06d}", f"B{i}", "Interim-Update",
                                     rnd * 1_000_000, now), ("127.0.0.1", port))
            sent += 1
        try:
            while True:
                sock.recv(4096)
                answered += 1
        except BlockingIOError:
            pass
        time.sleep(0.01)
    secs = time.monotonic() - start
    deadline = time.monotonic() + 5
    while answered < sent and time.monotonic() < deadline:
        try:
            sock.recv(4096)
            answered += 1
        except BlockingIOError:
            time.sleep(0.01)
    stats.update(sent=sent, answered=answered, seconds=round(secs, 1),
                 achieved_rate=round(sent / secs) if secs else 0, skipped_behind=behind)


def _radclient_attrs(user: str, session: str, status: str, ts: int, down: int = 0) -> str:
    attrs = [("Acct-Status-Type", status), ("User-Name", user), ("Acct-Session-Id", session),
             ("NAS-IP-Address", "127.0.0.1"), ("Event-Timestamp", str(ts))]
    if status == "Start":
        attrs.append(("Acct-Interim-Interval", "300"))
    else:
        attrs += [("Acct-Input-Octets", str((down // 10) % 2**32)),
                  ("Acct-Input-Gigawords", str((down // 10) >> 32)),
                  ("Acct-Output-Octets", str(down % 2**32)),
                  ("Acct-Output-Gigawords", str(down >> 32)),
                  ("Acct-Session-Time", "60")]
    return "\n".join(f"{k} = {v}" for k, v in attrs) + "\n"


def _read_results(bootstrap: str, topic: str, with_ts: bool = False) -> list[dict]:
    """Every record on ``topic`` (all partitions, from the start, up to the end)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        left, out = set(parts), []
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    left.discard(m.partition())
                continue
            rec = json.loads(m.value())
            if with_ts:  # the producer's CreateTime (ms): when the flow produced it
                rec["_produced_at"] = m.timestamp()[1] / 1000
            out.append(rec)
        return out
    finally:
        c.close()


def run_latency(args, broker, tmp: Path) -> dict:
    from ispstream import topics
    from tests.procs import Proc

    radclient = _binary("radclient")
    prefix = f"benchenf{uuid.uuid4().hex[:6]}."
    for t in topics.ALL_TOPICS:
        broker.create_topic(prefix + t, args.partitions)
    dsn = _create_db(args.admin_dsn, "lat")
    procs: dict = {}
    nas = None
    try:
        coa_port = free_udp_port()
        crossers = [f"c{i:05d}" for i in range(args.crossings)]
        plans = (
            "      - {id: capped, monthly_fee: \"20\", quota_gb: 1, "
            "after_quota: {overage_per_gb: \"0\"}, rate_limit: \"100M/100M\", "
            "quota_policies: [{at: 100, action: throttle, rate: \"2M/2M\"}]}\n"
            "      - {id: unlimited, monthly_fee: \"30\"}\n")
        subs = [(u, "capped") for u in crossers] + [(f"b{i:06d}", "unlimited")
                                                     for i in range(args.bg_sessions)]
        inv = _apply_inventory(dsn, tmp, plans, [("bng-1", "127.0.0.1", coa_port)], subs)
        print(f"  inventory: {inv}", flush=True)
        nas = _start_nas(tmp / "nas", [("127.0.0.1", coa_port, "ack")])
        acct_port, metrics = free_udp_port(), free_port()
        env = {**_env(dsn, broker.bootstrap, prefix, tmp, args),
               "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{acct_port}",
               "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{metrics}"}
        for name, cmd in (("collector", ["collect", "radius"]), ("usage", ["flow", "usage"]),
                          ("enforce", ["flow", "enforce"])):
            procs[name] = Proc(name, cmd, env, tmp)
        wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics",
                                                  timeout=2).status == 200, 60, "the collector")
        _probe_enforce(broker.bootstrap, prefix, dsn)

        # Starts of the crossing sessions (radclient, 2,000-packet files)
        now = int(time.time())
        starts = tmp / "starts"
        starts.mkdir()
        for k in range(0, len(crossers), 2000):
            f = starts / f"starts-{k}.txt"
            f.write_text("\n".join(_radclient_attrs(u, f"S{u}", "Start", now - 60)
                                   for u in crossers[k:k + 2000]))
            rv = subprocess.run([radclient, "-q", "-s", "-c", "1", "-p", "64", "-t", "3",
                                 "-r", "3", "-f", str(f), f"127.0.0.1:{acct_port}", "acct",
                                 SECRET], capture_output=True, text=True)
            if rv.returncode != 0:
                raise RuntimeError(f"radclient (Starts) failed: {rv.stdout[-500:]}"
                                   f"{rv.stderr[-500:]}")

        stop = threading.Event()
        bg_stats: dict = {}
        bg = threading.Thread(target=_background, args=(acct_port, args.bg_rate,
                                                         args.bg_sessions, stop, bg_stats),
                              daemon=True)
        bg.start()
        wait_until(lambda: _rows(dsn, "SELECT count(*) FROM sessions WHERE username LIKE "
                                 "'c%'")[0][0] >= len(crossers), 120,
                   "the crossing sessions to be open")
        time.sleep(args.warmup_s)  # under background load, both flows caught up
        udp0 = udp_counters()
        print(f"  {len(crossers)} crossings at {args.crossing_rate}/s under "
              f"{args.bg_rate} background packets/s", flush=True)

        sent_at: dict[str, float] = {}
        exits: dict[str, tuple[float, int]] = {}
        running: list[tuple[str, subprocess.Popen]] = []
        cpu = _Cpu({k: p.popen.pid for k, p in procs.items()} | {"freeradius": nas.proc.pid},
                   dsn)

        def reap(block: bool = False) -> None:
            for item in list(running):
                u, p = item
                if p.poll() is not None or block:
                    rc = p.wait()
                    exits[u] = (time.time(), rc)
                    running.remove(item)

        with cpu:
            t0 = time.monotonic()
            for i, u in enumerate(crossers):
                delay = t0 + i / args.crossing_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                ts = time.time()
                sent_at[u] = ts
                p = subprocess.Popen([radclient, "-t", "3", "-r", "1",
                                      f"127.0.0.1:{acct_port}", "acct", SECRET],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                p.stdin.write(_radclient_attrs(u, f"S{u}", "Interim-Update", int(ts),
                                               down=GB + 100_000_000).encode())
                p.stdin.close()
                running.append((u, p))
                reap()
            reap(block=True)

            def final() -> int:
                return _rows(dsn, "SELECT count(*) FROM action_attempts WHERE state <> "
                             "'sending'")[0][0]
            try:
                wait_until(lambda: final() >= len(crossers), args.drain_s,
                           "every crossing answered", every=0.2)
            except RuntimeError as exc:
                print(f"  {exc}", flush=True)
        stop.set()
        bg.join(15)
        udp1 = udp_counters()

        rows = _rows(dsn, "SELECT a.username, x.state, extract(epoch FROM x.answered_at), "
                     "extract(epoch FROM x.created_at), extract(epoch FROM a.at) "
                     "FROM action_attempts x JOIN actions a USING (tenant_id, intent_id) "
                     "WHERE a.kind = 'throttle'")
        results = [r for r in _read_results(broker.bootstrap, prefix + topics.ACTION_RESULTS)
                   if r.get("outcome") == "ack"]
        produced = {}
        for r in _read_results(broker.bootstrap, prefix + topics.ACTIONS, with_ts=True):
            if r.get("kind") == "throttle":
                produced.setdefault(r["username"], r["_produced_at"])
        seen = nas.requests()
        states: dict[str, int] = {}
        for r in rows:
            states[r[1]] = states.get(r[1], 0) + 1
        ack_at = {}
        for r in results:
            ack_at.setdefault(r["username"], r["at"])
        lat_results = [ack_at[u] - sent_at[u] for u in crossers if u in ack_at]
        lat_db = [float(r[2]) - sent_at[r[0]] for r in rows if r[1] == "ack" and r[0] in sent_at]
        to_intent = [float(r[3]) - sent_at[r[0]] for r in rows if r[0] in sent_at]
        collector_ack = [exits[u][0] - sent_at[u] for u in crossers if u in exits
                         and exits[u][1] == 0]
        per_session = {}
        for s in seen:
            per_session[s.get("Acct-Session-Id")] = per_session.get(s.get("Acct-Session-Id"),
                                                                     0) + 1
        out = {
            "crossings": len(crossers),
            "crossing_rate_per_s": args.crossing_rate,
            "radclient_answered": sum(1 for v in exits.values() if v[1] == 0),
            "throttle_attempts": len(rows),
            "attempt_states": states,
            "acked_crossings": len(lat_results),
            "nas_requests": len(seen),
            "nas_sessions_sent_twice": sum(1 for v in per_session.values() if v > 1),
            "latency_to_ack_results_at": _dist(lat_results),
            "latency_to_ack_db_answered_at": _dist(lat_db),
            # drift: a flow that falls behind the load shows growing latencies
            "latency_first_tenth": _dist(lat_results[:max(1, len(lat_results) // 10)]),
            "latency_last_tenth": _dist(lat_results[-max(1, len(lat_results) // 10):]),
            # split: usage flow (crossing sent -> action produced on `actions`) and
            # enforce flow (action produced -> intent recorded -> ACK)
            "latency_to_action_produced": _dist([produced[u] - sent_at[u] for u in crossers
                                                 if u in produced]),
            "latency_action_produced_to_ack": _dist([ack_at[u] - produced[u] for u in crossers
                                                     if u in produced and u in ack_at]),
            "latency_to_intent_recorded": _dist(to_intent),
            "radclient_spawn_to_collector_ack": _dist(collector_ack),
            "background": bg_stats,
            "udp_rcvbuf_errors": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
            "cpu": cpu.report(),
            "target_p99_s": 1.0,
        }
        out["target_met"] = bool(lat_results) and out["latency_to_ack_results_at"]["p99_s"] \
            <= 1.0 and len(lat_results) == len(crossers)
        out["ok"] = len(lat_results) == len(crossers) and out["nas_sessions_sent_twice"] == 0
        dead = [p.name for p in procs.values() if not p.alive()]
        if dead:
            out["ok"] = False
            out["crashed"] = dead
        return out
    finally:
        for p in procs.values():
            p.stop()
        if nas is not None:
            nas.stop()
        _drop_db(args.admin_dsn, dsn)


# --- throughput phase ---------------------------------------------------------------

def run_throughput(args, broker, tmp: Path) -> dict:
    from confluent_kafka import Producer

    from ispstream import topics
    from ispstream.contracts import AcctEvent, ActionEvent
    from ispstream.kafka import producer_config
    from tests.procs import Proc

    n, n_nas = args.burst, args.nas
    prefix = f"benchenft{uuid.uuid4().hex[:6]}."
    for t in topics.ALL_TOPICS:
        broker.create_topic(prefix + t, args.partitions)
    dsn = _create_db(args.admin_dsn, "tput")
    flow = nas = None
    try:
        port = free_udp_port()
        users = [f"u{i:06d}" for i in range(n)]
        nas_rows = [(f"bng-{k}", f"127.0.0.{k}", port) for k in range(1, n_nas + 1)]
        inv = _apply_inventory(dsn, tmp, "      - {id: p, monthly_fee: \"10\", "
                               "rate_limit: \"100M/100M\"}\n", nas_rows,
                               [(u, "p") for u in users])
        print(f"  inventory: {inv}", flush=True)
        nas = _start_nas(tmp / "nas", [(ip, port, "ack") for _, ip, _ in nas_rows])
        producer = Producer(producer_config(broker.bootstrap, None, **{"linger.ms": 5}))
        now = int(time.time())
        for i, u in enumerate(users):
            name, ip, _ = nas_rows[i % n_nas]
            ev = AcctEvent(tenant_id=TENANT, nas_id=name, nas_ip=ip, status="Start",
                           session_id=f"s{i}", username=u, received_at=now,
                           event_timestamp=now, interim_interval=300)
            producer.produce(prefix + topics.RADIUS_ACCT, key=ev.key(),
                             value=ev.model_dump_json())
            if i % 10000 == 0:
                producer.poll(0)
        if producer.flush(60):
            raise RuntimeError("could not produce the Starts")
        flow = Proc("enforce", ["flow", "enforce"],
                    _env(dsn, broker.bootstrap, prefix, tmp, args), tmp)
        _probe_enforce(broker.bootstrap, prefix, dsn)
        time.sleep(3)  # the Starts (produced before the probe) are in the flow's state

        at = time.time()
        payloads = [(f"{TENANT}/{u}", ActionEvent(
            intent_id=f"burst-{u}", tenant_id=TENANT, username=u, kind="throttle",
            rate="2M/2M", source="operator", reason="bench", at=at).model_dump_json())
            for u in users]

        def final() -> int:
            return _rows(dsn, "SELECT count(*) FROM action_attempts WHERE state <> 'sending' "
                         "AND intent_id LIKE 'burst-%'")[0][0]

        print(f"  burst of {n} throttles to {n_nas} NAS", flush=True)
        cpu = _Cpu({"enforce_flow": flow.popen.pid, "freeradius": nas.proc.pid}, dsn)
        with cpu:
            t0 = time.monotonic()
            for k, v in payloads:
                producer.produce(prefix + topics.ACTIONS, key=k, value=v)
                producer.poll(0)
            producer.flush(60)
            produced_s = time.monotonic() - t0
            try:
                wait_until(lambda: final() >= n, args.drain_s, "the burst answered",
                           every=0.05)
            except RuntimeError as exc:
                print(f"  {exc}", flush=True)
            wall = time.monotonic() - t0
        rows = _rows(dsn, "SELECT state, count(*), extract(epoch FROM min(created_at)), "
                     "extract(epoch FROM max(answered_at)) FROM action_attempts "
                     "WHERE intent_id LIKE 'burst-%' GROUP BY state")
        states = {r[0]: r[1] for r in rows}
        first = min(float(r[2]) for r in rows) if rows else None
        last = max(float(r[3]) for r in rows if r[3] is not None) if rows else None
        acked = states.get("ack", 0)
        span = (last - first) if first and last else None
        seen = nas.requests()
        per_session: dict = {}
        for s in seen:
            per_session[s.get("Acct-Session-Id")] = per_session.get(s.get("Acct-Session-Id"),
                                                                    0) + 1
        rep = cpu.report()
        out = {
            "burst": n, "nas": n_nas, "writers": args.writers,
            "attempt_states": states,
            "acked": acked,
            "first_send_to_last_answer_s": round(span, 3) if span else None,
            "exchanges_per_s": round(acked / span) if span else None,
            "produce_to_all_final_s": round(wall, 2),
            "produce_s": round(produced_s, 2),
            "exchanges_per_s_incl_produce": round(acked / wall) if wall else None,
            "flow_cpu_ms_per_exchange": round(cpu.p_s["enforce_flow"] / max(1, acked) * 1e3,
                                              3),
            "nas_requests": len(seen),
            "nas_sessions_sent_twice": sum(1 for v in per_session.values() if v > 1),
            "cpu": rep,
            "target_exchanges_per_s": 2000,
        }
        out["target_met"] = bool(span) and acked / span >= 2000
        out["ok"] = acked == n and out["nas_sessions_sent_twice"] == 0 and flow.alive()
        return out
    finally:
        if flow is not None:
            flow.stop()
        if nas is not None:
            nas.stop()
        _drop_db(args.admin_dsn, dsn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.enforce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="latency,throughput")
    ap.add_argument("--crossings", type=int, default=1000)
    ap.add_argument("--crossing-rate", type=float, default=12.0,
                    help="radclient invocations (crossings) per second")
    ap.add_argument("--bg-rate", type=int, default=2000, help="background packets/s")
    ap.add_argument("--bg-sessions", type=int, default=20000)
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--burst", type=int, default=20000, help="throttles in the burst")
    ap.add_argument("--nas", type=int, default=10, help="NAS in the throughput phase")
    ap.add_argument("--writers", type=int, default=1, help="ISPSTREAM_ENFORCE_WRITERS")
    ap.add_argument("--snapshot-s", type=float, default=2.0,
                    help="ISPSTREAM_SNAPSHOT_INTERVAL_S of the flows (their default)")
    ap.add_argument("--partitions", type=int, default=32,
                    help="partitions per topic on the embedded broker (~5 MiB kept each)")
    ap.add_argument("--drain-s", type=float, default=60.0)
    ap.add_argument("--admin-dsn", default=ADMIN_DSN)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]

    from ispstream.kafka import EmbeddedBroker

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    broker = EmbeddedBroker()
    tmp = Path(tempfile.mkdtemp(prefix="ispbench-enforce-"))
    result: dict = {"params": {k: v for k, v in vars(args).items() if k != "admin_dsn"}}
    ok = True
    try:
        for phase in phases:
            print(f"enforce bench: {phase}", flush=True)
            work = tmp / phase
            work.mkdir()
            fn = {"latency": run_latency, "throughput": run_throughput}[phase]
            res = fn(args, broker, work)
            result[phase] = res
            ok = ok and res.get("ok", False)
            print(json.dumps(res, indent=2), flush=True)
    finally:
        broker.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"work directory kept: {tmp}")
    result["machine"] = machine_info()
    print(f"result written to {write_result('enforce', result)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
