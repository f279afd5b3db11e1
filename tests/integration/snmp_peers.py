"""Real SNMP peers for tests: net-snmp's snmpd, snmpsim serving device recordings, a
silent UDP port, and net-snmp's snmptrap / snmpinform as senders.

- ``snmpd`` (fixture): snmpd on a free private port of 127.0.0.1 and 127.0.0.2, with a
  v2c community and a v3 authPriv user (SHA/AES); it serves the test host's own IF-MIB.
- ``snmpsim`` (fixture): ``snmpsim-command-responder`` from the venv serving every
  recording in ``tests/data/snmprec/ifmib`` (routers and OLTs; community = file name
  without ``.snmprec``) on a free port of 127.0.1.1, 127.0.1.2 and 127.0.1.3.
- ``SilentPort``: a bound UDP port that counts datagrams and never answers (a device
  that is down, without ICMP errors).
- ``send_trap``: ``snmptrap`` (or ``snmpinform``) from a chosen source address.

Missing programs fail the test under ``CI=true`` and skip it elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import missing_service

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "snmprec" / "ifmib"
SNMPD_COMMUNITY = "host-community"
V3_USER = "monitor"
V3_AUTH_KEY = "auth-pass-123"
V3_PRIV_KEY = "priv-pass-123"


def program(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", str(Path(sys.executable).with_name(name)))
         if os.path.exists(p)), None)
    if path is None:
        missing_service(f"the `{name}` program")
    return path


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def net_snmp_env(tmp: Path) -> dict:
    """net-snmp's tools with no user config and their persistent files in ``tmp``."""
    return {**os.environ, "MIBS": "", "MIBDIRS": "", "SNMPCONFPATH": str(tmp),
            "SNMP_PERSISTENT_DIR": str(tmp / "persist")}


def snmpget(host: str, port: int, community: str, oid: str, tmp: Path,
            timeout: float = 20) -> str | None:
    """One v2c GET with net-snmp's snmpget: the value text, or None without an answer."""
    res = subprocess.run([program("snmpget"), "-v2c", "-c", community, "-t", "1", "-r", "0",
                          "-Oqv", f"udp:{host}:{port}", oid], capture_output=True, text=True,
                         env=net_snmp_env(tmp), timeout=timeout)
    return res.stdout.strip() if res.returncode == 0 else None


def wait_answering(host: str, port: int, community: str, tmp: Path, proc: subprocess.Popen,
                   log: Path, timeout: float, oid: str = "1.3.6.1.2.1.1.1.0") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        if snmpget(host, port, community, oid, tmp) is not None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{proc.args[0]} did not answer on {host}:{port} within "
                         f"{timeout}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Snmpd:
    port: int
    addresses: tuple[str, ...]
    engine_id: str  # hex
    community: str = SNMPD_COMMUNITY
    user: str = V3_USER
    auth_key: str = V3_AUTH_KEY
    priv_key: str = V3_PRIV_KEY
    tmp: Path = field(default=Path("."), repr=False)


