"""FreeRADIUS 3.2 as the NAS side of Dynamic Authorization (RFC 5176), for tests.

``FreeRadiusNas`` runs ``freeradius -f`` on a private config directory with one
``listen { type = coa }`` per listener; each listener answers every CoA-Request and
Disconnect-Request with an ACK (``"ack"``) or a NAK with Error-Cause
Session-Context-Not-Found (``"nak503"``), and logs every request it receives (type,
address, Event-Timestamp and all attributes, as FreeRADIUS decoded them) so tests can
count and inspect what the NAS saw. ``SilentPort`` is a bound port that never answers
(a NAS that is down, without ICMP errors). ``CountingNas`` is a small asyncio NAS that
ACKs every request after a delay, for tests that need a slow NAS (crash mid-flight).

Use the ``coa_nas`` fixture (import it into the test module) to start as many as needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import wait_until

_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = ${{exec_prefix}}/sbin
logdir = {dir}/log
raddbdir = {dir}
radacctdir = ${{logdir}}/radacct
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
run_dir = {dir}/run
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/${{name}}.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
  destination = stdout
  colourise = no
  auth = no
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}}
thread pool {{
  start_servers = 4
  max_servers = 8
  min_spare_servers = 2
  max_spare_servers = 8
  max_requests_per_server = 0
}}
client senders {{
  ipaddr = 127.0.0.0/8
  secret = {secret}
  require_message_authenticator = yes
}}
modules {{
  expr {{
  }}
  always ok {{
    rcode = ok
  }}
  always reject {{
    rcode = reject
  }}
  linelog requests {{
    filename = {dir}/log/requests.log
    format = "%{{Packet-Type}}|%{{Packet-Dst-IP-Address}}|%{{Packet-Dst-Port}}|\
%{{integer:Event-Timestamp}}|%{{pairs:request:}}"
  }}
}}
server nas_ack {{
  recv-coa {{
    requests
    ok
  }}
  send-coa {{
    ok
  }}
}}
server nas_nak503 {{
  recv-coa {{
    requests
    update reply {{
      &Error-Cause := Session-Context-Not-Found
    }}
    reject
  }}
  send-coa {{
    ok
  }}
}}
{listens}
"""

_LISTEN = """\
listen {{
  type = coa
  ipaddr = {ip}
  port = {port}
  virtual_server = nas_{mode}
}}
"""

_PAIR = re.compile(r'([A-Za-z0-9-]+(?::\d+)?) = ("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)')


@dataclass(frozen=True)
class SeenRequest:
    """One request as the NAS decoded it."""

    type: str  # CoA-Request | Disconnect-Request
    address: str  # ip:port it arrived at
    event_timestamp: int | None
    attributes: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.attributes if n == name]


def _parse_line(line: str) -> SeenRequest:
    ptype, ip, port, ts, pairs = line.rstrip("\n").split("|", 4)
    attrs = []
    for name, value in _PAIR.findall(pairs):
        if value.startswith('"'):
            value = value[1:-1].encode().decode("unicode_escape")
        attrs.append((name, value))
    return SeenRequest(ptype, f"{ip}:{port}", int(ts) if ts.isdigit() else None, tuple(attrs))


