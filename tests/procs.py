"""Helpers to run ispstream processes in tests as real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free right now on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll ``pred`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def read_metrics(port: int) -> dict[str, float]:
    """A process's Prometheus metrics on 127.0.0.1:``port`` by name (with labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def metrics(port: int) -> dict[str, float] | None:
    """``read_metrics``, or None while nothing answers there."""
    try:
        return read_metrics(port)
    except OSError:
        return None


class Proc:
    """An ``ispstream`` subprocess with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict, logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = {**os.environ, **env}
        self.popen = subprocess.Popen([sys.executable, "-m", "ispstream.cli", *args],
                                      env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=ROOT)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def radclient(path: str, port: int, secret: str, attrs: dict | str, timeout: int = 2,
              retries: int = 1) -> bool:
    """Send one Accounting-Request with FreeRADIUS's radclient; True if it was answered."""
    if isinstance(attrs, dict):
        attrs = ",".join(f"{k}={v}" for k, v in attrs.items())
    r = subprocess.run([path, "-t", str(timeout), "-r", str(retries), f"127.0.0.1:{port}",
                        "acct", secret], input=attrs + "\n", capture_output=True, text=True)
    return r.returncode == 0
