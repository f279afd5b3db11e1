"""CoA/Disconnect client: wire format against pyrad, response checks, retransmission,
identifiers and the per-NAS limit (against an in-process asyncio NAS on loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import struct

import pytest
from pyrad.packet import CoAPacket

from collectors.radius.coa import (
    COA_ACK,
    COA_NAK,
    COA_REQUEST,
    DISCONNECT_ACK,
    DISCONNECT_NAK,
    DISCONNECT_REQUEST,
    AttributeEncoder,
    BadResponse,
    CoaClient,
    CoaClientThread,
    Target,
    build_request,
    check_response,
    event_timestamp_attribute,
    retransmit_schedule,
)
from collectors.radius.dictionary import load as load_dictionary

SECRET = b"s3cret"
DICT = load_dictionary()
ENC = AttributeEncoder(DICT)


def _decode(raw: bytes) -> CoAPacket:
    pkt = CoAPacket(secret=SECRET, dict=DICT, packet=raw)
    return pkt


# --- wire format ----------------------------------------------------------------------------

def test_request_verifies_with_pyrad_and_carries_the_attributes():
    attrs = ENC.encode_all([("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"),
                            ("Acct-Session-Id", "s-1"), ("Mikrotik-Rate-Limit", "2M/2M"),
                            ("Huawei-Input-Average-Rate", "2000000"),
                            ("Cisco-AVPair", "subscriber:command=activate-service"),
                            ("Cisco-AVPair", "subscriber:service-name=rate-2M_2M"),
                            ("ERX-Service-Activate:1", "svc(1,2)")])
    raw = build_request(COA_REQUEST, 7, attrs + event_timestamp_attribute(1_700_000_000), SECRET)
    pkt = _decode(raw)
    assert pkt.code == COA_REQUEST and pkt.id == 7
    assert pkt.VerifyCoARequest()  # Request Authenticator (RFC 5176 section 2.3)
    assert pkt.verify_message_authenticator()  # RFC 5176 section 3.3
    assert pkt["User-Name"] == ["alice"]
    assert pkt["NAS-IP-Address"] == ["10.0.0.1"]
    assert pkt["Mikrotik-Rate-Limit"] == ["2M/2M"]
    assert pkt["Huawei-Input-Average-Rate"] == [2_000_000]
    assert pkt["Cisco-AVPair"] == ["subscriber:command=activate-service",
                                   "subscriber:service-name=rate-2M_2M"]
    assert pkt["Event-Timestamp"] == [1_700_000_000]
    assert pkt["ERX-Service-Activate"] == ["svc(1,2)"]


def test_message_authenticator_and_request_authenticator_by_hand():
    attrs = ENC.encode_all([("Acct-Session-Id", "s-1")])
    raw = build_request(DISCONNECT_REQUEST, 200, attrs, SECRET)
    assert raw[0] == DISCONNECT_REQUEST and raw[1] == 200
    assert int.from_bytes(raw[2:4], "big") == len(raw)
    ma_at = 20 + len(attrs)
    assert raw[ma_at:ma_at + 2] == bytes((80, 18))
    zeroed = raw[:4] + bytes(16) + raw[20:ma_at + 2] + bytes(16)
    assert hmac.digest(SECRET, zeroed, "md5") == raw[ma_at + 2:ma_at + 18]
    assert hashlib.md5(raw[:4] + bytes(16) + raw[20:] + SECRET).digest() == raw[4:20]


def test_encoder_rejects_unknown_attributes_and_long_values():
    with pytest.raises(ValueError, match="not in the dictionary"):
        ENC.encode("No-Such-Attribute", "x")
    with pytest.raises(ValueError, match="too long"):
        ENC.encode("Mikrotik-Rate-Limit", "x" * 248)
    with pytest.raises(ValueError, match="takes no tag"):
        ENC.encode("User-Name:1", "x")
    assert ENC.encode("Error-Cause", "Session-Context-Not-Found") == bytes((101, 6)) + \
        struct.pack(">I", 503)


def _reply(request: bytes, code: int, attrs: bytes = b"", *, secret: bytes = SECRET,
           ma: str | None = None) -> bytes:
    """A NAS's answer; ``ma``: None, "request" (RFC 5176) or "zero" (FreeRADIUS 3.2)."""
    if ma:
        attrs = attrs + bytes((80, 18)) + bytes(16)
    header = bytes((code, request[1])) + (20 + len(attrs)).to_bytes(2, "big")
    if ma:
        vec = request[4:20] if ma == "request" else bytes(16)
        mac = hmac.digest(secret, header + vec + attrs, "md5")
        attrs = attrs[:-16] + mac
    auth = hashlib.md5(header + request[4:20] + attrs + secret).digest()
    return header + auth + attrs


