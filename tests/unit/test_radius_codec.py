"""The RADIUS accounting codec against pyrad (the reference encoder) and the RFCs."""

from __future__ import annotations

import hashlib
import json
import random
import typing

import pytest
from pyrad.packet import AccountingResponse, AcctPacket, PacketError

from collectors.radius import codec, dictionary, server
from collectors.radius.inventory import Nas, NasEntry
from collectors.radius.spool import Spool
from ispstream.contracts import AcctEvent, AcctStatus

SECRET = b"n4s-secret"


@pytest.fixture(scope="module")
def radius_dict():
    return dictionary.load()


def build(radius_dict, attrs: list[tuple[str, object]], *, ident: int = 7,
          message_authenticator: bool = False, secret: bytes = SECRET) -> bytes:
    """An Accounting-Request encoded by pyrad with the shipped dictionary."""
    pkt = AcctPacket(dict=radius_dict, secret=secret, id=ident)
    for name, value in attrs:
        pkt.AddAttribute(name, value)
    if message_authenticator:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def reference_fields(radius_dict, raw: bytes) -> dict:
    """What AcctEvent fields pyrad decodes from ``raw`` (first value of each)."""
    pkt = AcctPacket(dict=radius_dict, secret=SECRET, packet=raw)
    names = {
        "User-Name": "username", "Acct-Status-Type": "status",
        "Acct-Session-Id": "session_id", "Acct-Delay-Time": "delay_time",
        "Acct-Input-Octets": "input_octets", "Acct-Output-Octets": "output_octets",
        "Acct-Input-Gigawords": "input_gigawords",
        "Acct-Output-Gigawords": "output_gigawords",
        "Acct-Input-Packets": "input_packets", "Acct-Output-Packets": "output_packets",
        "Acct-Session-Time": "session_time", "Acct-Interim-Interval": "interim_interval",
        "Acct-Terminate-Cause": "terminate_cause", "Event-Timestamp": "event_timestamp",
        "Framed-IP-Address": "framed_ip", "NAS-Identifier": "nas_identifier",
        "NAS-Port-Id": "nas_port_id", "Calling-Station-Id": "calling_station_id",
    }
    out = {}
    for attr, field in names.items():
        if attr in pkt:
            value = pkt[attr][0]
            if field == "event_timestamp" and not isinstance(value, int):
                value = int(value)
            out[field] = value
    return out


def random_request(radius_dict, rng: random.Random) -> tuple[list, bytes]:
    status = rng.choice(["Start", "Interim-Update", "Stop", "Accounting-On",
                         "Accounting-Off"])
    attrs: list[tuple[str, object]] = [
        ("Acct-Status-Type", status),
        ("Acct-Session-Id", f"{rng.getrandbits(48):012x}"),
        ("NAS-IP-Address", "192.0.2.1"),
    ]
    optional = [
        ("User-Name", f"sub{rng.randrange(10**6):06d}@isp.example"),
        ("NAS-Identifier", "bng-01.pop3"),
        ("NAS-Port-Id", f"ge-0/0/1.{rng.randrange(4096)}:{rng.randrange(4096)}"),
        ("NAS-Port-Type", "Ethernet"),
        ("Framed-IP-Address", f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}"),
        ("Calling-Station-Id", "f0:9f:c2:12:34:56"),
        ("Acct-Input-Octets", rng.randrange(2**32)),
        ("Acct-Output-Octets", rng.randrange(2**32)),
        ("Acct-Input-Gigawords", rng.randrange(2**32)),
        ("Acct-Output-Gigawords", rng.randrange(40)),
        ("Acct-Input-Packets", rng.randrange(2**32)),
        ("Acct-Output-Packets", rng.randrange(2**32)),
        ("Acct-Session-Time", rng.randrange(10**6)),
        ("Acct-Delay-Time", rng.randrange(60)),
        ("Acct-Interim-Interval", rng.choice([60, 300, 900])),
        ("Acct-Terminate-Cause", rng.choice(["User-Request", "Lost-Carrier",
                                             "Idle-Timeout", "NAS-Reboot"])),
        ("Event-Timestamp", rng.randrange(1_600_000_000, 1_900_000_000)),
        ("NAS-IPv6-Address", "2001:db8::1"),
        ("Class", b"\x00\x01opaque"),
        ("Mikrotik-Rate-Limit", "50M/200M"),
        ("Mikrotik-Address-List", "throttled"),
        ("Cisco-AVPair", "subscriber:accounting-list=default"),
        ("ERX-Qos-Profile-Name", "res-100M"),
        ("ERX-Ingress-Policy-Name", "in-100M"),
        ("ERX-Egress-Policy-Name", "out-100M"),
        ("ERX-Service-Activate:1", "svc-internet(100000000)"),
        ("Huawei-Input-Average-Rate", 100_000_000),
        ("Huawei-Output-Average-Rate", 400_000_000),
        ("Huawei-Qos-Profile-Name", "qos-400M"),
    ]
    attrs += rng.sample(optional, rng.randrange(len(optional) + 1))
    rng.shuffle(attrs)
    return attrs, build(radius_dict, attrs, ident=rng.randrange(256),
                        message_authenticator=rng.random() < 0.3)


