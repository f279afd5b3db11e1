"""RADIUS Dynamic Authorization client (RFC 5176): CoA-Request and Disconnect-Request.

Wire format (RFC 5176 sections 2.3 and 3.3, RFC 3579 section 3.2):

- Every request carries a Message-Authenticator:
  ``HMAC-MD5(Secret, Code + Identifier + Length + 16 zero octets + Attributes)`` with the
  Message-Authenticator value itself zeroed. It is computed first; then the
  Request Authenticator, like an Accounting-Request's:
  ``MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)``.
- A response (CoA-ACK/NAK, Disconnect-ACK/NAK) is accepted only from the NAS's address
  and port, with the request's Identifier, the matching code and a Response
  Authenticator ``MD5(Code + Identifier + Length + Request Authenticator + Attributes +
  Secret)``; a Message-Authenticator in it must verify. RFC 5176 computes it over the
  response with the Request Authenticator in the authenticator field (pyrad does);
  FreeRADIUS 3.2 signs its ACK/NAK with 16 zero octets there instead. Either is
  accepted: both are keyed with the secret. Anything else is dropped and counted.

Retransmission (RFC 5080 section 2.2.1): the *same* packet (same Identifier and
authenticator, so the same Event-Timestamp) is resent after RT = IRT ± 10 %, then
RT = 2 × RT ± 10 %, capped at ``max_rt``, for at most ``1 + retries`` transmissions and
at most ``deadline_s`` in all. Identifiers are allocated per destination (0-255 in
flight), and a semaphore per destination bounds the requests in flight to one NAS.

``CoaClient`` is asyncio; ``CoaClientThread`` runs one in a background thread for
synchronous callers (the enforcement sink).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import random
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

from collectors.radius.codec import HEADER_LEN, MalformedPacket, ZERO16, packet_length

log = logging.getLogger(__name__)

DISCONNECT_REQUEST, DISCONNECT_ACK, DISCONNECT_NAK = 40, 41, 42
COA_REQUEST, COA_ACK, COA_NAK = 43, 44, 45
REQUEST_CODES = {"coa": COA_REQUEST, "disconnect": DISCONNECT_REQUEST}
_ANSWERS = {COA_REQUEST: (COA_ACK, COA_NAK), DISCONNECT_REQUEST: (DISCONNECT_ACK, DISCONNECT_NAK)}

MESSAGE_AUTHENTICATOR = 80
EVENT_TIMESTAMP = 55
ERROR_CAUSE = 101
SESSION_CONTEXT_NOT_FOUND = 503
_MA_EMPTY = bytes((MESSAGE_AUTHENTICATOR, 18)) + ZERO16

Outcome = Literal["ack", "nak", "timeout"]


# --- attributes -----------------------------------------------------------------------------

class AttributeEncoder:
    """Encodes ``(name, value)`` pairs with the RADIUS dictionary (the shipped one by
    default). ``"Name:3"`` gives a tagged attribute tag 3 (RFC 2868)."""

    def __init__(self, dictionary=None) -> None:
        if dictionary is None:
            from collectors.radius.dictionary import load

            dictionary = load()
        self._dict = dictionary
        self._cache: dict[str, tuple] = {}

    def _spec(self, name: str) -> tuple:
        spec = self._cache.get(name)
        if spec is None:
            base, _, tag = name.partition(":")
            try:
                attr = self._dict.attributes[base]
            except KeyError:
                raise ValueError(f"attribute {base!r} is not in the dictionary") from None
            vendor_id = self._dict.vendors.GetForward(attr.vendor) if attr.vendor else 0
            if tag and not attr.has_tag:
                raise ValueError(f"attribute {base!r} takes no tag")
            tag_n = int(tag) if tag else None
            if tag_n is not None and not 0 < tag_n < 32:
                raise ValueError(f"tag of {name!r} must be 1..31")
            spec = (vendor_id, attr.code, attr.type, attr.values, tag_n)
            self._cache[name] = spec
        return spec

    def encode(self, name: str, value) -> bytes:
        vendor_id, code, atype, values, tag = self._spec(name)
        if atype == "string":
            raw = value.encode() if isinstance(value, str) else bytes(value)
            if tag is not None:
                raw = bytes((tag,)) + raw
        elif atype in ("integer", "date"):
            if isinstance(value, str):
                if value in values.forward:  # a VALUE name (pyrad stores it encoded)
                    named = values.GetForward(value)
                    value = int.from_bytes(named, "big") if isinstance(named, bytes) else named
                else:
                    value = int(value)
            raw = struct.pack(">I", value)
            if tag is not None:
                raw = bytes((tag,)) + raw[1:]
        elif atype == "ipaddr":
            raw = socket.inet_aton(value)
        elif atype == "ipv6addr":
            raw = socket.inet_pton(socket.AF_INET6, value)
        elif atype == "octets":
            raw = bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)
        else:
            raise ValueError(f"attribute {name!r} of type {atype} is not supported")
        if vendor_id:
            if len(raw) > 247:
                raise ValueError(f"value of {name!r} is too long ({len(raw)} octets)")
            return (bytes((26, len(raw) + 8)) + vendor_id.to_bytes(4, "big")
                    + bytes((code, len(raw) + 2)) + raw)
        if len(raw) > 253:
            raise ValueError(f"value of {name!r} is too long ({len(raw)} octets)")
        return bytes((code, len(raw) + 2)) + raw

    def encode_all(self, pairs: Iterable[tuple[str, object]]) -> bytes:
        return b"".join(self.encode(n, v) for n, v in pairs)


def event_timestamp_attribute(ts: int) -> bytes:
    return bytes((EVENT_TIMESTAMP, 6)) + struct.pack(">I", ts)


# --- packets --------------------------------------------------------------------------------

def build_request(code: int, ident: int, attributes: bytes, secret: bytes) -> bytes:
    """A signed CoA-Request or Disconnect-Request carrying ``attributes`` (encoded) and a
    Message-Authenticator (last)."""
    body = attributes + _MA_EMPTY
    length = HEADER_LEN + len(body)
    if length > 4096:
        raise ValueError(f"request of {length} octets exceeds 4096")
    header = bytes((code, ident)) + length.to_bytes(2, "big")
    mac = hmac.digest(secret, header + ZERO16 + body, "md5")
    body = attributes + _MA_EMPTY[:2] + mac
    auth = hashlib.md5(header + ZERO16 + body + secret).digest()
    return header + auth + body


class BadResponse(ValueError):
    """A datagram that is not a valid answer to the pending request."""


@dataclass(frozen=True)
class Response:
    code: int
    error_cause: int | None

    @property
    def ack(self) -> bool:
        return self.code in (COA_ACK, DISCONNECT_ACK)


def check_response(data: bytes, request: bytes, secret: bytes) -> Response:
    """Verify ``data`` as the answer to ``request``; raise ``BadResponse`` if it is not."""
    try:
        length = packet_length(data)
    except MalformedPacket as exc:
        raise BadResponse(str(exc)) from None
    data = data[:length]
    code = data[0]
    if data[1] != request[1]:
        raise BadResponse("identifier does not match")
    if code not in _ANSWERS[request[0]]:
        raise BadResponse(f"code {code} does not answer code {request[0]}")
    req_auth = request[4:20]
    expected = hashlib.md5(data[:4] + req_auth + data[20:] + secret).digest()
    if not hmac.compare_digest(expected, data[4:20]):
        raise BadResponse("bad Response Authenticator")
    error_cause = None
    i = HEADER_LEN
    while i < length:
        if i + 2 > length:
            raise BadResponse("truncated attribute")
        atype, alen = data[i], data[i + 1]
        if alen < 2 or i + alen > length:
            raise BadResponse(f"attribute {atype} has a bad length")
        if atype == MESSAGE_AUTHENTICATOR:
            if alen != 18:
                raise BadResponse("Message-Authenticator has a bad length")
            rest = data[20:i + 2] + ZERO16 + data[i + 18:]
            mac = data[i + 2:i + 18]
            if not (hmac.compare_digest(hmac.digest(secret, data[:4] + req_auth + rest, "md5"),
                                        mac)
                    or hmac.compare_digest(hmac.digest(secret, data[:4] + ZERO16 + rest, "md5"),
                                           mac)):
                raise BadResponse("bad Message-Authenticator")
        elif atype == ERROR_CAUSE and alen == 6 and error_cause is None:
            error_cause = struct.unpack_from(">I", data, i + 2)[0]
        i += alen
    return Response(code, error_cause)


def retransmit_schedule(initial: float, retries: int, max_rt: float,
                        rand: Callable[[], float] = random.random) -> list[float]:
    """RFC 5080 section 2.2.1 timeouts: RT = IRT ± 10 %, then 2 × RT ± 10 %, capped."""
    out = []
    rt = initial + (rand() * 0.2 - 0.1) * initial
    for _ in range(1 + retries):
        out.append(min(rt, max_rt))
        rt = 2 * rt + (rand() * 0.2 - 0.1) * rt
    return out


# --- the client -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A NAS's Dynamic Authorization server."""

    host: str
    port: int
    secret: bytes


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error_cause: int | None
    attempts: int
    rtt_s: float | None = None