@pytest.mark.parametrize("ma", [None, "request", "zero"])
def test_check_response_accepts_ack_and_nak_with_error_cause(ma):
    req = build_request(DISCONNECT_REQUEST, 9, ENC.encode("Acct-Session-Id", "s"), SECRET)
    assert check_response(_reply(req, DISCONNECT_ACK, ma=ma), req, SECRET).ack
    nak = check_response(_reply(req, DISCONNECT_NAK, ENC.encode("Error-Cause", 503), ma=ma),
                         req, SECRET)
    assert not nak.ack and nak.error_cause == 503


def test_check_response_rejects_forgeries():
    req = build_request(COA_REQUEST, 9, ENC.encode("Acct-Session-Id", "s"), SECRET)
    with pytest.raises(BadResponse, match="Response Authenticator"):
        check_response(_reply(req, COA_ACK, secret=b"other"), req, SECRET)
    with pytest.raises(BadResponse, match="does not answer"):
        check_response(_reply(req, DISCONNECT_ACK), req, SECRET)
    other = build_request(COA_REQUEST, 10, ENC.encode("Acct-Session-Id", "s"), SECRET)
    with pytest.raises(BadResponse, match="identifier"):
        check_response(_reply(other, COA_ACK), req, SECRET)
    good = _reply(req, COA_ACK, ma="request")
    bad_ma = good[:-1] + bytes((good[-1] ^ 1,))
    # keep the Response Authenticator right so only the Message-Authenticator is wrong
    bad_ma = bad_ma[:4] + hashlib.md5(bad_ma[:4] + req[4:20] + bad_ma[20:] + SECRET).digest() \
        + bad_ma[20:]
    with pytest.raises(BadResponse, match="Message-Authenticator"):
        check_response(bad_ma, req, SECRET)
    with pytest.raises(BadResponse):
        check_response(b"\x2c\x09\x00", req, SECRET)


def test_retransmit_schedule_doubles_with_ten_percent_jitter():
    assert retransmit_schedule(1.0, 2, 16.0, rand=lambda: 0.5) == [1.0, 2.0, 4.0]
    low = retransmit_schedule(1.0, 3, 16.0, rand=lambda: 0.0)
    assert low[0] == pytest.approx(0.9) and low[1] == pytest.approx(0.9 * 1.9)
    high = retransmit_schedule(1.0, 6, 5.0, rand=lambda: 1.0)
    assert high[0] == pytest.approx(1.1) and max(high) == 5.0 and len(high) == 7


# --- the client against an in-process NAS ------------------------------------------------------

