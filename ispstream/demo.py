"""``ispstream demo``: the whole usage spine on embedded defaults.

Starts the embedded broker (unless ``ISPSTREAM_KAFKA_BOOTSTRAP`` is set), migrates the
database, applies the demo inventory, then runs the collector, the usage flow, the API
and a simulated NAS as child processes, and prints where to look. Ctrl-C stops them all.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ispstream.apikeys import create_key
from ispstream.db import migrate
from ispstream.inventory import apply_file
from ispstream.settings import Settings

log = logging.getLogger(__name__)

DEMO_INVENTORY = Path(__file__).resolve().parent.parent / "examples" / "inventory.yaml"
DEMO_TENANT = "demo"
DEMO_SECRET = "demo-secret"
DEMO_RADIUS = "127.0.0.1:18130"


def _ispstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "ispstream.cli", *args]


def start_broker(env: dict) -> tuple[subprocess.Popen, str]:
    """Start ``ispstream broker`` and return it with the bootstrap it printed."""
    proc = subprocess.Popen(_ispstream("broker"), stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("bootstrap="):
        proc.kill()
        raise RuntimeError(f"the embedded broker did not start (printed {line!r})")
    return proc, line.split("=", 1)[1]


def _wait_ready(procs: list[tuple[str, subprocess.Popen]], urls: dict[str, str],
                timeout: float = 60) -> None:
    """Wait until every URL answers; fail early, naming the process, if one exits."""
    pending = dict(urls)
    deadline = time.monotonic() + timeout
    while pending:
        for name, p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode} during start-up")
        for name, url in list(pending.items()):
            try:
                with urllib.request.urlopen(url, timeout=2):
                    del pending[name]
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(pending)}")
        time.sleep(0.3)


def main(settings: Settings, subscribers: int = 300, duration: float = 0) -> int:
    """Run the demo until Ctrl-C (or ``duration`` seconds)."""
    state = Path("var/demo")
    shutil.rmtree(state / "recovery", ignore_errors=True)  # the embedded broker starts empty
    env = dict(os.environ)
    env.update({
        "ISPSTREAM_DATABASE_URL": settings.dsn(),
        "ISPSTREAM_RECOVERY_DIR": str(state / "recovery"),
        "ISPSTREAM_SPOOL_DIR": str(state / "spool"),
        "ISPSTREAM_RADIUS_ACCT_ADDR": DEMO_RADIUS,
    })
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        print("migrating the database ...", flush=True)
        migrate(settings.dsn())
        print(apply_file(settings.dsn(), str(DEMO_INVENTORY)), flush=True)
        if settings.kafka_bootstrap:
            bootstrap = settings.kafka_bootstrap
        else:
            broker, bootstrap = start_broker(env)
            procs.append(("broker", broker))
        env["ISPSTREAM_KAFKA_BOOTSTRAP"] = bootstrap
        key = create_key(settings.dsn(), DEMO_TENANT, "operator")
        for name, args in (("collector", ("collect", "radius")), ("flow", ("flow", "usage")),
                           ("api", ("api",))):
            procs.append((name, subprocess.Popen(_ispstream(*args), env=env)))
        host, port = settings.api_bind
        api = f"http://{host}:{port}"
        _wait_ready(procs, {"collector": f"http://{settings.collector_metrics_addr}/metrics",
                            "api": f"{api}/healthz"})
        procs.append(("nas", subprocess.Popen(_ispstream(
            "simulate", "nas", "--target", DEMO_RADIUS, "--secret", DEMO_SECRET,
            "--subscribers", str(subscribers), "--username-prefix", "sub",
            "--interim", "10"), env=env)))
        print(f"""
ispstream demo is running
  Kafka bootstrap   {bootstrap}{"  (embedded: in memory, bounded retention)" if not settings.kafka_bootstrap else ""}
  RADIUS acct       udp://{DEMO_RADIUS}  secret {DEMO_SECRET!r}  (a simulated NAS is sending)
  Collector metrics http://{settings.collector_metrics_addr}/metrics
  API               {api}/docs   (OpenAPI)
  Operator API key  {key}

  curl -s -H 'Authorization: Bearer {key}' {api}/v1/subscribers/sub0001/cycle
  curl -s -H 'Authorization: Bearer {key}' '{api}/v1/subscribers/sub0001/usage?granularity=hour'
  curl -s -H 'Authorization: Bearer {key}' '{api}/v1/sessions?open=true&limit=5'
  psql {settings.dsn().rsplit('@', 1)[0].split('//')[0]}//…@{settings.dsn().rsplit('@', 1)[1]} -c 'select count(*) from usage_rated'

Ctrl-C stops everything.
""", flush=True)
        deadline = time.monotonic() + duration if duration else None
        while deadline is None or time.monotonic() < deadline:
            for name, p in procs:
                if p.poll() is not None:
                    print(f"{name} exited with code {p.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # Stop in reverse start order (the NAS first, the broker last), each one
        # finished before the next: the collector still has Kafka while it flushes.
        for _, p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
