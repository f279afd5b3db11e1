"""The optics poller's own SNMPv2c codec, checked against pysnmp's (pyasn1) encoder and
decoder: what we send pysnmp reads back exactly, what pysnmp builds we read exactly."""

from __future__ import annotations

import pytest
from pyasn1.codec.ber import decoder as pyasn1_decoder
from pyasn1.codec.ber import encoder as pyasn1_encoder
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from collectors.onu.ber import (
    END_OF_MIB_VIEW, NO_SUCH_INSTANCE, BerError, decode_response, encode_getbulk, oid_text,
    parse_oid,
)


@pytest.mark.parametrize("request_id", [0, 1, 127, 128, 255, 256, 65535, 2**31 - 1])
def test_getbulk_is_read_back_by_pysnmp(request_id):
    oids = [parse_oid("1.3.6.1.4.1.2011.6.128.1.1.2.51.1.4"), parse_oid("1.3.6.1.2.1.31.1.1.1.1"),
            parse_oid("1.3.6.1.4.1.3902.1082.500.1.2.4.2.1.2.268435456.200")]
    data = encode_getbulk(b"public-\xff", request_id, oids, max_repetitions=16)
    msg, rest = pyasn1_decoder.decode(data, asn1Spec=v2c.Message())
    assert rest == b""
    assert int(msg["version"]) == 1 and bytes(msg["community"]) == b"public-\xff"
    pdu = v2c.apiMessage.get_pdu(msg)
    assert isinstance(pdu, v2c.GetBulkRequestPDU)
    assert int(v2c.apiBulkPDU.get_request_id(pdu)) == request_id
    assert int(v2c.apiBulkPDU.get_max_repetitions(pdu)) == 16
    assert int(v2c.apiBulkPDU.get_non_repeaters(pdu)) == 0
    assert [tuple(o) for o, _ in v2c.apiBulkPDU.get_varbinds(pdu)] == oids


def _pysnmp_response(request_id: int, varbinds, error_status: int = 0) -> bytes:
    pdu = v2c.ResponsePDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, request_id)
    v2c.apiPDU.set_error_status(pdu, error_status)
    v2c.apiPDU.set_varbinds(pdu, varbinds)
    msg = v2c.Message()
    v2c.apiMessage.set_defaults(msg)
    v2c.apiMessage.set_community(msg, "c")
    v2c.apiMessage.set_pdu(msg, pdu)
    return pyasn1_encoder.encode(msg)


def test_response_values_match_pysnmp():
    base = parse_oid("1.3.6.1.4.1.1.2")
    values = [
        (rfc1902.Integer32(-2147483648), -2147483648),
        (rfc1902.Integer32(2147483647), 2147483647),
        (rfc1902.Integer32(-1461), -1461),
        (rfc1902.Integer32(0), 0),
        (rfc1902.OctetString(b"0.03 mW (-14.61 dBm)"), b"0.03 mW (-14.61 dBm)"),
        (rfc1902.OctetString(bytes.fromhex("48575443a1b23010")), bytes.fromhex("48575443a1b23010")),
        (rfc1902.OctetString(b"x" * 300), b"x" * 300),                    # long length form
        (rfc1902.Counter32(4294967295), 4294967295),
        (rfc1902.Gauge32(1000000000), 1000000000),
        (rfc1902.TimeTicks(111404777), 111404777),
        (rfc1902.Counter64(2**64 - 1), 2**64 - 1),
        (rfc1902.IpAddress("192.0.2.7"), "192.0.2.7"),
        (rfc1902.ObjectIdentifier("1.3.6.1.4.1.2011.2.123"), parse_oid("1.3.6.1.4.1.2011.2.123")),
        (rfc1905.noSuchInstance, NO_SUCH_INSTANCE),
        (rfc1905.endOfMibView, END_OF_MIB_VIEW),
    ]
    varbinds = [(rfc1902.ObjectName(base + (i, 4194316032, 127)), v) for i, (v, _) in enumerate(values)]
    community, response = decode_response(_pysnmp_response(123456, varbinds))
    assert community == b"c" and response.request_id == 123456
    assert response.error_status == 0 and response.pdu_type == 0xA2
    assert [oid for oid, _ in response.varbinds] == [base + (i, 4194316032, 127)
                                                    for i in range(len(values))]
    assert [v for _, v in response.varbinds] == [expected for _, expected in values]


def test_error_status_is_decoded():
    _, response = decode_response(_pysnmp_response(7, [], error_status=1))
    assert (response.request_id, response.error_status) == (7, 1)


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x05\x02\x01\x01", b"\x04\x00",
                                  b"\x30\x03\x02\x01\x03"])
def test_malformed_messages_raise(data):
    with pytest.raises(BerError):
        decode_response(data)


@pytest.mark.parametrize("text", ["1.3.6.1.2.1.1.1.0", ".1.3.6.1.4.1.41112.1.5.6.2.1.9"])
def test_oid_text_round_trip(text):
    assert oid_text(parse_oid(text)) == text.lstrip(".")


@pytest.mark.parametrize("text", ["", "1", "1.3.x", "3.1.2", "1.-3"])
def test_bad_oid_text(text):
    with pytest.raises(ValueError):
        parse_oid(text)
