"""The SNMP v1/v2c codec of the poller, cross-checked against pysnmp's own encoder."""

from __future__ import annotations

import pytest
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.ber import encoder as ber_encoder
from pysnmp.proto import api, rfc1902, rfc1905

from collectors.snmp import ber

P = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]


def pysnmp_response(request_id: int, varbinds: list, community: bytes = b"public",
                    error_status: int = 0, error_index: int = 0) -> bytes:
    pdu = P.GetResponsePDU()
    P.apiPDU.set_defaults(pdu)
    P.apiPDU.set_request_id(pdu, request_id)
    P.apiPDU.set_error_status(pdu, error_status)
    P.apiPDU.set_error_index(pdu, error_index)
    P.apiPDU.set_varbinds(pdu, varbinds)
    msg = P.Message()
    P.apiMessage.set_defaults(msg)
    P.apiMessage.set_community(msg, community)
    P.apiMessage.set_pdu(msg, pdu)
    return ber_encoder.encode(msg)


@pytest.mark.parametrize("text", [
    "1.3.6.1.2.1.31.1.1.1.6.1", "1.3.6.1.2.1.2.2.1.8.4294967295", "0.0", "1.39", "2.999.1",
    "1.3.6.1.4.1.2011.6.128.1.1.2.51.1.4.4194316032.127", "1.3.6.1.4.1.41112.1.5.6.2.1.9.12."
    + ".".join(str(b) for b in b"UBNT12345678"),
])
def test_oid_round_trip_and_agreement_with_pysnmp(text):
    encoded = ber.encode_oid(text)
    assert ber.decode_oid(encoded) == text
    assert ber.encode_oid(tuple(int(p) for p in text.split("."))) == encoded
    # pysnmp encodes the same contents octets
    full = ber_encoder.encode(rfc1902.ObjectName(text))
    assert full.endswith(encoded) and full[0] == 0x06


def test_column_membership_is_a_byte_prefix_test():
    column = ber.encode_oid("1.3.6.1.2.1.31.1.1.1.1")
    assert ber.encode_oid("1.3.6.1.2.1.31.1.1.1.1.7").startswith(column)
    assert ber.encode_oid("1.3.6.1.2.1.31.1.1.1.1.300").startswith(column)
    assert not ber.encode_oid("1.3.6.1.2.1.31.1.1.1.10.7").startswith(column)
    assert not ber.encode_oid("1.3.6.1.2.1.31.1.1.1.18.7").startswith(column)
    assert ber.decode_subids(ber.encode_oid("1.3.6.1.2.1.31.1.1.1.1.300"), len(column)) == (300,)


@pytest.mark.parametrize("bad", ["1", "3.1", "1.40", "1.3.-6", ""])
def test_invalid_oids_are_refused(bad):
    with pytest.raises(ValueError):
        ber.encode_oid(bad)


def test_getbulk_request_decodes_in_pysnmp():
    oids = [ber.encode_oid("1.3.6.1.2.1.1.3"), ber.encode_oid("1.3.6.1.2.1.2.2.1.2")]
    data = ber.encode_request(b"s3cret", ber.GET_BULK, 123456789, oids, 1, 25)
    msg, rest = ber_decoder.decode(data, asn1Spec=P.Message())
    assert rest == b""
    assert bytes(P.apiMessage.get_community(msg)) == b"s3cret"
    pdu = P.apiMessage.get_pdu(msg)
    assert pdu.isSameTypeWith(P.GetBulkRequestPDU())
    assert int(P.apiBulkPDU.get_request_id(pdu)) == 123456789
    assert int(P.apiBulkPDU.get_non_repeaters(pdu)) == 1
    assert int(P.apiBulkPDU.get_max_repetitions(pdu)) == 25
    assert [str(n) for n, _ in P.apiBulkPDU.get_varbinds(pdu)] == [
        "1.3.6.1.2.1.1.3", "1.3.6.1.2.1.2.2.1.2"]