def test_differential_against_pyrad(radius_dict):
    rng = random.Random(20261121)
    for _ in range(400):
        attrs, raw = random_request(radius_dict, rng)
        req = codec.decode_accounting_request(raw)
        assert req.fields == reference_fields(radius_dict, raw), attrs
        assert req.has_nas_identity
        assert (req.message_authenticator_at >= 0) == (
            AcctPacket(dict=radius_dict, packet=raw).message_authenticator is True)


def test_compiled_layouts_decode_like_the_attribute_walk(radius_dict):
    """The collector's Decoder (compiled layouts) returns what decode_fields returns."""
    rng = random.Random(11)
    decoder = codec.Decoder()
    compiled = 0
    for _ in range(300):
        _, raw = random_request(radius_dict, rng)
        expected = codec.decode_fields(raw)
        for _ in range(3):  # seen, learnt, then decoded by the compiled layout
            assert decoder(raw) == expected
        key = (len(raw), raw[20], raw[21], raw[20 + raw[21]], raw[21 + raw[21]])
        compiled += any(headers(raw) == expected_headers
                        for headers, expected_headers, _ in decoder._layouts.get(key, ()))
    assert compiled >= 290  # (a few may share a key and push each other out)


def test_compiled_layouts_special_cases(radius_dict):
    specials = [
        [("Acct-Status-Type", "Failed"), ("Acct-Session-Id", "x"),
         ("Acct-Terminate-Cause", 99)],
        [("User-Name", "first"), ("User-Name", "second"), ("Acct-Session-Id", "x"),
         ("Acct-Input-Octets", 1), ("Acct-Input-Octets", 2)],
        [("Proxy-State", b"p1"), ("Acct-Status-Type", "Stop"), ("Proxy-State", b"p2")],
        [("NAS-IPv6-Address", "2001:db8::1"), ("Acct-Session-Id", "x")],
        [("NAS-Identifier", "n"), ("Framed-IP-Address", "192.0.2.1"),
         ("Framed-IP-Address", "192.0.2.2")],
        [("Class", b"c"), ("Mikrotik-Rate-Limit", "1M/1M")],
    ]
    for attrs in specials:
        for with_ma in (False, True):
            raw = build(radius_dict, attrs, message_authenticator=with_ma)
            decoder = codec.Decoder()
            expected = codec.decode_fields(raw)
            assert [decoder(raw) for _ in range(3)] == [expected] * 3, attrs
            assert decoder._count == 1


def test_layouts_pause_when_traffic_does_not_repeat(radius_dict):
    decoder = codec.Decoder()
    decoder.WINDOW, decoder.PAUSE = 50, 2
    rng = random.Random(13)
    unique = [random_request(radius_dict, rng)[1] for _ in range(60)]
    for raw in unique:  # every layout once: nothing to gain
        assert decoder(raw) == codec.decode_fields(raw)
    assert decoder._paused == 2
    repeated = unique[0]
    for _ in range(3 * 50):  # paused for two windows, then layouts again
        assert decoder(repeated) == codec.decode_fields(repeated)
    assert decoder._paused == 0 and decoder._hits > 0


def test_compiled_layouts_never_accept_other_headers(radius_dict):
    rng = random.Random(12)
    decoder = codec.Decoder()
    for _ in range(100):
        _, raw = random_request(radius_dict, rng)
        decoder(raw)
        decoder(raw)
        for _ in range(20):  # same length and first headers, other bytes changed
            mutated = bytearray(raw)
            at = rng.randrange(20, len(raw))
            mutated[at] = rng.randrange(256)
            mutated = bytes(mutated)
            try:
                expected = codec.decode_fields(mutated)
            except codec.MalformedPacket:
                with pytest.raises(codec.MalformedPacket):
                    decoder(mutated)
            else:
                assert decoder(mutated) == expected