class FakeNas(asyncio.DatagramProtocol):
    """Answers per ``mode``: ack, nak503, silent, or ``drop_first`` (ignores one copy)."""

    def __init__(self, mode: str = "ack", delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.seen: list[bytes] = []
        self.inflight = 0
        self.max_inflight = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seen.append(data)
        if self.mode == "silent" or (self.mode == "drop_first" and len(self.seen) == 1):
            return
        asyncio.get_running_loop().create_task(self._answer(data, addr))

    async def _answer(self, data: bytes, addr) -> None:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        await asyncio.sleep(self.delay)
        self.inflight -= 1
        ack, nak = (COA_ACK, COA_NAK) if data[0] == COA_REQUEST else (DISCONNECT_ACK,
                                                                      DISCONNECT_NAK)
        if self.mode == "nak503":
            out = _reply(data, nak, ENC.encode("Error-Cause", 503))
        else:
            out = _reply(data, ack)
        self.transport.sendto(out, addr)


async def _serve(nas: FakeNas) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: nas, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


def test_ack_nak_and_timeout_outcomes():
    async def main():
        results = {}
        for mode in ("ack", "nak503", "silent"):
            nas = FakeNas(mode)
            transport, port = await _serve(nas)
            client = CoaClient(timeout_s=0.05, retries=2, deadline_s=5)
            res = await client.request(Target("127.0.0.1", port, SECRET), "disconnect",
                                       ENC.encode("Acct-Session-Id", "s"))
            results[mode] = (res, nas.seen)
            client.close()
            transport.close()
        return results

    r = asyncio.run(main())
    assert r["ack"][0].outcome == "ack" and r["ack"][0].attempts == 1
    assert r["nak503"][0].outcome == "nak" and r["nak503"][0].error_cause == 503
    res, seen = r["silent"]
    assert res.outcome == "timeout" and res.attempts == 3 and len(seen) == 3
    assert len(set(seen)) == 1, "a retransmit is the same packet (id, authenticator, attrs)"


def test_retransmit_is_answered_and_the_deadline_caps_the_attempts():
    async def main():
        nas = FakeNas("drop_first")
        transport, port = await _serve(nas)
        client = CoaClient(timeout_s=0.05, retries=2)
        res = await client.request(Target("127.0.0.1", port, SECRET), "coa",
                                   ENC.encode("Acct-Session-Id", "s"))
        silent = FakeNas("silent")
        t2, port2 = await _serve(silent)
        capped = CoaClient(timeout_s=0.2, retries=10, deadline_s=0.5)
        res2 = await capped.request(Target("127.0.0.1", port2, SECRET), "coa",
                                    ENC.encode("Acct-Session-Id", "s"))
        for c in (client, capped):
            c.close()
        transport.close()
        t2.close()
        return res, nas.seen, res2, silent.seen

    res, seen, res2, seen2 = asyncio.run(main())
    assert res.outcome == "ack" and res.attempts == 2 and seen[0] == seen[1]
    assert res2.outcome == "timeout" and res2.attempts == len(seen2) == 2  # 0.2 s + 0.4 s > 0.5


def test_per_nas_limit_and_distinct_identifiers_in_flight():
    async def main():
        nas = FakeNas("ack", delay=0.05)
        transport, port = await _serve(nas)
        client = CoaClient(timeout_s=2, max_inflight_per_nas=8)
        target = Target("127.0.0.1", port, SECRET)
        results = await asyncio.gather(*(
            client.request(target, "coa", ENC.encode("Acct-Session-Id", f"s{i}"))
            for i in range(300)))
        client.close()
        transport.close()
        return results, nas

    results, nas = asyncio.run(main())
    assert all(r.outcome == "ack" for r in results)
    assert len(nas.seen) == 300  # no retransmits: every answer matched its request
    assert nas.max_inflight <= 8


def test_late_answer_to_a_finished_request_is_dropped():
    async def main():
        nas = FakeNas("ack", delay=0.3)
        transport, port = await _serve(nas)
        client = CoaClient(timeout_s=0.05, retries=0, deadline_s=0.1)
        target = Target("127.0.0.1", port, SECRET)
        first = await client.request(target, "coa", ENC.encode("Acct-Session-Id", "a"))
        await asyncio.sleep(0.4)  # the late ACK arrives now
        client.close()
        transport.close()
        return first, client.stats

    first, stats = asyncio.run(main())
    assert first.outcome == "timeout"
    assert stats.dropped_responses == 1 and stats.acks == 0


def test_thread_wrapper_submit_many_reports_every_job():
    thread = CoaClientThread(CoaClient(timeout_s=0.5))
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        got = []
        import threading

        done = threading.Event()

        def on_done(token, res):
            got.append((token, res))
            if len(got) == 5:
                done.set()

        thread.submit_many([(i, Target("127.0.0.1", port, SECRET), "coa",
                             ENC.encode("Acct-Session-Id", f"s{i}")) for i in range(5)], on_done)
        sock.settimeout(2)
        for _ in range(5):
            data, addr = sock.recvfrom(4096)
            sock.sendto(_reply(data, COA_ACK), addr)
        assert done.wait(5)
        assert sorted(t for t, _ in got) == list(range(5))
        assert all(r.outcome == "ack" for _, r in got)
        sock.close()
    finally:
        thread.close()


def test_enqueued_jobs_are_drained_per_nas_within_the_limit_in_order():
    async def main():
        nas = FakeNas("ack", delay=0.01)
        transport, port = await _serve(nas)
        client = CoaClient(timeout_s=2, max_inflight_per_nas=5)
        target = Target("127.0.0.1", port, SECRET)
        done: list = []
        finished = asyncio.Event()

        def on_done(token, res):
            done.append((token, res.outcome))
            if len(done) == 200:
                finished.set()

        client.enqueue([(i, target, "coa", ENC.encode("Acct-Session-Id", f"s{i}"), on_done)
                        for i in range(200)])
        await asyncio.wait_for(finished.wait(), 20)
        client.close()
        transport.close()
        return done, nas

    done, nas = asyncio.run(main())
    assert sorted(t for t, _ in done) == list(range(200))
    assert all(o == "ack" for _, o in done)
    assert nas.max_inflight <= 5
    # started in queue order: the NAS saw the sessions in the order they were queued
    # (at most 5 apart, the ones in flight together)
    order = [int(_session_of(p)[1:]) for p in nas.seen]
    assert all(abs(a - i) < 5 for i, a in enumerate(order))


def _session_of(packet: bytes) -> str:
    i = 20
    while i < len(packet):
        t, n = packet[i], packet[i + 1]
        if t == 44:
            return packet[i + 2:i + n].decode()
        i += n
    return ""
