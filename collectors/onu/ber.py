"""A small BER codec for SNMPv2c GetBulk requests and their responses.

Only what the optics poller sends and reads: a v2c message with a GetBulkRequest PDU
out, a Response PDU in. Values decode to plain Python: INTEGER, Counter32/64, Gauge32,
TimeTicks -> ``int``; OCTET STRING, Opaque -> ``bytes``; OBJECT IDENTIFIER -> tuple of
ints; IpAddress -> dotted text; the v2 exceptions -> the ``NO_SUCH_OBJECT``,
``NO_SUCH_INSTANCE`` and ``END_OF_MIB_VIEW`` markers. No MIB, no pyasn1: decoding a
varbind costs a few microseconds, which is what keeps a 128-ONU poll cheap.
"""

from __future__ import annotations

import re

OID = tuple[int, ...]


class _Exception:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_SUCH_OBJECT = _Exception("noSuchObject")
NO_SUCH_INSTANCE = _Exception("noSuchInstance")
END_OF_MIB_VIEW = _Exception("endOfMibView")
EXCEPTIONS = (NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW)

GET_BULK = 0xA5
RESPONSE = 0xA2
REPORT = 0xA8

ERROR_STATUS = {
    0: "noError", 1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr",
    6: "noAccess", 7: "wrongType", 8: "wrongLength", 9: "wrongEncoding", 10: "wrongValue",
    11: "noCreation", 12: "inconsistentValue", 13: "resourceUnavailable", 14: "commitFailed",
    15: "undoFailed", 16: "authorizationError", 17: "notWritable", 18: "inconsistentName",
}


class BerError(ValueError):
    """A message that is not well-formed BER / SNMP."""


def parse_oid(text: str) -> OID:
    """``"1.3.6.1.2.1"`` or ``".1.3.6..."`` -> ``(1, 3, 6, 1, 2, 1)``."""
    parts = text.strip().lstrip(".").split(".")
    try:
        oid = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"not a numeric OID: {text!r}") from None
    if len(oid) < 2 or oid[0] > 2 or any(p < 0 for p in oid):
        raise ValueError(f"not a valid OID: {text!r}")
    return oid


def oid_text(oid: OID) -> str:
    return ".".join(map(str, oid))


# -- encoding -------------------------------------------------------------------------

def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _integer(value: int) -> bytes:
    size = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return _tlv(0x02, value.to_bytes(size, "big", signed=True))


def _encode_oid(oid: OID) -> bytes:
    out = bytearray()
    arcs = [oid[0] * 40 + oid[1], *oid[2:]]
    for arc in arcs:
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = []
        while arc:
            chunk.append(arc & 0x7F)
            arc >>= 7
        chunk.reverse()
        out.extend([c | 0x80 for c in chunk[:-1]] + [chunk[-1]])
    return _tlv(0x06, bytes(out))


def encode_getbulk(community: bytes, request_id: int, oids: list[OID],
                   max_repetitions: int, non_repeaters: int = 0) -> bytes:
    """A complete SNMPv2c GetBulkRequest message."""
    varbinds = b"".join(_tlv(0x30, _encode_oid(o) + b"\x05\x00") for o in oids)
    pdu = _tlv(GET_BULK, _integer(request_id) + _integer(non_repeaters)
               + _integer(max_repetitions) + _tlv(0x30, varbinds))
    return _tlv(0x30, _integer(1) + _tlv(0x04, community) + pdu)


# -- decoding -------------------------------------------------------------------------

def _read_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the TLV at ``pos``."""
    try:
        tag = data[pos]
        first = data[pos + 1]
    except IndexError:
        raise BerError("truncated message") from None
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise BerError("unsupported length form")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise BerError("truncated message")
    return tag, pos, end


_HIGH_BYTE = re.compile(rb"[\x80-\xff]")


def _decode_oid(data: bytes, start: int, end: int) -> OID:
    if start >= end:
        raise BerError("empty OID")
    raw = data[start:end]
    # Arcs below 128 are one byte each: take the run before the first multi-byte arc
    # in one step (table OIDs are mostly that), decode the rest byte by byte.
    m = _HIGH_BYTE.search(raw)
    cut = m.start() if m else len(raw)
    arcs = list(raw[:cut])
    value = 0
    for b in raw[cut:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise BerError("empty OID")
    first = arcs[0]
    if first < 40:
        head = (0, first)
    elif first < 80:
        head = (1, first - 40)
    else:
        head = (2, first - 80)
    return head + tuple(arcs[1:])


def _decode_value(tag: int, data: bytes, start: int, end: int):
    if tag == 0x02:
        return int.from_bytes(data[start:end], "big", signed=True)
    if tag == 0x04 or tag == 0x44:
        return data[start:end]
    if tag in (0x41, 0x42, 0x43, 0x46, 0x47):
        return int.from_bytes(data[start:end], "big", signed=False)
    if tag == 0x06:
        return _decode_oid(data, start, end)
    if tag == 0x40:
        return ".".join(str(b) for b in data[start:end])
    if tag == 0x05:
        return None
    if tag == 0x80:
        return NO_SUCH_OBJECT
    if tag == 0x81:
        return NO_SUCH_INSTANCE
    if tag == 0x82:
        return END_OF_MIB_VIEW
    raise BerError(f"unsupported value type 0x{tag:02x}")


class Response:
    """A decoded SNMP response PDU."""

    __slots__ = ("request_id", "error_status", "error_index", "varbinds", "pdu_type")

    def __init__(self, pdu_type: int, request_id: int, error_status: int, error_index: int,
                 varbinds: list[tuple[OID, object]]) -> None:
        self.pdu_type = pdu_type
        self.request_id = request_id
        self.error_status = error_status
        self.error_index = error_index
        self.varbinds = varbinds


def decode_response(data: bytes) -> tuple[bytes, Response]:
    """(community, response) of an SNMPv1/v2c message; raises ``BerError``."""
    tag, pos, end = _read_header(data, 0)
    if tag != 0x30:
        raise BerError("not an SNMP message")
    tag, s, e = _read_header(data, pos)
    if tag != 0x02:
        raise BerError("no version")
    version = int.from_bytes(data[s:e], "big")
    if version not in (0, 1):
        raise BerError(f"unsupported SNMP version {version}")
    tag, s, e = _read_header(data, e)
    if tag != 0x04:
        raise BerError("no community")
    community = data[s:e]
    pdu_type, pos, pdu_end = _read_header(data, e)
    fields = []
    for _ in range(3):
        tag, s, e = _read_header(data, pos)
        if tag != 0x02:
            raise BerError("malformed PDU header")
        fields.append(int.from_bytes(data[s:e], "big", signed=True))
        pos = e
    tag, pos, list_end = _read_header(data, pos)
    if tag != 0x30:
        raise BerError("no varbind list")
    varbinds = []
    append = varbinds.append
    while pos < list_end:
        _, vb_start, vb_end = _read_header(data, pos)
        tag, s, e = _read_header(data, vb_start)
        if tag != 0x06:
            raise BerError("varbind without OID")
        oid = _decode_oid(data, s, e)
        vtag, vs, ve = _read_header(data, e)
        append((oid, _decode_value(vtag, data, vs, ve)))
        pos = vb_end
    return community, Response(pdu_type, fields[0], fields[1], fields[2], varbinds)