def test_generic_attributes_match_pyrad_including_vendor_ones(radius_dict):
    rng = random.Random(7)
    for _ in range(200):
        _, raw = random_request(radius_dict, rng)
        pkt = AcctPacket(dict=radius_dict, secret=SECRET, packet=raw)
        ours: dict = {}
        for vendor, atype, value in codec.iter_attributes(raw):
            ours.setdefault((vendor, atype) if vendor else atype, []).append(value)
        assert ours == {k: v for k, v in pkt.items()}


def test_gigawords_timestamp_and_vendor_attributes_decode(radius_dict):
    raw = build(radius_dict, [
        ("Acct-Status-Type", "Interim-Update"), ("Acct-Session-Id", "8a3f"),
        ("NAS-Identifier", "bng1"), ("Acct-Input-Octets", 5), ("Acct-Input-Gigawords", 3),
        ("Acct-Output-Octets", 2**32 - 1), ("Acct-Output-Gigawords", 2**32 - 1),
        ("Event-Timestamp", 1795226400), ("Mikrotik-Rate-Limit", "10M/10M"),
        ("Cisco-AVPair", "ip:sub-qos-policy-in=Q"), ("Huawei-Input-Average-Rate", 1000),
    ])
    fields = codec.decode_accounting_request(raw).fields
    assert fields["input_gigawords"] == 3 and fields["input_octets"] == 5
    assert fields["output_gigawords"] == fields["output_octets"] == 2**32 - 1
    assert fields["event_timestamp"] == 1795226400
    vsas = {(v, t): val for v, t, val in codec.iter_attributes(raw) if v}
    assert vsas == {(14988, 8): b"10M/10M", (9, 1): b"ip:sub-qos-policy-in=Q",
                    (2011, 2): (1000).to_bytes(4, "big")}


def test_status_and_terminate_cause_names(radius_dict):
    for value, name in codec.STATUS_NAMES.items():
        raw = build(radius_dict, [("Acct-Status-Type", value), ("Acct-Session-Id", "x")])
        req = codec.decode_accounting_request(raw)
        assert req.fields["status"] == name and req.status_type == value
        assert name in typing.get_args(AcctStatus)
    raw = build(radius_dict, [("Acct-Status-Type", "Failed"), ("Acct-Session-Id", "x"),
                              ("Acct-Terminate-Cause", 99)])
    req = codec.decode_accounting_request(raw)
    assert "status" not in req.fields and req.status_type == 15
    assert req.fields["terminate_cause"] == "99"
    raw = build(radius_dict, [("Acct-Terminate-Cause", "Port-Reinit")])
    assert codec.decode_accounting_request(raw).fields["terminate_cause"] == "Port-Reinit"


def test_nas_identity_and_strings():
    # NAS identity: any one of NAS-IP-Address, NAS-IPv6-Address, NAS-Identifier
    def packet(attrs: bytes) -> bytes:
        return bytes((4, 1)) + (20 + len(attrs)).to_bytes(2, "big") + bytes(16) + attrs

    assert not codec.decode_accounting_request(packet(b"")).has_nas_identity
    for attr in (b"\x04\x06\xc0\x00\x02\x01", b"\x5f\x12" + bytes(16), b"\x20\x03n"):
        assert codec.decode_accounting_request(packet(attr)).has_nas_identity
    # invalid UTF-8 stays distinguishable instead of failing the packet
    fields = codec.decode_accounting_request(packet(b"\x2c\x04\xff\xfe")).fields
    assert fields["session_id"] == "\\xff\\xfe"
    # first occurrence wins, like pyrad's packet[name][0]
    fields = codec.decode_accounting_request(packet(b"\x01\x03a\x01\x03b")).fields
    assert fields["username"] == "a"