@pytest.fixture
def snmpd(tmp_path):
    """snmpd with the test host's IF-MIB on 127.0.0.1 and 127.0.0.2 (v2c and v3)."""
    binary = program("snmpd")
    program("snmpget")
    home = tmp_path / "snmpd"
    (home / "persist").mkdir(parents=True)
    port = free_udp_port()
    addresses = ("127.0.0.1", "127.0.0.2")
    conf = home / "snmpd.conf"
    conf.write_text(
        f"agentAddress {','.join(f'udp:{a}:{port}' for a in addresses)}\n"
        f"rocommunity {SNMPD_COMMUNITY} 127.0.0.0/8\n"
        f'createUser {V3_USER} SHA "{V3_AUTH_KEY}" AES "{V3_PRIV_KEY}"\n'
        f"rouser {V3_USER} priv\n")
    log = home / "snmpd.log"
    proc = subprocess.Popen([binary, "-f", "-C", "-c", str(conf), "-Lf", str(log),
                             "-p", str(home / "snmpd.pid")],
                            env={**net_snmp_env(home), "SNMP_PERSISTENT_DIR":
                                 str(home / "persist")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_answering("127.0.0.1", port, SNMPD_COMMUNITY, home, proc, log, 60)
        raw = snmpget("127.0.0.1", port, SNMPD_COMMUNITY, "1.3.6.1.6.3.10.2.1.1.0", home)
        engine_id = "".join(c for c in (raw or "").replace("Hex-STRING:", "")
                            if c in "0123456789abcdefABCDEF").lower()
        assert len(engine_id) >= 10, raw
        yield Snmpd(port, addresses, engine_id, tmp=home)
    finally:
        stop(proc)


@dataclass
class Snmpsim:
    port: int
    addresses: tuple[str, ...]
    communities: tuple[str, ...]
    data_dir: Path


@pytest.fixture
def snmpsim(tmp_path):
    """snmpsim serving the recordings on 127.0.1.1-3 (one free port)."""
    binary = program("snmpsim-command-responder")
    program("snmpget")
    home = tmp_path / "snmpsim"
    (home / "cache").mkdir(parents=True)
    port = free_udp_port("127.0.1.1")
    addresses = ("127.0.1.1", "127.0.1.2", "127.0.1.3")
    communities = tuple(sorted(p.stem for p in RECORDINGS.glob("*.snmprec")))
    log = home / "snmpsim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--data-dir={RECORDINGS}", f"--cache-dir={home / 'cache'}",
             *(f"--agent-udpv4-endpoint={a}:{port}" for a in addresses)],
            env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        for address in addresses:
            wait_answering(address, port, communities[0], home, proc, log, 120)
        yield Snmpsim(port, addresses, communities, RECORDINGS)
    finally:
        stop(proc)


class SilentPort:
    """A UDP port that receives and never answers; counts what it got."""

    def __init__(self, host: str = "127.0.1.9") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.datagrams += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def silent_port():
    port = SilentPort()
    yield port
    port.close()


def send_trap(tmp: Path, port: int, options: list[str], trap: list[str],
              source: str = "127.0.0.1", inform: bool = False,
              timeout: float = 30) -> subprocess.CompletedProcess:
    """``snmptrap`` (or ``snmpinform``) to 127.0.0.1:``port`` from ``source``:
    ``options`` are the version and security options, ``trap`` is
    ``['', TRAP-OID, OID, TYPE, VALUE, ...]``."""
    name = "snmpinform" if inform else "snmptrap"
    extra = ["-t", "2", "-r", "2"] if inform else []
    return subprocess.run([program(name), *extra, f"--clientaddr={source}", *options,
                           f"udp:127.0.0.1:{port}", *trap], capture_output=True, text=True,
                          env=net_snmp_env(tmp), timeout=timeout)


def parse_snmprec(path: Path) -> dict[str, tuple[str, str]]:
    """A recording as ``{oid: (type, value)}`` (values as written)."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def recorded_interfaces(path: Path) -> dict[int, dict]:
    """What a poll of the recording must report, per ifIndex (IF-MIB columns only)."""
    rec = parse_snmprec(path)
    fields = {"1.3.6.1.2.1.31.1.1.1.1": "name", "1.3.6.1.2.1.31.1.1.1.6": "in_octets",
              "1.3.6.1.2.1.31.1.1.1.10": "out_octets", "1.3.6.1.2.1.31.1.1.1.15":
              "high_speed_mbps", "1.3.6.1.2.1.31.1.1.1.18": "alias",
              "1.3.6.1.2.1.2.2.1.8": "oper_status", "1.3.6.1.2.1.2.2.1.7": "admin_status",
              "1.3.6.1.2.1.2.2.1.2": "descr"}
    out: dict[int, dict] = {}
    for oid, (kind, value) in rec.items():
        column, _, index = oid.rpartition(".")
        if column not in fields or not index.isdigit():
            continue
        if kind == "4x":
            value = bytes.fromhex(value).decode("utf-8", "replace")
        elif kind != "4":
            value = int(value)
        out.setdefault(int(index), {})[fields[column]] = value
    return out