def free_udp_port(ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class FreeRadiusNas:
    """A FreeRADIUS process answering CoA/Disconnect on ``listeners`` [(ip, port, mode)]."""

    def __init__(self, binary: str, workdir: Path, secret: str,
                 listeners: list[tuple[str, int, str]]) -> None:
        self.binary = binary
        self.dir = Path(workdir)
        self.secret = secret
        self.listeners = listeners
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "FreeRadiusNas":
        for sub in ("log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        listens = "".join(_LISTEN.format(ip=ip, port=port, mode=mode)
                          for ip, port, mode in self.listeners)
        (self.dir / "radiusd.conf").write_text(
            _CONF.format(dir=self.dir, secret=self.secret, listens=listens))
        self._out = open(self.dir / "stdout.log", "ab")
        self._stopping = threading.Event()
        self.restarts = 0
        self._spawn(timeout)
        # The machine is shared: should something outside the test end the process,
        # start it again on the same ports (the request log is appended to).
        self._watchdog = threading.Thread(target=self._watch, daemon=True)
        self._watchdog.start()
        return self

    def _spawn(self, timeout: float = 30) -> None:
        readies = self.output().count("Ready to process requests")
        self.proc = subprocess.Popen([self.binary, "-f", "-l", "stdout", "-d", str(self.dir)],
                                     stdout=self._out, stderr=subprocess.STDOUT)
        wait_until(lambda: self._ready(readies), timeout, "FreeRADIUS to listen for CoA")

    def _ready(self, readies: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"FreeRADIUS exited: {self.output()[-2000:]}")
        return self.output().count("Ready to process requests") > readies

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            if self.proc.poll() is not None and not self._stopping.is_set():
                self.restarts += 1
                try:
                    self._spawn()
                except AssertionError:
                    pass  # retried on the next round

    def output(self) -> str:
        path = self.dir / "stdout.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self) -> list[SeenRequest]:
        path = self.dir / "log" / "requests.log"
        if not path.exists():
            return []
        return [_parse_line(line) for line in path.read_text().splitlines() if line]

    def stop(self) -> None:
        if self.proc is not None:
            self._stopping.set()
            self._watchdog.join(5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._out.close()


class SilentPort:
    """A bound UDP port that reads nothing and answers nothing."""

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.port = self.sock.getsockname()[1]

    def received(self) -> int:
        """Drain and count what arrived so far."""
        n = 0
        self.sock.setblocking(False)
        while True:
            try:
                self.sock.recv(4096)
                n += 1
            except BlockingIOError:
                return n

    def close(self) -> None:
        self.sock.close()


class CountingNas:
    """ACKs every CoA/Disconnect request after ``delay`` seconds (answers concurrently)
    and records each datagram as (Acct-Session-Id, Identifier, Request Authenticator)."""

    def __init__(self, ip: str, secret: str, delay: float = 0.05) -> None:
        self.ip, self.secret, self.delay = ip, secret.encode(), delay
        self.seen: list[tuple[str, int, bytes]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        nas = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                nas._record(data)
                nas._loop.call_later(nas.delay, self.transport.sendto, nas._ack(data), addr)

        self._transport, _ = self._loop.run_until_complete(
            self._loop.create_datagram_endpoint(Proto, local_addr=(self.ip, 0)))
        self.port = self._transport.get_extra_info("sockname")[1]
        ready.set()
        self._loop.run_forever()

    def _record(self, data: bytes) -> None:
        i, sid = 20, ""
        while i + 2 <= len(data):
            t, n = data[i], data[i + 1]
            if n < 2:
                break
            if t == 44:
                sid = data[i + 2:i + n].decode()
            i += n
        with self._lock:
            self.seen.append((sid, data[1], data[4:20]))

    def _ack(self, req: bytes) -> bytes:
        code = 41 if req[0] == 40 else 44
        header = bytes((code, req[1])) + (20).to_bytes(2, "big")
        return header + hashlib.md5(header + req[4:20] + self.secret).digest()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._transport.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def coa_nas(tmp_path, require_binary):
    """Start FreeRADIUS CoA receivers: ``coa_nas([(ip, port, mode), ...], secret=...)``."""
    binary = require_binary("freeradius")
    started: list[FreeRadiusNas] = []

    def start(listeners: list[tuple[str, int, str]], secret: str = "s3cret-nas") -> FreeRadiusNas:
        nas = FreeRadiusNas(binary, tmp_path / f"nas{len(started)}", secret, listeners)
        started.append(nas)
        return nas.start()

    yield start
    for nas in started:
        nas.stop()


@pytest.fixture
def silent_port():
    ports: list[SilentPort] = []

    def make(ip: str = "127.0.0.1") -> SilentPort:
        p = SilentPort(ip)
        ports.append(p)
        return p

    yield make
    for p in ports:
        p.close()


def wait_for_requests(nas: FreeRadiusNas, n: int, timeout: float = 30) -> list[SeenRequest]:
    return wait_until(lambda: (r := nas.requests()) and len(r) >= n and r, timeout,
                      f"{n} request(s) at the NAS")


__all__ = ["CountingNas", "FreeRadiusNas", "SeenRequest", "SilentPort", "coa_nas", "free_udp_port",
           "silent_port", "wait_for_requests"]
