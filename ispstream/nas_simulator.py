"""A simulated NAS sending realistic RADIUS accounting (``ispstream simulate nas``).

Each subscriber has one session at a time: Accounting-On when the NAS "boots", then per
session a Start, an Interim-Update every ``interim`` seconds with counters that only
grow (heavy users pass 4 GiB within a few minutes, so Acct-*-Gigawords are used), and a
Stop with the final counters and a terminate cause; after a short pause the subscriber
reconnects with a new session. Packets are built with pyrad and the project's own
dictionary and carry a Message-Authenticator. Like a real NAS it waits for each
Accounting-Response (verifying it) and retransmits the identical packet on timeout.
Stopping (SIGTERM/SIGINT or ``duration``) sends a Stop for every open session.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import random
import secrets
import selectors
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from pyrad.packet import AccountingResponse, AcctPacket, PacketError

from collectors.radius import dictionary

log = logging.getLogger(__name__)

RETRY_TIMEOUT_S = 3.0
MAX_RETRIES = 5
SUMMARY_EVERY_S = 10.0
MAX_OUTSTANDING = 256  # one identifier each
TERMINATE_CAUSES = ["User-Request", "User-Request", "Lost-Carrier", "Idle-Timeout",
                    "Session-Timeout", "Port-Error", "Lost-Service"]


@dataclass
class Subscriber:
    username: str
    mac: str
    framed_ip: str
    port_id: str
    down_bps: float  # this subscriber's average rates while online
    up_bps: float
    session_id: str = ""
    started: float = 0.0
    updated: float = 0.0
    ends_at: float = 0.0
    input_octets: int = 0  # upload, from the subscriber (64-bit total)
    output_octets: int = 0  # download
    input_packets: int = 0
    output_packets: int = 0
    online: bool = False


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    index: int = field(compare=False)


@dataclass
class _Outstanding:
    raw: bytes
    packet: AcctPacket
    first_sent: float
    sent: float
    tries: int = 1


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    retransmits: int = 0
    lost: int = 0
    bad_replies: int = 0
    starts: int = 0
    interims: int = 0
    stops: int = 0
    rtt_ms: list[float] = field(default_factory=list)


class NasSimulator:
    """The simulated NAS. ``run()`` until ``stop`` is set or ``duration`` elapses."""

    def __init__(self, target: tuple[str, int], secret: bytes, subscribers: int,
                 username_prefix: str = "sub", interim_s: float = 10.0,
                 duration_s: float = 0.0, seed: int | None = None,
                 nas_identifier: str = "ispstream-sim", rate_scale: float = 1.0) -> None:
        """``rate_scale`` multiplies every subscriber's traffic (tests use it to reach
        gigawords within seconds)."""
        self.target = target
        self.secret = secret
        self.interim_s = max(interim_s, 0.1)
        self.duration_s = duration_s
        self.nas_identifier = nas_identifier
        self.rate_scale = rate_scale
        self.rng = random.Random(seed)
        self.dict = dictionary.load()
        self.stop = threading.Event()
        self.stats = Stats()
        self.sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        self.sock.connect(target)
        self.sock.setblocking(False)
        self.nas_ip = self.sock.getsockname()[0]
        self.subscribers = [self._new_subscriber(i, username_prefix)
                            for i in range(subscribers)]
        self._due: list[_Due] = []
        self._seq = 0
        self._outstanding: dict[int, _Outstanding] = {}
        self._backlog: list[AcctPacket] = []  # waiting for a free identifier
        self._free_ids = list(range(256))
        self.rng.shuffle(self._free_ids)

    def _new_subscriber(self, i: int, prefix: str) -> Subscriber:
        heavy = self.rng.random() < 0.1  # a tenth of the users stream all day
        down = self.rng.uniform(200e6, 900e6) if heavy else self.rng.lognormvariate(15, 1.2)
        return Subscriber(
            username=f"{prefix}{i:05d}",
            mac="02:00:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255,
                                             i & 255),
            framed_ip=f"100.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}",
            port_id=f"ge-0/0/{i % 48}.{100 + i // 48}",
            down_bps=min(down, 1e9),
            up_bps=min(down, 1e9) * self.rng.uniform(0.05, 0.3),
        )

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self, at: float, index: int) -> None:
        self._seq += 1
        heapq.heappush(self._due, _Due(at, self._seq, index))

    def _packet(self, status: str, sub: Subscriber | None, now: float,
                terminate_cause: str | None = None) -> AcctPacket:
        pkt = AcctPacket(dict=self.dict, secret=self.secret)
        pkt["Acct-Status-Type"] = status
        if ":" in self.nas_ip:
            pkt["NAS-IPv6-Address"] = self.nas_ip
        else:
            pkt["NAS-IP-Address"] = self.nas_ip
        pkt["NAS-Identifier"] = self.nas_identifier
        pkt["Event-Timestamp"] = int(now)
        pkt["Acct-Delay-Time"] = 0
        if sub is None:  # Accounting-On / -Off: the NAS itself
            pkt["Acct-Session-Id"] = f"{self.nas_identifier}-{int(now):x}"
        else:
            pkt["User-Name"] = sub.username
            pkt["Acct-Session-Id"] = sub.session_id
            pkt["NAS-Port-Id"] = sub.port_id
            pkt["NAS-Port-Type"] = "Ethernet"
            pkt["Service-Type"] = "Framed-User"
            pkt["Framed-Protocol"] = "PPP"
            pkt["Framed-IP-Address"] = sub.framed_ip
            pkt["Calling-Station-Id"] = sub.mac
            pkt["Acct-Authentic"] = "RADIUS"
            pkt["Acct-Interim-Interval"] = max(1, int(round(self.interim_s)))
        if sub is not None and status != "Start":
            pkt["Acct-Session-Time"] = int(now - sub.started)
            pkt["Acct-Input-Octets"] = sub.input_octets & 0xFFFFFFFF
            pkt["Acct-Input-Gigawords"] = sub.input_octets >> 32
            pkt["Acct-Output-Octets"] = sub.output_octets & 0xFFFFFFFF
            pkt["Acct-Output-Gigawords"] = sub.output_octets >> 32
            pkt["Acct-Input-Packets"] = sub.input_packets & 0xFFFFFFFF
            pkt["Acct-Output-Packets"] = sub.output_packets & 0xFFFFFFFF
        if terminate_cause:
            pkt["Acct-Terminate-Cause"] = terminate_cause
        pkt.add_message_authenticator()
        return pkt

    def _grow(self, sub: Subscriber, now: float) -> None:
        """Add the traffic since the last update (usage varies between intervals)."""
        seconds = max(0.0, now - sub.updated) * self.rate_scale
        sub.updated = now
        busy = self.rng.uniform(0.3, 1.2)
        up = int(sub.up_bps / 8 * seconds * busy)
        down = int(sub.down_bps / 8 * seconds * busy)
        sub.input_octets += up
        sub.output_octets += down
        sub.input_packets += up // 400 + 1
        sub.output_packets += down // 1200 + 1

    def _begin_session(self, sub: Subscriber, now: float) -> AcctPacket:
        sub.session_id = secrets.token_hex(8)
        sub.started = sub.updated = now
        sub.ends_at = now + self.rng.expovariate(1 / (self.interim_s * 30))
        sub.input_octets = sub.output_octets = 0
        sub.input_packets = sub.output_packets = 0
        sub.online = True
        self.stats.starts += 1
        return self._packet("Start", sub, now)

    def _next_packet(self, index: int, now: float) -> AcctPacket | None:
        """The packet subscriber ``index`` sends now; schedules its next one."""
        sub = self.subscribers[index]
        if not sub.online:
            pkt = self._begin_session(sub, now)
            self._schedule(min(now + self.interim_s, sub.ends_at), index)
            return pkt
        self._grow(sub, now)
        if now >= sub.ends_at:
            pkt = self._packet("Stop", sub, now, self.rng.choice(TERMINATE_CAUSES))
            sub.online = False
            self.stats.stops += 1
            self._schedule(now + self.rng.uniform(1.0, 5.0), index)  # reconnects
            return pkt
        self.stats.interims += 1
        self._schedule(min(now + self.interim_s, sub.ends_at), index)
        return self._packet("Interim-Update", sub, now)

    # -- sending and receiving -----------------------------------------------------

    def _send(self, pkt: AcctPacket, now: float) -> None:
        if not self._free_ids:
            self._backlog.append(pkt)
            return
        pkt.id = self._free_ids.pop()
        raw = pkt.RequestPacket()
        self._outstanding[pkt.id] = _Outstanding(raw, pkt, now, now)
        self.stats.sent += 1
        try:
            self.sock.send(raw)
        except OSError as exc:  # e.g. ECONNREFUSED from an earlier send: retried
            log.debug("send failed: %s", exc)

    def _receive(self, now: float) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable: the collector is not up yet
                continue
            if len(data) < 20 or data[0] != AccountingResponse:
                self.stats.bad_replies += 1
                continue
            out = self._outstanding.get(data[1])
            if out is None:
                continue  # a late duplicate reply
            try:
                reply = out.packet.CreateReply(packet=data)
                ok = out.packet.VerifyReply(reply, data)
            except PacketError:
                ok = False
            if not ok:
                self.stats.bad_replies += 1
                continue
            del self._outstanding[data[1]]
            self._free_ids.append(data[1])
            self.stats.acked += 1
            self.stats.rtt_ms.append((now - out.sent) * 1000)
            if self._backlog:
                self._send(self._backlog.pop(0), now)

    def _retransmit(self, now: float) -> None:
        for ident, out in list(self._outstanding.items()):
            if now - out.sent < RETRY_TIMEOUT_S:
                continue
            if out.tries > MAX_RETRIES:
                del self._outstanding[ident]
                self._free_ids.append(ident)
                self.stats.lost += 1
                log.warning("no Accounting-Response after %d tries: giving up on %s",
                            out.tries, out.packet.get("Acct-Session-Id", ["?"])[0])
                continue
            out.tries += 1
            out.sent = now
            self.stats.retransmits += 1
            try:
                self.sock.send(out.raw)  # identical: same identifier and authenticator
            except OSError:
                pass

    def _summary(self, now: float, began: float) -> None:
        s = self.stats
        rtts = sorted(s.rtt_ms)
        p50 = rtts[len(rtts) // 2] if rtts else 0.0
        p99 = rtts[int(len(rtts) * 0.99)] if rtts else 0.0
        online = sum(1 for sub in self.subscribers if sub.online)
        log.info("nas: %.0fs sent=%d acked=%d retransmits=%d lost=%d outstanding=%d "
                 "online=%d starts=%d interims=%d stops=%d rtt_ms p50=%.1f p99=%.1f",
                 now - began, s.sent, s.acked, s.retransmits, s.lost,
                 len(self._outstanding) + len(self._backlog), online, s.starts,
                 s.interims, s.stops, p50, p99)
        s.rtt_ms.clear()

    def run(self) -> Stats:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        began = time.time()
        # the NAS boots: Accounting-On, then subscribers connect over one interim
        self._send(self._packet("Accounting-On", None, began), began)
        for i in range(len(self.subscribers)):
            self._schedule(began + self.rng.uniform(0, self.interim_s), i)
        next_summary = began + SUMMARY_EVERY_S
        while not self.stop.is_set():
            now = time.time()
            if self.duration_s and now - began >= self.duration_s:
                break
            while self._due and self._due[0].at <= now:
                pkt = self._next_packet(heapq.heappop(self._due).index, now)
                if pkt is not None:
                    self._send(pkt, now)
            wait = min(0.2, max(0.0, (self._due[0].at - now) if self._due else 0.2))
            if sel.select(wait):
                self._receive(time.time())
            self._retransmit(time.time())
            if now >= next_summary:
                self._summary(now, began)
                next_summary = now + SUMMARY_EVERY_S
        self._close_sessions(sel)
        self._summary(time.time(), began)
        sel.close()
        self.sock.close()
        return self.stats

    def _close_sessions(self, sel: selectors.BaseSelector, grace_s: float = 3.0) -> None:
        """Stop every open session and wait (briefly) for the replies."""
        now = time.time()
        for sub in self.subscribers:
            if sub.online:
                self._grow(sub, now)
                pkt = self._packet("Stop", sub, now, "NAS-Request")
                sub.online = False
                self.stats.stops += 1
                self._send(pkt, now)
        deadline = now + grace_s
        while (self._outstanding or self._backlog) and time.time() < deadline:
            if sel.select(0.1):
                self._receive(time.time())
            self._retransmit(time.time())
        if self._outstanding or self._backlog:
            log.warning("%d Stop(s) unanswered at exit",
                        len(self._outstanding) + len(self._backlog))


def parse_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port)


def main(args: argparse.Namespace) -> int:
    """``ispstream simulate nas``: run until SIGTERM/SIGINT or ``--duration``."""
    sim = NasSimulator(parse_target(args.target), args.secret.encode(), args.subscribers,
                       args.username_prefix, args.interim, args.duration)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: sim.stop.set())
    log.info("simulating a NAS with %d subscribers -> %s:%d (interim %.0f s)",
             args.subscribers, *sim.target, args.interim)
    stats = sim.run()
    return 0 if stats.lost == 0 else 1