def test_a_large_request_uses_long_form_lengths():
    oids = [ber.encode_oid(f"1.3.6.1.2.1.31.1.1.1.{c}.{i}") for c in range(1, 19)
            for i in range(100, 110)]
    data = ber.encode_request(b"c", ber.GET_BULK, 1, oids, 0, 50)
    msg, _ = ber_decoder.decode(data, asn1Spec=P.Message())
    assert len(P.apiBulkPDU.get_varbinds(P.apiMessage.get_pdu(msg))) == 180


def test_response_values_of_every_type():
    vbs = [
        (rfc1902.ObjectName("1.3.6.1.2.1.1.3.0"), rfc1902.TimeTicks(4294967295)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.8.1"), rfc1902.Integer32(1)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.8.2"), rfc1902.Integer32(-2147483648)),
        (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.6.1"), rfc1902.Counter64(2**64 - 1)),
        (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.6.2"), rfc1902.Counter64(5892696685)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.10.1"), rfc1902.Counter32(4294967295)),
        (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.15.1"), rfc1902.Gauge32(100000)),
        (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.1.1"), rfc1902.OctetString(b"ge-0/0/0")),
        (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.18.1"), rfc1902.OctetString(b"x" * 300)),
        (rfc1902.ObjectName("1.3.6.1.2.1.1.2.0"), rfc1902.ObjectIdentifier("1.3.6.1.4.1.9")),
        (rfc1902.ObjectName("1.3.6.1.2.1.4.20.1.1.1"), rfc1902.IpAddress("192.0.2.7")),
        (rfc1902.ObjectName("1.3.6.1.2.1.99.1"), rfc1905.noSuchObject),
        (rfc1902.ObjectName("1.3.6.1.2.1.99.2"), rfc1905.noSuchInstance),
        (rfc1902.ObjectName("1.3.6.1.2.1.99.3"), rfc1905.endOfMibView),
    ]
    msg = ber.decode_message(pysnmp_response(2**31 - 1, vbs, b"pub"))
    assert (msg.version, msg.community, msg.pdu, msg.request_id) == (1, b"pub", ber.RESPONSE,
                                                                     2**31 - 1)
    assert (msg.error_status, msg.error_index) == (0, 0)
    assert [ber.decode_oid(o) for o, _ in msg.varbinds] == [str(n) for n, _ in vbs]
    assert [v for _, v in msg.varbinds] == [
        4294967295, 1, -2147483648, 2**64 - 1, 5892696685, 4294967295, 100000, b"ge-0/0/0",
        b"x" * 300, "1.3.6.1.4.1.9", "192.0.2.7", ber.NO_SUCH_OBJECT, ber.NO_SUCH_INSTANCE,
        ber.END_OF_MIB_VIEW]


def test_error_status_is_read():
    msg = ber.decode_message(pysnmp_response(7, [], error_status=1, error_index=0))
    assert msg.error_status == ber.TOO_BIG and msg.varbinds == []


def test_every_truncation_raises_ber_error_only():
    data = pysnmp_response(99, [(rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.6.1"),
                                 rfc1902.Counter64(12345678901)),
                                (rfc1902.ObjectName("1.3.6.1.2.1.31.1.1.1.1.1"),
                                 rfc1902.OctetString(b"eth0"))])
    for cut in range(len(data)):
        with pytest.raises(ber.BerError):
            ber.decode_message(data[:cut])
    assert len(ber.decode_message(data).varbinds) == 2


@pytest.mark.parametrize("garbage", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff",
                                     b"\x02\x01\x00", b"\x30\x03\x02\x01\x01",
                                     b"\x30\x80\x00\x00", b"\x30\x05\x02\x01\x01",
                                     b"\x04\x00", b"\x30\x03\x02\x01\x03"])
def test_garbage_raises_ber_error(garbage):
    with pytest.raises(ber.BerError):
        ber.decode_message(garbage)


# -- from the optics poller's former codec tests (its walks now use this codec) ------------

@pytest.mark.parametrize("request_id", [0, 1, 127, 128, 255, 256, 65535, 2**31 - 1])
def test_getbulk_request_ids_and_a_binary_community_read_back_by_pysnmp(request_id):
    texts = ["1.3.6.1.4.1.2011.6.128.1.1.2.51.1.4", "1.3.6.1.2.1.31.1.1.1.1",
             "1.3.6.1.4.1.3902.1082.500.1.2.4.2.1.2.268435456.200"]
    data = ber.encode_request(b"public-\xff", ber.GET_BULK, request_id,
                              [ber.encode_oid(t) for t in texts], 0, 16)
    msg, rest = ber_decoder.decode(data, asn1Spec=P.Message())
    assert rest == b""
    assert int(msg["version"]) == 1 and bytes(msg["community"]) == b"public-\xff"
    pdu = P.apiMessage.get_pdu(msg)
    assert pdu.isSameTypeWith(P.GetBulkRequestPDU())
    assert int(P.apiBulkPDU.get_request_id(pdu)) == request_id
    assert int(P.apiBulkPDU.get_max_repetitions(pdu)) == 16
    assert int(P.apiBulkPDU.get_non_repeaters(pdu)) == 0
    assert [str(o) for o, _ in P.apiBulkPDU.get_varbinds(pdu)] == texts


def test_optics_values_and_large_index_sub_identifiers_match_pysnmp():
    base = "1.3.6.1.4.1.1.2"
    values = [
        (rfc1902.Integer32(-2147483648), -2147483648),
        (rfc1902.Integer32(2147483647), 2147483647),
        (rfc1902.Integer32(-1461), -1461),
        (rfc1902.Integer32(0), 0),
        (rfc1902.OctetString(b"0.03 mW (-14.61 dBm)"), b"0.03 mW (-14.61 dBm)"),
        (rfc1902.OctetString(bytes.fromhex("48575443a1b23010")),
         bytes.fromhex("48575443a1b23010")),
        (rfc1902.OctetString(b"x" * 300), b"x" * 300),
        (rfc1902.Counter32(4294967295), 4294967295),
        (rfc1902.Gauge32(1000000000), 1000000000),
        (rfc1902.TimeTicks(111404777), 111404777),
        (rfc1902.Counter64(2**64 - 1), 2**64 - 1),
        (rfc1902.IpAddress("192.0.2.7"), "192.0.2.7"),
        (rfc1902.ObjectIdentifier("1.3.6.1.4.1.2011.2.123"), "1.3.6.1.4.1.2011.2.123"),
        (rfc1905.noSuchInstance, ber.NO_SUCH_INSTANCE),
        (rfc1905.endOfMibView, ber.END_OF_MIB_VIEW),
    ]
    names = [f"{base}.{i}.4194316032.127" for i in range(len(values))]
    msg = ber.decode_message(pysnmp_response(
        123456, [(rfc1902.ObjectName(n), v) for n, (v, _) in zip(names, values)], b"c"))
    assert (msg.community, msg.request_id, msg.error_status, msg.pdu) == (
        b"c", 123456, 0, ber.RESPONSE)
    assert [ber.decode_oid(o) for o, _ in msg.varbinds] == names
    column = ber.encode_oid(base)
    assert [ber.decode_subids(o, len(column)) for o, _ in msg.varbinds] == [
        (i, 4194316032, 127) for i in range(len(values))]
    assert [v for _, v in msg.varbinds] == [expected for _, expected in values]


@pytest.mark.parametrize("text", ["1.3.6.1.2.1.1.1.0", ".1.3.6.1.4.1.41112.1.5.6.2.1.9"])
def test_oid_text_round_trip(text):
    assert ber.parse_oid(text) == tuple(int(p) for p in text.lstrip(".").split("."))
    assert ber.decode_oid(ber.encode_oid(ber.parse_oid(text))) == text.lstrip(".")


@pytest.mark.parametrize("text", ["", "1", "1.3.x", "3.1.2", "1.-3"])
def test_bad_oid_text(text):
    with pytest.raises(ValueError):
        ber.parse_oid(text)
