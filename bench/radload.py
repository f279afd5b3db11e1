"""RADIUS accounting load: a realistic Start/Interim/Stop mix, sent with radclient.

The load is deterministic (seeded): N sessions, each a Start, K Interim-Updates every
``interval`` seconds of event time with growing counters (octets wrap into gigawords for
the heavy users), and a Stop. Session start times are spread uniformly over one session
lifetime and all packets are ordered by event time, so the load opens with mostly Starts,
closes with mostly Stops and mixes all three in between, and consecutive packets of one
session are ~1,000 or more packets apart at the default size: radclient's ``-p 128``
window lets a server reorder packets only within ~128 of each other, so a session's
Start, Interims and Stop are still processed in order (``min_session_gap`` checks it).

radclient 3.2 slows down quadratically on big ``-f`` files, so the load is written as
chunk files of ~2,000 packets that are sent one after the other (or in a few parallel
lanes), each by its own radclient process with the same options for every target.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

# 2026-11-01T00:00:00Z: a fixed origin so the load is identical on every run
EPOCH_BASE = 1793491200

PARALLEL = 128  # packets in flight per radclient; more overflows a default UDP buffer
# -q quiet, -s summary (the answered count), each packet once, whole-second timeout,
# -r 1: one try (no retransmission; an unanswered packet counts as lost after 3 s)
RADCLIENT_OPTS = ["-q", "-s", "-c", "1", "-p", str(PARALLEL), "-t", "3", "-r", "1"]


@dataclasses.dataclass(frozen=True)
class Packet:
    session: int
    status: str           # Start | Interim-Update | Stop
    session_id: str
    username: str
    event_ts: int
    attrs: tuple[tuple[str, str], ...]

    def radclient_text(self) -> str:
        return "\n".join(f"{k} = {v}" for k, v in self.attrs) + "\n"


@dataclasses.dataclass
class Load:
    packets: list[Packet]
    chunks: list[Path]
    sessions: int
    interims: int
    min_gap: int
    chunk_size: int = 2000

    def chunk_sizes(self) -> list[int]:
        n = len(self.packets)
        return [min(self.chunk_size, n - i) for i in range(0, n, self.chunk_size)]

    def mix(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.packets:
            out[p.status] = out.get(p.status, 0) + 1
        return out

    def keys(self) -> set[tuple[str, str, int]]:
        """(Acct-Session-Id, status, Event-Timestamp) of every packet: unique per packet."""
        return {(p.session_id, p.status, p.event_ts) for p in self.packets}


def _split64(total: int) -> tuple[int, int]:
    return total & 0xFFFFFFFF, total >> 32


def generate(sessions: int, interims: int = 4, interval: int = 300, seed: int = 1,
             nas_ip: str = "127.0.0.1") -> list[Packet]:
    """The accounting packets of ``sessions`` sessions, ordered by event time."""
    rng = random.Random(seed)
    lifetime = (interims + 1) * interval
    packets: list[tuple[int, int, int, Packet]] = []
    for i in range(sessions):
        username = f"bench{i:06d}"
        session_id = f"{seed:02x}{i:08X}"
        framed_ip = f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"
        start = EPOCH_BASE + rng.randrange(lifetime)
        # download rate in bytes/s: most subscribers light, ~1 in 5 heavy enough to
        # cross 4 GiB within the session so gigawords are exercised
        heavy = rng.random() < 0.2
        down_rate = rng.uniform(1e6, 12e6) if heavy else rng.uniform(5e3, 1.5e6)
        up_rate = down_rate * rng.uniform(0.03, 0.25)
        # the Stop comes half to one interval after the last Interim, so the two are
        # thousands of packets apart in the file (see min_session_gap)
        stop_after = interims * interval + rng.randrange(interval // 2, interval)
        times = [0] + [j * interval for j in range(1, interims + 1)] + [stop_after]
        statuses = ["Start"] + ["Interim-Update"] * interims + ["Stop"]
        for seq, (t, status) in enumerate(zip(times, statuses)):
            jitter = 1.0 + rng.uniform(-0.05, 0.05) if t else 0.0
            down = int(down_rate * t * jitter)
            up = int(up_rate * t * jitter)
            in_oct, in_gw = _split64(up)        # Input = from the subscriber
            out_oct, out_gw = _split64(down)
            attrs = [
                ("Acct-Status-Type", status),
                ("User-Name", username),
                ("Acct-Session-Id", session_id),
                ("NAS-IP-Address", nas_ip),
                ("NAS-Port-Id", f"pon-0/{(i >> 7) & 0xF}/{i & 0x7F}"),
                ("Framed-IP-Address", framed_ip),
                ("Event-Timestamp", str(start + t)),
                ("Acct-Session-Time", str(t)),
                ("Acct-Input-Octets", str(in_oct)),
                ("Acct-Input-Gigawords", str(in_gw)),
                ("Acct-Output-Octets", str(out_oct)),
                ("Acct-Output-Gigawords", str(out_gw)),
            ]
            if status == "Start":
                attrs = [a for a in attrs if not a[0].startswith(("Acct-Input", "Acct-Output"))]
                attrs.append(("Acct-Interim-Interval", str(interval)))
            if status == "Stop":
                attrs.append(("Acct-Terminate-Cause", "User-Request"))
            pkt = Packet(i, status, session_id, username, start + t, tuple(attrs))
            packets.append((start + t, i, seq, pkt))
    packets.sort(key=lambda x: x[:3])
    return [p for *_, p in packets]


def min_session_gap(packets: list[Packet]) -> int:
    """The smallest distance, in file positions, between two packets of one session.

    radclient keeps up to ``-p`` packets in flight and a multi-threaded server may
    process those in any order; FreeRADIUS's stock SQL queries then leave an Interim that
    is processed after its session's Stop unanswered. A gap well above ``-p`` rules that
    out, so every target sees each session's packets in order.
    """
    last: dict[int, int] = {}
    gap = len(packets)
    for pos, p in enumerate(packets):
        if p.session in last:
            gap = min(gap, pos - last[p.session])
        last[p.session] = pos
    return gap


def write_chunks(packets: list[Packet], directory: Path, chunk_size: int = 2000) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, start in enumerate(range(0, len(packets), chunk_size)):
        path = directory / f"chunk-{n:04d}.txt"
        path.write_text("\n".join(p.radclient_text() for p in packets[start:start + chunk_size]))
        paths.append(path)
    return paths


def build(directory: Path, sessions: int, interims: int = 4, chunk_size: int = 2000,
          seed: int = 1) -> Load:
    packets = generate(sessions, interims, seed=seed)
    return Load(packets, write_chunks(packets, directory, chunk_size), sessions, interims,
                min_session_gap(packets), chunk_size)


# --- sending ------------------------------------------------------------------------

_SUMMARY = re.compile(r"^\s*(Accepted|Rejected|Lost|Passed filter|Failed filter)\s*:\s*(\d+)",
                      re.M)


def radclient_path() -> str:
    path = shutil.which("radclient")
    if not path:
        raise SystemExit("radclient is not installed (Debian package freeradius-utils; "
                         "scripts/bootstrap.sh installs it)")
    return path


@dataclasses.dataclass
class SendResult:
    sent: int
    answered: int
    rejected: int
    lost: int
    wall_s: float
    chunks: int
    failed_runs: int
    timed_out_runs: int
    stderr: list[str]
    aborted: str | None = None

    @property
    def acked_per_s(self) -> float:
        return self.answered / self.wall_s if self.wall_s else 0.0


def _run_one(radclient: str, chunk: Path, packets: int, target: str, secret: str,
             server_alive: Callable[[], bool] | None) -> dict:
    # radclient can hang when the server's port is closed: stop it when the server is
    # gone, or after the time it would take with every packet timing out
    limit = 30 + 2 * 3 * math.ceil(packets / PARALLEL)
    deadline = time.monotonic() + limit
    proc = subprocess.Popen([radclient, *RADCLIENT_OPTS, "-f", str(chunk), target, "acct",
                             secret], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            gone = server_alive is not None and not server_alive()
            if gone or time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                why = "the server exited" if gone else f"no exit after {limit} s"
                return {"rc": None, "accepted": 0, "rejected": 0, "lost": packets,
                        "summary": False, "timed_out": True,
                        "stderr": f"radclient killed: {why}"}
    counts = {k: int(v) for k, v in _SUMMARY.findall(out + err)}
    return {"rc": proc.returncode, "accepted": counts.get("Accepted", 0),
            "rejected": counts.get("Rejected", 0), "lost": counts.get("Lost", 0),
            "summary": "Accepted" in counts, "timed_out": False, "stderr": err.strip()}


def send(load: Load, host: str, port: int, secret: str, lanes: int = 1,
         server_alive: Callable[[], bool] | None = None) -> SendResult:
    """Send every chunk; ``lanes`` radclient processes at a time, each lane in order.

    Wall time runs from the first radclient's start to the last one's exit. Sending
    stops early (``aborted``) when ``server_alive()`` turns false or a radclient hangs.
    """
    radclient = radclient_path()
    target = f"{host}:{port}"
    results: list[dict | None] = [None] * len(load.chunks)
    sizes = load.chunk_sizes()

    aborted: list[str] = []

    def lane(k: int) -> None:
        for n in range(k, len(load.chunks), lanes):
            if aborted:
                return
            if server_alive is not None and not server_alive():
                aborted.append(f"the server exited before chunk {n}")
                return
            results[n] = _run_one(radclient, load.chunks[n], sizes[n], target, secret,
                                  server_alive)
            if results[n]["timed_out"]:
                aborted.append(f"chunk {n}: {results[n]['stderr']}")

    t0 = time.perf_counter()
    if lanes == 1:
        lane(0)
    else:
        threads = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    errors = [r["stderr"] for r in done if r["stderr"]]
    return SendResult(
        sent=len(load.packets),
        answered=sum(r["accepted"] for r in done),
        rejected=sum(r["rejected"] for r in done),
        lost=sum(r["lost"] for r in done),
        wall_s=wall,
        chunks=len(done),
        failed_runs=sum(1 for r in done if not r["summary"]),
        timed_out_runs=sum(1 for r in done if r["timed_out"]),
        stderr=errors[:5],
        aborted=aborted[0] if aborted else None,
    )


def probe(host: str, port: int, secret: str, session_id: str = "bench-probe",
          timeout: int = 2) -> bool:
    """One Accounting-Request (Start of a throwaway session); True if it was answered."""
    attrs = (f"Acct-Status-Type = Start\nUser-Name = bench-probe\n"
             f"Acct-Session-Id = {session_id}\nNAS-IP-Address = 127.0.0.1\n"
             f"Event-Timestamp = {int(time.time())}\n")
    rv = subprocess.run([radclient_path(), "-t", str(timeout), "-r", "1", f"{host}:{port}",
                         "acct", secret], input=attrs, capture_output=True, text=True)
    return rv.returncode == 0
