"""The CoA/Disconnect client against FreeRADIUS 3.2 as the NAS: ACK, NAK with
Error-Cause, silence with retransmissions, and every vendor's attributes as FreeRADIUS
(with its own dictionaries) decodes them."""

from __future__ import annotations

import asyncio

import pytest

from collectors.radius.coa import AttributeEncoder, CoaClient, Target, event_timestamp_attribute
from collectors.radius.vendors import Session, load_profiles, request_for
from tests.integration.nas_coa import coa_nas, free_udp_port, silent_port  # noqa: F401

pytestmark = pytest.mark.integration

SECRET = "s3cret-nas"
ENC = AttributeEncoder()


def _run(coro):
    return asyncio.run(coro)


def test_ack_nak_and_timeout_against_freeradius(coa_nas, silent_port):
    port = free_udp_port()
    nas = coa_nas([("127.0.0.1", port, "ack"), ("127.0.0.2", port, "nak503")], secret=SECRET)
    dead = silent_port()
    attrs = ENC.encode_all([("User-Name", "alice"), ("Acct-Session-Id", "s1")])

    async def main():
        client = CoaClient(timeout_s=0.3, retries=2, deadline_s=5)
        try:
            ack = await client.request(Target("127.0.0.1", port, SECRET.encode()), "coa",
                                       attrs + event_timestamp_attribute(1_700_000_001))
            nak = await client.request(Target("127.0.0.2", port, SECRET.encode()), "disconnect",
                                       attrs + event_timestamp_attribute(1_700_000_002))
            silent = await client.request(Target("127.0.0.1", dead.port, SECRET.encode()),
                                          "disconnect", attrs)
            wrong = await client.request(Target("127.0.0.1", port, b"not-the-secret"), "coa",
                                         attrs)
            return ack, nak, silent, wrong, client.stats
        finally:
            client.close()

    ack, nak, silent, wrong, stats = _run(main())
    assert (ack.outcome, ack.attempts) == ("ack", 1)
    assert (nak.outcome, nak.error_cause) == ("nak", 503)
    assert (silent.outcome, silent.attempts) == ("timeout", 3)
    assert dead.received() == 3
    # FreeRADIUS drops a request whose Message-Authenticator does not verify
    assert wrong.outcome == "timeout"
    seen = nas.requests()
    assert [(r.type, r.address, r.event_timestamp) for r in seen] == [
        ("CoA-Request", f"127.0.0.1:{port}", 1_700_000_001),
        ("Disconnect-Request", f"127.0.0.2:{port}", 1_700_000_002),
    ]
    assert seen[0].get("User-Name") == "alice" and seen[0].get("Acct-Session-Id") == "s1"
    assert seen[0].get("Message-Authenticator", ) is not None
    assert stats.dropped_responses == 0


@pytest.mark.parametrize("vendor, expected", [
    ("mikrotik", [("Mikrotik-Rate-Limit", "512k/1M"), ("Framed-IP-Address", "100.64.0.7")]),
    ("cisco", [("Cisco-AVPair", "subscriber:command=activate-service"),
               ("Cisco-AVPair", "subscriber:service-name=rate-512k_1M")]),
    ("juniper", [("ERX-Ingress-Policy-Name", "police-512k"),
                 ("ERX-Egress-Policy-Name", "police-1000k")]),
    ("huawei", [("Huawei-Input-Average-Rate", "512000"),
                ("Huawei-Output-Average-Rate", "1000000")]),
    ("generic", [("Filter-Id", "rate-512k_1M")]),
])
def test_vendor_attributes_decode_in_freeradius(coa_nas, vendor, expected):
    port = free_udp_port()
    nas = coa_nas([("127.0.0.1", port, "ack")], secret=SECRET)
    profile = load_profiles()[vendor]
    req = request_for(profile, "throttle", Session("127.0.0.1", "s-9", "alice", "100.64.0.7"),
                      rate="512k/1M")

    async def main():
        client = CoaClient(timeout_s=0.5, retries=2)
        try:
            return await client.request(Target("127.0.0.1", port, SECRET.encode()), req.request,
                                        ENC.encode_all(req.attributes))
        finally:
            client.close()

    assert _run(main()).outcome == "ack"
    (seen,) = nas.requests()
    assert seen.type == "CoA-Request"
    assert seen.get("Acct-Session-Id") == "s-9" and seen.get("NAS-IP-Address") == "127.0.0.1"
    for name, value in expected:
        assert value in seen.all(name), (name, seen.attributes)
