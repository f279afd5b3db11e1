"""Latency: accounting packet sent -> visible in the usage API, under steady load.

A background NAS sends 1,000 Accounting-Requests/s (Interim-Updates of many sessions,
paced) to ``ispstream collect radius``; probe subscribers each send an Interim with new
totals and poll ``GET /v1/subscribers/{u}/usage`` until the API shows those exact bytes.
The latency of a probe = first time the API showed it - time the packet was sent.
Everything runs as the real processes (collector, usage flow, API) against PostgreSQL and
the embedded broker. Target: p99 <= 2 s at 1,000 packets/s.

    .venv/bin/python -m bench.latency [--rate 1000 --seconds 60 --probes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from pyrad.packet import AccountingRequest, AcctPacket

from bench._common import ADMIN_DSN, dsn_for, free_port, free_udp_port, machine_info, \
    wait_until, write_result
from collectors.radius.dictionary import load as load_dictionary
from ispstream import topics
from ispstream.apikeys import create_key
from ispstream.db import migrate
from ispstream.kafka import EmbeddedBroker

SECRET = b"bench-secret"


def _setup_db(load_sessions: int, probes: int) -> str:
    name = f"ispbench_lat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(name)
    migrate(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO tenants VALUES ('bench', 'Europe/Berlin', 'EUR')")
        conn.execute("INSERT INTO plans (tenant_id, id, monthly_fee, quota_bytes, "
                     "overage_per_gb) VALUES ('bench', 'p', 30, 100000000000, 1.5)")
        conn.execute("INSERT INTO nas (tenant_id, id, ip, secret) VALUES "
                     "('bench', 'bng', '127.0.0.1', %s)", (SECRET.decode(),))
        with conn.cursor().copy("COPY subscribers (tenant_id, username, plan_id) FROM STDIN") as cp:
            for i in range(load_sessions):
                cp.write_row(("bench", f"load{i}", "p"))
            for i in range(probes):
                cp.write_row(("bench", f"probe{i}", "p"))
    return dsn


def _packet(d, user: str, session: str, status: str, up: int, down: int) -> bytes:
    p = AcctPacket(code=AccountingRequest, secret=SECRET, dict=d)
    p["User-Name"] = user
    p["Acct-Session-Id"] = session
    p["Acct-Status-Type"] = status
    p["NAS-IP-Address"] = "127.0.0.1"
    p["Acct-Input-Octets"] = up % 2**32
    p["Acct-Input-Gigawords"] = up >> 32
    p["Acct-Output-Octets"] = down % 2**32
    p["Acct-Output-Gigawords"] = down >> 32
    return p.RequestPacket()


def _load_sender(d, port: int, rate: int, seconds: float, sessions: int, stop: threading.Event,
                 stats: dict) -> None:
    """Send ``rate`` packets/s, paced in 10 ms slices; count answers on the same socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    total = int(rate * seconds)
    packets = [_packet(d, f"load{i % sessions}", f"L{i % sessions}",
                       "Interim-Update", (i // sessions + 1) * 1000, (i // sessions + 1) * 9000)
               for i in range(total)]
    start = time.monotonic()
    sent = answered = 0
    while sent < total and not stop.is_set():
        due = min(total, int((time.monotonic() - start) * rate))
        while sent < due:
            sock.sendto(packets[sent], ("127.0.0.1", port))
            sent += 1
        try:
            while True:
                sock.recv(4096)
                answered += 1
        except BlockingIOError:
            pass
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while answered < sent and time.monotonic() < deadline:
        try:
            sock.recv(4096)
            answered += 1
        except BlockingIOError:
            time.sleep(0.01)
    stats.update(sent=sent, answered=answered, seconds=time.monotonic() - start)


def _probe(d, idx: int, port: int, api: str, key: str, stop: threading.Event,
           latencies: list, errors: list) -> None:
    user, session = f"probe{idx}", f"P{idx}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    frm = datetime(2000, 1, 1, tzinfo=timezone.utc).isoformat()
    step = 0
    while not stop.is_set():
        step += 1
        up = step * 1_000
        pkt = _packet(d, user, session, "Interim-Update", up, step * 2_000)
        t_send = time.monotonic()
        sock.sendto(pkt, ("127.0.0.1", port))
        to = datetime(2100, 1, 1, tzinfo=timezone.utc).isoformat()
        url = f"{api}/v1/subscribers/{user}/usage?from={frm}&to={to}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        seen = None
        while time.monotonic() - t_send < 10:
            with urllib.request.urlopen(req, timeout=5) as r:
                if json.loads(r.read())["upload_bytes"] == up:
                    seen = time.monotonic()
                    break
            time.sleep(0.02)
        if seen is None:
            errors.append(f"{user} step {step} not visible after 10 s")
        else:
            latencies.append(seen - t_send)
        time.sleep(0.05)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    ap.add_argument("--rate", type=int, default=1000, help="background packets/s")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sessions", type=int, default=5000, help="background sessions")
    ap.add_argument("--probes", type=int, default=4, help="concurrent probe subscribers")
    args = ap.parse_args(argv)

    d = load_dictionary()
    broker = EmbeddedBroker()
    prefix = f"benchlat{uuid.uuid4().hex[:6]}."
    for t in topics.ALL_TOPICS:
        broker.create_topic(prefix + t, 16)
    dsn = _setup_db(args.sessions, args.probes)
    key = create_key(dsn, "bench", "operator")
    radius_port, api_port = free_udp_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="ispbench-lat-"))
    env = {**os.environ, "ISPSTREAM_DATABASE_URL": dsn,
           "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap, "ISPSTREAM_TOPIC_PREFIX": prefix,
           "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{radius_port}",
           "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{free_port()}",
           "ISPSTREAM_API_ADDR": f"127.0.0.1:{api_port}",
           "ISPSTREAM_SPOOL_DIR": str(tmp / "spool"),
           "ISPSTREAM_RECOVERY_DIR": str(tmp / "recovery")}
    procs = []
    for args_ in (["collect", "radius"], ["flow", "usage"], ["api"]):
        log = open(tmp / f"{args_[0]}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "ispstream.cli", *args_],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{api}/healthz", timeout=2).status == 200,
                   60, "the API")
        print(f"latency bench: {args.rate} packets/s background over {args.sessions} "
              f"sessions for {args.seconds:.0f} s, {args.probes} probes", flush=True)
        stop = threading.Event()
        latencies: list[float] = []
        errors: list[str] = []
        load_stats: dict = {}
        load = threading.Thread(target=_load_sender, args=(d, radius_port, args.rate,
                                args.seconds, args.sessions, stop, load_stats))
        load.start()
        time.sleep(2)  # probes measure under load, not during start-up
        probes = [threading.Thread(target=_probe, args=(d, i, radius_port, api, key, stop,
                                                        latencies, errors))
                  for i in range(args.probes)]
        for p in probes:
            p.start()
        load.join()
        stop.set()
        for p in probes:
            p.join()
        if not latencies:
            print("no probe became visible", file=sys.stderr)
            return 1
        result = {
            "background_rate": args.rate,
            "background_sent": load_stats.get("sent"),
            "background_answered": load_stats.get("answered"),
            "background_achieved_rate": round(load_stats["sent"] / load_stats["seconds"]),
            "probes": len(latencies),
            "probe_errors": errors[:10],
            "p50_s": round(statistics.median(latencies), 3),
            "p90_s": round(_pct(latencies, 90), 3),
            "p99_s": round(_pct(latencies, 99), 3),
            "max_s": round(max(latencies), 3),
            "target_p99_s": 2.0,
            "machine": machine_info(),
        }
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
        print(f"result written to {write_result('latency', result)}")
        return 0 if not errors else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.close()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
