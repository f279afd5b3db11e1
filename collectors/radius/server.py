"""The RADIUS accounting collector: UDP Accounting-Requests in, AcctEvent JSON to Kafka.

One process, one UDP socket, one loop. Each loop iteration:

1. drains up to ``RECV_BATCH`` datagrams from the non-blocking socket; each one is
   checked (known source, length, code, Request Authenticator, attributes,
   Message-Authenticator, session id, NAS identity, status) and becomes one AcctEvent
   JSON record keyed ``tenant/nas/session``;
2. hands the records to Kafka (idempotent producer, acks=all) with a delivery callback,
   or, while the spool is in use, keeps them for the spool;
3. polls the producer: delivered records are ready to be answered; records Kafka could
   not take within ``kafka_delivery_timeout_ms`` go to the spool;
4. writes those to the spool; its syncer thread fsyncs everything written so far in one
   fsync while the loop goes on (group commit);
5. sends the Accounting-Responses of every record that is now durable;
6. lets the drainer re-produce spooled records, in order, and advance the spool only
   past what Kafka confirmed.

An Accounting-Response is sent only once the record is durable (delivered, or fsynced in
the spool); otherwise none, and the NAS retransmits. A retransmit (same source address,
identifier and authenticator) of a record still in flight is not produced again and is
answered when the record becomes durable; one answered in the last few seconds gets the
same reply again.

Ordering: while the spool is in use, new records go to the spool too, after every record
still in flight at Kafka has settled, so one session's records stay in order. Records go
to Kafka directly again once Kafka has taken spooled records and every spooled record has
been handed to the producer, which keeps each partition in order. (A record whose
delivery times out just as Kafka comes back can still land after a newer one of its
session: consumers must tolerate reordering, as the accounting rules require anyway.)
Delivery is at least once: a record that timed out may still have reached Kafka, and a
crash between delivery and the spool commit re-delivers; consumers deduplicate by content.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import hmac
import logging
import os
import select
import signal
import socket
import threading
import time

from confluent_kafka import KafkaError, Producer

from collectors.radius import codec
from collectors.radius.events import EventEncoder, timestamp
from collectors.radius.inventory import Inventory
from collectors.radius.metrics import MetricsServer, render_family
from collectors.radius.spool import Spool, SpoolError
from ispstream import topics
from ispstream.kafka import producer_config
from ispstream.settings import Settings

log = logging.getLogger(__name__)

RECV_BATCH = 32  # datagrams per loop iteration: small, so replies flow while reading
SPOOL_RECV_BATCH = 1024  # while spooling: one fsync per iteration covers the whole batch
RCVBUF_BYTES = 8 * 1024 * 1024
DUPLICATE_WINDOW_S = 5.0  # answered requests are remembered 5..10 s
DRAIN_MAX_INFLIGHT = 20_000
DRAIN_PROBE = 16  # records in flight while it is not known that Kafka takes them
DRAIN_BATCH = 5_000
DRAIN_RETRY_S = 1.0
SPOOL_COMMIT_INTERVAL_S = 0.2
SUMMARY_INTERVAL_S = 60.0
SHUTDOWN_GRACE_S = 1.0  # then records still queued for Kafka are purged
SHUTDOWN_MAX_S = 30.0
MAX_NOTED_DROPS = 20  # drops logged individually per summary interval
LINGER_MS = 1
GC_THRESHOLD = 50_000  # allocations between young-generation collections
NAGLE_OFF = True

RESULTS = (
    "acked",  # delivered to Kafka, answered
    "spooled",  # written to the local spool, answered
    "duplicate",  # a retransmit of a request in flight or answered recently
    "unknown_source",
    "malformed",
    "unsupported_code",
    "bad_authenticator",
    "bad_message_authenticator",
    "missing_message_authenticator",
    "missing_session_id",
    "missing_nas_identity",
    "unsupported_status_type",
    "failed",  # neither Kafka nor the spool took it: not answered
)

_md5 = hashlib.md5
_compare = hmac.compare_digest
_ZERO16 = codec.ZERO16
# Code, Identifier and Length of an Accounting-Response without attributes, by identifier
_RESPONSE_HEAD = [bytes((codec.ACCOUNTING_RESPONSE, i, 0, codec.HEADER_LEN))
                  for i in range(256)]


class Pending:
    """One accepted request between receipt and its reply."""

    __slots__ = ("key", "addr", "reply", "mkey", "value", "err", "sink")

    def __init__(self, key, addr, reply: bytes, mkey: bytes, value: bytes, sink: list):
        self.key = key
        self.addr = addr
        self.reply = reply
        self.mkey = mkey
        self.value = value
        self.err = None
        self.sink = sink

    def delivered(self, err, msg) -> None:  # librdkafka delivery report
        self.err = err
        self.sink.append(self)


class DrainItem:
    """One spooled record being re-produced; ``ok`` is None until its report."""

    __slots__ = ("end", "ok")

    def __init__(self, end) -> None:
        self.end = end
        self.ok = None

    def delivered(self, err, msg) -> None:
        self.ok = err is None


class Collector:
    """The receive / produce / spool / reply loop. Build with real or test adapters."""

    def __init__(self, sock: socket.socket, producer: Producer, topic: str,
                 spool: Spool, inventory: Inventory) -> None:
        self.sock = sock
        self.producer = producer
        self.topic = topic
        self.spool = spool
        self.inventory = inventory
        self.decode = codec.Decoder()
        self.events = EventEncoder()
        self.stopping = threading.Event()

        self.counts = dict.fromkeys(RESULTS, 0)
        self.stats = {"replies": 0, "reply_errors": 0, "delivery_failures": 0,
                      "drained": 0, "drain_failures": 0}

        self._inflight: dict = {}  # request key -> Pending, until answered or dropped
        self._produced = 0  # Pendings handed to the producer and not yet reported
        self._reports: list[Pending] = []  # delivery reports of this iteration
        self._held: list[Pending] = []  # spool mode: waiting for _produced == 0
        self._to_spool: list[Pending] = []
        self._replies: list[Pending] = []
        self._answered = {}  # request key -> reply, this window
        self._answered_old = {}  # previous window
        self._next_rotate = time.monotonic() + DUPLICATE_WINDOW_S

        self._drain: collections.deque[DrainItem] = collections.deque()
        self._drain_failed = False
        self._drain_retry_at = 0.0
        self._kafka_ok = False  # a spooled record was delivered since the last failure
        self._drain_done_end = None
        self._drain_done_count = 0
        self._last_commit = 0.0

        self._spool_waiters: collections.deque[tuple[int, list[Pending]]] = \
            collections.deque()  # (ticket, requests) until the spool has synced them
        self._wake_r, self._wake_w = os.pipe()  # the spool's syncer wakes the loop
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        spool.wakeup_fd = self._wake_w

        self.spooling = not spool.empty
        if self.spooling:
            log.info("spool holds %d record(s): new records are spooled until it is "
                     "drained", spool.depth)
        self._next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        self._summary_base = dict(self.counts)
        self._noted: set[tuple[str, str]] = set()

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        poller = select.poll()
        sock_fd = self.sock.fileno()
        poller.register(sock_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self.stopping.is_set():
            if self._produced or self._drain:
                # Waiting for Kafka: take datagrams at once, look for delivery reports at
                # least every millisecond (confluent-kafka exposes no descriptor to wait on).
                # Blocking in the socket poll, not in the producer's, keeps the loop from
                # spinning once per delivery report at moderate rates.
                events = poller.poll(1)
            else:
                events = poller.poll(1 if self._held else 100)
            for fd, _ in events:
                if fd == sock_fd:
                    self._receive()
                else:
                    self._drain_wakeups()
            self._settle()
            self._housekeeping()
        self._shutdown()

    def close(self) -> None:
        """Release the loop's own resources (not the adapters it was given)."""
        self.spool.wakeup_fd = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _receive(self) -> None:
        """Handle up to RECV_BATCH datagrams waiting on the socket."""
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        lookup = self.inventory.lookup
        by_ip = self.inventory.by_ip
        counts = self.counts
        inflight = self._inflight
        answered = self._answered
        answered_old = self._answered_old
        reports = self._reports
        produce = self.producer.produce
        topic = self.topic
        spooling = self.spooling
        decode = self.decode
        encode_event = self.events.encode
        now = time.time
        stamp = timestamp(now())
        n = 0
        limit = SPOOL_RECV_BATCH if spooling else RECV_BATCH
        while n < limit:
            try:
                data, addr = recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            n += 1
            if not n & 31:
                stamp = timestamp(now())  # arrival time, to a read batch (< 1 ms)
            entry = by_ip.get(addr[0]) or lookup(addr[0])
            if entry is None:
                counts["unknown_source"] += 1
                self._note_drop("unknown_source", addr)
                continue
            dlen = len(data)
            if dlen < 20:
                counts["malformed"] += 1
                continue
            length = (data[2] << 8) | data[3]
            if length < 20 or length > dlen or length > 4096:
                counts["malformed"] += 1
                continue
            if length != dlen:
                data = data[:length]
            if data[0] != 4:
                counts["unsupported_code"] += 1
                continue
            secret = entry.secret
            if not _compare(_md5(data[:4] + _ZERO16 + data[20:] + secret).digest(),
                            data[4:20]):
                counts["bad_authenticator"] += 1
                self._note_drop("bad_authenticator", addr)
                continue
            key = (addr, data[:20])
            if key in inflight:
                counts["duplicate"] += 1
                continue
            reply = answered.get(key) or answered_old.get(key)
            if reply is not None:
                counts["duplicate"] += 1
                try:
                    sendto(reply, addr)
                except OSError:
                    self.stats["reply_errors"] += 1
                continue
            try:
                fields, _, has_identity, ma_at, proxy_states = decode(data)
            except codec.MalformedPacket:
                counts["malformed"] += 1
                continue
            if ma_at >= 0:
                if not codec.message_authenticator_ok(data, secret, ma_at):
                    counts["bad_message_authenticator"] += 1
                    self._note_drop("bad_message_authenticator", addr)
                    continue
            elif entry.require_ma:
                counts["missing_message_authenticator"] += 1
                self._note_drop("missing_message_authenticator", addr)
                continue
            session_id = fields.get("session_id")
            if not session_id:
                counts["missing_session_id"] += 1
                continue
            if not has_identity:
                counts["missing_nas_identity"] += 1
                continue
            if "status" not in fields:
                counts["unsupported_status_type"] += 1
                continue
            if ma_at < 0 and proxy_states is None:
                head = _RESPONSE_HEAD[data[1]]
                reply = head + _md5(head + data[4:20] + secret).digest()
            else:
                reply = codec.accounting_response(data[1], data[4:20], secret,
                                                  message_authenticator=ma_at >= 0,
                                                  proxy_states=proxy_states)
            p = Pending(key, addr, reply,
                        (entry.key_prefix + session_id).encode(),
                        encode_event(entry.json_prefix, fields, stamp), reports)
            inflight[key] = p
            if spooling:
                self._held.append(p)
                continue
            try:
                produce(topic, p.value, p.mkey, on_delivery=p.delivered)
            except BufferError:
                p.err = KafkaError(KafkaError._QUEUE_FULL)
                self._to_spool.append(p)
                self._enter_spool_mode("the producer queue is full")
                spooling = True
                continue
            self._produced += 1

    def _note_drop(self, reason: str, addr) -> None:
        """Log the first drops per reason and source of each summary interval."""
        noted = (reason, addr[0])
        if noted not in self._noted and len(self._noted) < MAX_NOTED_DROPS:
            self._noted.add(noted)
            log.warning("dropped a request from %s: %s (further ones are only counted "
                        "until the next summary)", addr[0], reason.replace("_", " "))

    def _settle(self) -> None:
        """Delivery reports, spool writes, replies, draining: what makes records durable."""
        self.producer.poll(0)
        reports = self._reports
        if reports:
            batch = reports[:]
            reports.clear()
            self._produced -= len(batch)
            counts = self.counts
            replies = self._replies
            for p in batch:
                if p.err is None:
                    replies.append(p)
                    counts["acked"] += 1
                else:
                    self.stats["delivery_failures"] += 1
                    self._to_spool.append(p)
                    self._kafka_ok = False
                    if not self.spooling:
                        self._enter_spool_mode(f"Kafka delivery failed: {p.err}")
        if self.spooling and self._held and not self._produced:
            # everything produced before the switch has settled: keep per-key order
            self._to_spool.extend(self._held)
            self._held.clear()
        if self._to_spool:
            self._write_spool()
        if self._spool_waiters:
            self._release_spooled()
        if self._replies:
            self._send_replies()
        if self.spooling or self._drain or not self.spool.clean:
            self._drain_step()

    def _enter_spool_mode(self, why: str) -> None:
        self.spooling = True
        log.warning("%s: spooling records locally until Kafka takes them again", why)

    def _write_spool(self) -> None:
        """Write to the spool; the syncer thread fsyncs while the loop goes on."""
        batch = self._to_spool
        self._to_spool = []
        spool = self.spool
        for p in batch:
            spool.append(p.mkey, p.value)
        try:
            ticket = spool.write()
        except SpoolError:
            self._unanswered(batch)
            return
        self._spool_waiters.append((ticket, batch))

    def _release_spooled(self) -> None:
        """Answer what the syncer has made durable (group commit)."""
        waiters = self._spool_waiters
        synced = self.spool.synced
        while waiters and waiters[0][0] <= synced:
            batch = waiters.popleft()[1]
            self.counts["spooled"] += len(batch)
            self._replies.extend(batch)
        if waiters and self.spool.error is not None:
            while waiters:
                self._unanswered(waiters.popleft()[1])

    def _unanswered(self, batch: list[Pending]) -> None:
        log.error("the spool could not take %d request(s): left unanswered (the NAS "
                  "retransmits)", len(batch))
        for p in batch:
            self._inflight.pop(p.key, None)
        self.counts["failed"] += len(batch)

    def _send_replies(self) -> None:
        sendto = self.sock.sendto
        inflight = self._inflight
        answered = self._answered
        errors = 0
        for p in self._replies:
            try:
                sendto(p.reply, p.addr)
            except OSError:
                errors += 1  # the record is durable; the retransmit gets the reply
            inflight.pop(p.key, None)
            answered[p.key] = p.reply
        self.stats["replies"] += len(self._replies) - errors
        self.stats["reply_errors"] += errors
        self._replies.clear()

    # -- draining the spool --------------------------------------------------------

    def _drain_step(self) -> None:
        spool = self.spool
        drain = self._drain
        while drain and drain[0].ok is not None:
            item = drain.popleft()
            if item.ok and not self._drain_failed:
                self._drain_done_end = item.end
                self._drain_done_count += 1
                self._kafka_ok = True
            elif not item.ok:
                self._kafka_ok = False
                if not self._drain_failed:
                    log.warning("re-producing spooled records failed; retrying in %.0f s",
                                DRAIN_RETRY_S)
                    self.stats["drain_failures"] += 1
                    if not self.spooling:
                        self._enter_spool_mode("Kafka delivery of spooled records failed")
                self._drain_failed = True
        if self._drain_failed and not drain:
            self._commit_drained()
            spool.rewind()
            self._drain_failed = False
            self._drain_retry_at = time.monotonic() + DRAIN_RETRY_S

        now = time.monotonic()
        if self._drain_done_count and (not drain or
                                       now - self._last_commit >= SPOOL_COMMIT_INTERVAL_S):
            self._commit_drained()

        if (not self._drain_failed and now >= self._drain_retry_at
                and not self.stopping.is_set()):
            room = (DRAIN_MAX_INFLIGHT if self._kafka_ok else DRAIN_PROBE) - len(drain)
            if room > 0 and spool.depth:
                produce = self.producer.produce
                topic = self.topic
                for key, value, end in spool.read(min(room, DRAIN_BATCH)):
                    item = DrainItem(end)
                    try:
                        produce(topic, value, key, on_delivery=item.delivered)
                    except BufferError:
                        spool.rewind()
                        self._drain_failed = True
                        self._drain_retry_at = now + DRAIN_RETRY_S
                        break
                    drain.append(item)

        if (self.spooling and self._kafka_ok and spool.all_read and not self._drain_failed
                and not self._held and not self._to_spool and not self._produced
                and not self._spool_waiters):
            # Kafka takes spooled records again and every one of them has been handed to
            # the producer, which keeps each partition in order: new records can follow
            # them directly.
            self.spooling = False
            log.info("spool caught up (%d record(s) still awaiting Kafka): records go to "
                     "Kafka directly again", len(drain))
        if not self.spooling and not drain and spool.empty and not spool.clean:
            spool.reset()

    def _commit_drained(self) -> None:
        if self._drain_done_count:
            self.spool.commit(self._drain_done_end, self._drain_done_count)
            self.stats["drained"] += self._drain_done_count
            self._drain_done_count = 0
            self._last_commit = time.monotonic()

    # -- periodic work and shutdown ------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_rotate:
            self._answered_old = self._answered
            self._answered = {}
            self._next_rotate = now + DUPLICATE_WINDOW_S
        if now >= self._next_summary:
            self._next_summary = now + SUMMARY_INTERVAL_S
            delta = {k: v - self._summary_base[k] for k, v in self.counts.items()}
            self._summary_base = dict(self.counts)
            self._noted.clear()
            if not any(delta.values()) and not self.spool.depth:
                return
            dropped = {k: v for k, v in delta.items()
                       if v and k not in ("acked", "spooled", "duplicate")}
            log.info("last %.0f s: acked=%d spooled=%d duplicate=%d dropped=%s "
                     "spool_depth=%d", SUMMARY_INTERVAL_S, delta["acked"],
                     delta["spooled"], delta["duplicate"], dropped or 0, self.spool.depth)

    def _shutdown(self) -> None:
        """Stop reading; settle what is in flight; answer what became durable."""
        log.info("stopping: settling %d request(s) in flight", len(self._inflight))
        started = time.monotonic()
        purged = False
        while time.monotonic() - started < SHUTDOWN_MAX_S and (
                self._produced or self._held or self._drain or self._spool_waiters):
            if not purged and time.monotonic() - started > SHUTDOWN_GRACE_S:
                # Records Kafka has not even been sent by now fail at once: requests go
                # to the spool (and are answered), spooled records simply stay there.
                self.producer.purge(in_queue=True, in_flight=False)
                purged = True
            self.producer.poll(0.01)
            self._settle()
        self._settle()
        if self._drain_done_count:
            self._commit_drained()
        left = len(self._inflight)
        if left:
            log.warning("%d request(s) were not durable at exit and stay unanswered "
                        "(the NAS retransmits)", left)
        self.producer.flush(5)

    # -- metrics -------------------------------------------------------------------

    def render_metrics(self) -> str:
        counts = self.counts.copy()
        stats = self.stats.copy()
        parts = [
            render_family("ispstream_radius_packets_total", "counter",
                          "Accounting datagrams by outcome.",
                          [({"result": k}, v) for k, v in counts.items()]),
            render_family("ispstream_radius_replies_total", "counter",
                          "Accounting-Responses sent.", [({}, stats["replies"])]),
            render_family("ispstream_radius_reply_errors_total", "counter",
                          "Accounting-Responses the socket refused.",
                          [({}, stats["reply_errors"])]),
            render_family("ispstream_radius_kafka_delivery_failures_total", "counter",
                          "Records Kafka did not confirm in time (then spooled).",
                          [({}, stats["delivery_failures"])]),
            render_family("ispstream_radius_spool_drained_total", "counter",
                          "Spooled records delivered to Kafka.", [({}, stats["drained"])]),
            render_family("ispstream_radius_spool_depth", "gauge",
                          "Records in the local spool not yet delivered to Kafka.",
                          [({}, self.spool.depth)]),
            render_family("ispstream_radius_spooling", "gauge",
                          "1 while new records go to the spool instead of Kafka.",
                          [({}, int(self.spooling))]),
            render_family("ispstream_radius_inflight", "gauge",
                          "Accepted requests not yet durable (not yet answered).",
                          [({}, len(self._inflight))]),
            render_family("ispstream_radius_nas", "gauge", "NAS in the loaded table.",
                          [({}, len(self.inventory.by_ip))]),
        ]
        return "".join(parts)