def test_request_authenticator(radius_dict):
    raw = build(radius_dict, [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s")])
    assert codec.request_authenticator_ok(raw, SECRET)
    assert not codec.request_authenticator_ok(raw, b"other")
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    assert not codec.request_authenticator_ok(tampered, SECRET)
    # the RFC 2866 formula, spelled out
    assert raw[4:20] == hashlib.md5(raw[:4] + bytes(16) + raw[20:] + SECRET).digest()


def test_message_authenticator(radius_dict):
    raw = build(radius_dict, [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s")],
                message_authenticator=True)
    req = codec.decode_accounting_request(raw)
    at = req.message_authenticator_at
    assert at >= 0 and raw[at] == 80
    assert codec.message_authenticator_ok(raw, SECRET, at)
    assert not codec.message_authenticator_ok(raw, b"other", at)
    bad = raw[:at + 2] + bytes(16) + raw[at + 18:]
    assert not codec.message_authenticator_ok(bad, SECRET, at)
    # pyrad agrees on what is valid
    assert AcctPacket(dict=radius_dict, secret=SECRET, packet=raw
                      ).verify_message_authenticator()


@pytest.mark.parametrize("with_ma", [False, True])
def test_accounting_response_verifies_with_pyrad(radius_dict, with_ma):
    raw = build(radius_dict, [("Acct-Status-Type", "Stop"), ("Acct-Session-Id", "s"),
                              ("Proxy-State", b"p1"), ("Proxy-State", b"second")],
                message_authenticator=with_ma, ident=201)
    req = codec.decode_accounting_request(raw)
    reply = codec.response_for(req, SECRET)
    assert reply[0] == AccountingResponse and reply[1] == 201
    assert int.from_bytes(reply[2:4], "big") == len(reply)
    sent = AcctPacket(dict=radius_dict, secret=SECRET, packet=raw)
    parsed = sent.CreateReply(packet=reply)
    assert sent.VerifyReply(parsed, reply, enforce_ma=with_ma)
    assert parsed["Proxy-State"] == [b"p1", b"second"]
    assert parsed.message_authenticator is (True if with_ma else None)
    # Response Authenticator: MD5(Code+ID+Length+RequestAuth+Attributes+Secret)
    assert reply[4:20] == hashlib.md5(reply[:4] + raw[4:20] + reply[20:] + SECRET).digest()
    # a different secret does not verify
    assert not sent.VerifyReply(sent.CreateReply(packet=codec.response_for(req, b"x")))


def _packet(attrs: bytes, length: int | None = None) -> bytes:
    n = 20 + len(attrs) if length is None else length
    return bytes((4, 9)) + n.to_bytes(2, "big") + bytes(16) + attrs


@pytest.mark.parametrize("data, structural", [
    (b"\x04\x01\x00", True),  # shorter than a header
    (_packet(b"", length=19), True),  # Length below 20
    (_packet(b"", length=5000) + bytes(4980), True),  # Length above 4096
    (_packet(b"\x01\x05ab", length=30), True),  # Length beyond the datagram
    (_packet(b"\x01\x01abc"), True),  # attribute length 1
    (_packet(b"\x01\x00"), True),  # attribute length 0
    (_packet(b"\x01\x09abc"), True),  # attribute runs past the end
    (_packet(b"\x01\x03a\x2c"), True),  # truncated attribute header
    (_packet(b"\x2a\x05abc"), False),  # integer of 3 octets
    (_packet(b"\x08\x07abcde"), False),  # address of 5 octets
    (_packet(b"\x50\x10" + bytes(14)), False),  # Message-Authenticator of 14 octets
])
def test_malformed_packets_raise(data, structural):
    with pytest.raises(codec.MalformedPacket):
        codec.decode_accounting_request(data)
    if structural:
        with pytest.raises(codec.MalformedPacket):
            list(codec.iter_attributes(data))


def test_padding_after_length_is_ignored(radius_dict):
    raw = build(radius_dict, [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s")])
    req = codec.decode_accounting_request(raw + b"\x00garbage")
    assert req.fields == codec.decode_accounting_request(raw).fields
    assert req.data == raw


def test_pyrad_rejects_what_we_reject_on_length():
    with pytest.raises(PacketError):
        AcctPacket(packet=_packet(b"", length=19))


# -- the JSON the collector produces -------------------------------------------------

class _FakeSocket:
    def __init__(self, datagrams):
        self._datagrams = list(datagrams)
        self.sent: list[tuple[bytes, tuple]] = []

    def recvfrom(self, _size):
        if not self._datagrams:
            raise BlockingIOError
        return self._datagrams.pop(0)

    def sendto(self, data, addr):
        self.sent.append((data, addr))


class _FakeProducer:
    def __init__(self):
        self.records: list[tuple[str, bytes, bytes]] = []
        self._reports = []

    def produce(self, topic, value, key, on_delivery):
        self.records.append((topic, key, value))
        self._reports.append(on_delivery)

    def poll(self, _timeout=0):
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return len(reports)


class _FakeInventory:
    def __init__(self, entry):
        self.by_ip = {entry.nas.ip: entry}

    def lookup(self, ip):
        return self.by_ip.get(ip)


def test_every_produced_record_is_a_valid_acct_event(radius_dict, tmp_path):
    """Drive the collector's receive path: each record validates as AcctEvent.

    Every packet comes three times (from three NAS ports, so not as a retransmit): the
    first two take the attribute walk, the third a compiled layout.
    """
    entry = NasEntry(Nas("acme", "bng-1", "192.0.2.1", SECRET))
    rng = random.Random(99)
    datagrams, expected = [], []
    for i in range(300):
        attrs, raw = random_request(radius_dict, rng)
        for copy in range(3):
            datagrams.append((raw, ("192.0.2.1", 30000 + 3 * i + copy)))
            expected.append(reference_fields(radius_dict, raw))
    sock, producer = _FakeSocket(datagrams), _FakeProducer()
    collector = server.Collector(sock, producer, "radius.acct", Spool(tmp_path),
                                 _FakeInventory(entry))
    while sock._datagrams:
        collector._receive()
        collector._settle()

    assert len(producer.records) == 900 and len(sock.sent) == 900
    assert collector.counts["acked"] == 900
    assert collector.decode._hits >= 290
    for (topic, key, value), fields in zip(producer.records, expected):
        assert topic == "radius.acct"
        as_dict = json.loads(value)
        assert set(as_dict) == set(AcctEvent.model_fields)
        event = AcctEvent.model_validate_json(value)
        assert key.decode() == event.key() == f"acme/bng-1/{fields['session_id']}"
        assert (event.tenant_id, event.nas_id, event.nas_ip) == ("acme", "bng-1",
                                                                 "192.0.2.1")
        expected_event = {name: getattr(event, name) for name in fields}
        assert expected_event == fields
        assert event.received_at > 1.7e9


def test_the_collector_drops_what_it_must(radius_dict, tmp_path):
    entry = NasEntry(Nas("acme", "bng-1", "192.0.2.1", SECRET,
                         require_message_authenticator=True))
    ok = [("Acct-Status-Type", "Start"), ("Acct-Session-Id", "s"),
          ("NAS-Identifier", "n")]
    src = ("192.0.2.1", 1812)
    signed = build(radius_dict, ok, message_authenticator=True)
    at = codec.decode_accounting_request(signed).message_authenticator_at
    forged = bytearray(signed)
    forged[at + 2:at + 18] = bytes(16)
    forged[4:20] = hashlib.md5(bytes(forged[:4]) + bytes(16) + bytes(forged[20:])
                               + SECRET).digest()
    cases = [
        (signed, ("198.51.100.7", 1), "unknown_source"),
        (b"\x04\x00\x00", src, "malformed"),
        (_packet(b"\x01\x01x"), src, "bad_authenticator"),
        (build(radius_dict, ok, message_authenticator=True, secret=b"wrong"), src,
         "bad_authenticator"),
        (bytes(forged), src, "bad_message_authenticator"),
        (build(radius_dict, ok), src, "missing_message_authenticator"),
        (build(radius_dict, ok[:1] + ok[2:], message_authenticator=True), src,
         "missing_session_id"),
        (build(radius_dict, ok[:2], message_authenticator=True), src,
         "missing_nas_identity"),
        (build(radius_dict, [("Acct-Status-Type", "Failed")] + ok[1:],
               message_authenticator=True), src, "unsupported_status_type"),
        (signed, src, "acked"),
        (signed, src, "duplicate"),
    ]
    code_1 = bytearray(build(radius_dict, ok))
    code_1[0] = 1
    cases.insert(2, (bytes(code_1), src, "unsupported_code"))
    sock, producer = _FakeSocket([]), _FakeProducer()
    collector = server.Collector(sock, producer, "t", Spool(tmp_path),
                                 _FakeInventory(entry))
    for data, addr, result in cases:
        before = dict(collector.counts)
        sock._datagrams.append((data, addr))
        collector._receive()
        collector._settle()
        changed = {k for k in collector.counts if collector.counts[k] != before[k]}
        assert changed == {result}, result
    assert len(producer.records) == 1
    assert len(sock.sent) == 2  # the reply, and the same reply to the retransmit
    assert sock.sent[0] == sock.sent[1]

