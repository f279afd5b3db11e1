"""Small helpers shared by the benchmarks: ports, process CPU, UDP counters, medians."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ADMIN_DSN = os.environ.get(
    "ISPSTREAM_BENCH_DATABASE_URL", "postgresql://ispstream:ispstream@127.0.0.1:5432/ispstream"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free right now on 127.0.0.1 (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def wait_until(pred: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll ``pred`` until it returns something truthy; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))


def dsn_for(db: str, admin_dsn: str = ADMIN_DSN) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{db}"


# --- /proc readings -----------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """user+system CPU seconds of ``pid`` (all threads), plus its live descendants."""
    total = 0
    for p in tree_pids(pid) if include_children else [pid]:
        f = _stat_fields(p)
        if f is not None:
            # fields after comm: state(0) ppid(1) ... utime(11) stime(12)
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """user+system CPU seconds of each live process in ``pids`` (no descendants)."""
    out = {}
    for p in pids:
        f = _stat_fields(p)
        if f is not None:
            out[p] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two ``cpu_by_pid`` readings; processes that appeared in between
    count in full (they started after ``before``), processes that ended are lost."""
    return sum(v - before.get(p, 0.0) for p, v in after.items())


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def udp_counters() -> dict[str, int]:
    """The ``Udp:`` line of /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()
             if ln.startswith("Udp:")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:])}


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat, in seconds."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def machine_info() -> dict:
    info = {"cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}
    try:
        rv = subprocess.run(["freeradius", "-v"], capture_output=True, text=True, timeout=10)
        info["freeradius"] = (rv.stdout or rv.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        info["freeradius"] = None
    try:
        rv = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10)
        info["git_commit"] = rv.stdout.strip() or None
        # uncommitted edits of tracked files: the figures are of the working tree
        rv = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                             "--untracked-files=no"], capture_output=True, text=True,
                            timeout=10)
        info["git_modified"] = [ln[3:] for ln in rv.stdout.splitlines()][:30]
    except OSError:
        info["git_commit"] = None
    try:
        info["udp_rmem_default"] = int(Path("/proc/sys/net/core/rmem_default").read_text())
    except OSError:
        pass
    from rating._compiled import status  # how the usage flow's hot modules ran

    info["hot_modules"] = sorted(set(status().values()))
    return info


def write_result(name: str, result: dict) -> Path:
    """Write ``result`` as JSON to bench/results/NAME-<utc time>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return path