# -- composition root --------------------------------------------------------------

def open_socket(bind: tuple[str, int]) -> socket.socket:
    host, port = bind
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF_BYTES)
            break
        except OSError:
            continue
    sock.bind((host, port))
    sock.setblocking(False)
    log.info("listening for accounting on udp %s:%d (receive buffer %d bytes)",
             f"[{host}]" if ":" in host else host, sock.getsockname()[1],
             sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return sock


def make_producer(settings: Settings) -> Producer:
    kafka_log = logging.getLogger("ispstream.kafka.producer")
    errors = {"last": 0.0}

    def on_error(err) -> None:
        now = time.monotonic()
        if now - errors["last"] >= 30:
            errors["last"] = now
            kafka_log.warning("Kafka: %s", err)

    conf = producer_config(
        settings.require_kafka(), settings.kafka_config,
        **{
            # tunable through ISPSTREAM_KAFKA_CONFIG: every acknowledged request waits
            # for its delivery report, so lingering adds straight to the NAS's latency
            "linger.ms": LINGER_MS,
            "queue.buffering.max.messages": 1_000_000,
            "socket.nagle.disable": NAGLE_OFF,
            "client.id": "ispstream-collect-radius",
            **settings.kafka_config,
            # not tunable: what an Accounting-Response promises depends on these
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": settings.kafka_delivery_timeout_ms,
            "error_cb": on_error,
            "logger": kafka_log,
        },
    )
    return Producer(conf)


def main(settings: Settings) -> int:
    """Run the collector until SIGTERM or SIGINT; return the exit code."""
    topic = settings.topic(topics.RADIUS_ACCT)
    inventory = Inventory(settings.dsn(), settings.inventory_refresh_s)
    try:
        inventory.load()
    except Exception as exc:
        log.error("cannot load the NAS table from the database: %s: %s",
                  type(exc).__name__, (str(exc).splitlines() or [""])[0])
        return 1
    try:
        spool = Spool(settings.spool_dir)
    except (OSError, SpoolError) as exc:
        log.error("cannot open the spool in %s: %s", settings.spool_dir, exc)
        return 1
    try:
        sock = open_socket(settings.radius_acct_bind)
    except OSError as exc:
        log.error("cannot bind udp %s: %s", settings.radius_acct_addr, exc)
        return 1
    producer = make_producer(settings)
    collector = Collector(sock, producer, topic, spool, inventory)
    try:
        metrics = MetricsServer(settings.collector_metrics_bind, collector.render_metrics)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", settings.collector_metrics_addr, exc)
        return 1

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: collector.stopping.set())
    inventory.start()
    metrics.start()
    # The loop allocates many short-lived objects and no reference cycles: let the
    # cycle collector run rarely, and never over what start-up created.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    log.info("collector ready: topic %s, %d NAS, metrics on http://%s:%d/metrics",
             topic, len(inventory.by_ip), *metrics.address)
    try:
        collector.run()
    finally:
        collector.close()
        inventory.stop()
        metrics.stop()
        spool.close()
        sock.close()
    log.info("collector stopped")
    return 0