@dataclass
class ClientStats:
    sent: int = 0
    retransmits: int = 0
    acks: int = 0
    naks: int = 0
    timeouts: int = 0
    dropped_responses: int = 0  # unknown identifier, bad authenticator, wrong code
    socket_errors: int = 0


class _Destination(asyncio.DatagramProtocol):
    """One connected UDP socket to one NAS: identifiers and requests in flight."""

    def __init__(self, key: tuple[str, int], max_inflight: int, stats: ClientStats) -> None:
        self.key = key
        ids = list(range(256))
        random.shuffle(ids)
        self.free_ids = collections.deque(ids)
        self.sem = asyncio.Semaphore(min(max_inflight, 256))
        self.pending: dict[int, tuple[asyncio.Future, bytes, bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.stats = stats

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < HEADER_LEN:
            self.stats.dropped_responses += 1
            return
        entry = self.pending.get(data[1])
        if entry is None:
            self.stats.dropped_responses += 1  # late answer to a finished request
            return
        fut, request, secret = entry
        try:
            resp = check_response(data, request, secret)
        except BadResponse as exc:
            self.stats.dropped_responses += 1
            log.warning("dropped a response from %s:%d: %s", *self.key, exc)
            return
        if not fut.done():
            fut.set_result(resp)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable: keep retransmitting until the deadline
        self.stats.socket_errors += 1
        log.debug("socket error towards %s:%d: %s", *self.key, exc)


@dataclass
class CoaClient:
    """Sends CoA/Disconnect requests and waits for their answers (asyncio)."""

    timeout_s: float = 1.0
    retries: int = 2
    deadline_s: float = 10.0
    max_rt_s: float = 16.0
    max_inflight_per_nas: int = 64
    rand: Callable[[], float] = random.random
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        self._dests: dict[tuple[str, int], _Destination] = {}
        self._opening: dict[tuple[str, int], asyncio.Future] = {}
        self._queues: dict[tuple[str, int], collections.deque] = {}
        self._workers: collections.Counter = collections.Counter()
        self._tasks: set[asyncio.Task] = set()

    async def _destination(self, host: str, port: int) -> _Destination:
        key = (host, port)
        dest = self._dests.get(key)
        if dest is not None:
            return dest
        opening = self._opening.get(key)
        if opening is not None:
            return await asyncio.shield(opening)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._opening[key] = fut
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            _, dest = await loop.create_datagram_endpoint(
                lambda: _Destination(key, self.max_inflight_per_nas, self.stats),
                remote_addr=key, family=family)
            self._dests[key] = dest
            fut.set_result(dest)
            return dest
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._opening[key]

    async def request(self, target: Target, request: str, attributes: bytes) -> Result:
        """Send one request (``"coa"`` or ``"disconnect"``; ``attributes`` encoded, with
        any Event-Timestamp) and retransmit the same packet until answered or given up."""
        code = REQUEST_CODES[request]
        dest = self._dests.get((target.host, target.port))
        if dest is None:
            dest = await self._destination(target.host, target.port)
        loop = asyncio.get_running_loop()
        async with dest.sem:
            ident = dest.free_ids.popleft()
            try:
                packet = build_request(code, ident, attributes, target.secret)
                fut = loop.create_future()
                dest.pending[ident] = (fut, packet, target.secret)
                start = loop.time()
                deadline = start + self.deadline_s
                attempts = 0
                for rt in retransmit_schedule(self.timeout_s, self.retries, self.max_rt_s,
                                              self.rand):
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    dest.transport.sendto(packet)
                    attempts += 1
                    self.stats.sent += 1
                    if attempts > 1:
                        self.stats.retransmits += 1
                    await asyncio.wait((fut,), timeout=min(rt, left))
                    if fut.done():
                        resp: Response = fut.result()
                        if resp.ack:
                            self.stats.acks += 1
                        else:
                            self.stats.naks += 1
                        return Result("ack" if resp.ack else "nak", resp.error_cause,
                                      attempts, loop.time() - start)
                self.stats.timeouts += 1
                return Result("timeout", None, attempts)
            finally:
                dest.pending.pop(ident, None)
                dest.free_ids.append(ident)  # reused last: late answers cannot match

    def enqueue(self, jobs: Iterable[tuple[object, Target, str, bytes,
                                           Callable[[object, Result | BaseException], None]]]
                ) -> None:
        """Queue ``(token, target, request, attributes, on_done)`` jobs (on the loop's
        thread). Each destination's queue is drained by at most ``max_inflight_per_nas``
        worker tasks, in order; ``on_done(token, result_or_exception)`` reports each."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            key = (job[1].host, job[1].port)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            queue.append(job)
            if self._workers[key] < min(self.max_inflight_per_nas, len(queue)):
                self._workers[key] += 1
                task = loop.create_task(self._drain(key, queue))
                self._tasks.add(task)  # a strong reference until it finishes
                task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: tuple[str, int], queue: collections.deque) -> None:
        try:
            while queue:
                token, target, request, attributes, on_done = queue.popleft()
                try:
                    res: Result | BaseException = await self.request(target, request,
                                                                     attributes)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported to the caller
                    res = exc
                on_done(token, res)
        finally:
            self._workers[key] -= 1

    def close(self) -> None:
        for dest in self._dests.values():
            if dest.transport is not None:
                dest.transport.close()
        self._dests.clear()


class CoaClientThread:
    """A ``CoaClient`` on its own event loop thread, for synchronous code.

    ``submit`` returns a ``concurrent.futures.Future`` of the ``Result``;
    ``submit_many`` schedules a batch with one wake-up of the loop and calls
    ``on_done(token, result_or_exception)`` on the loop thread as each completes.
    """

    def __init__(self, client: CoaClient | None = None) -> None:
        self.client = client or CoaClient()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="coa-client",
                                        daemon=True)
        self._thread.start()

    def submit(self, target: Target, request: str, attributes: bytes) -> Future:
        return asyncio.run_coroutine_threadsafe(
            self.client.request(target, request, attributes), self._loop)

    def submit_many(self, jobs: list[tuple[object, Target, str, bytes]],
                    on_done: Callable[[object, Result | BaseException], None]) -> None:
        self._loop.call_soon_threadsafe(self.client.enqueue,
                                        [(*job, on_done) for job in jobs])

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def shutdown():
            self.client.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
