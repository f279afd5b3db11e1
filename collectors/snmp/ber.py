"""A small, fast BER codec for SNMPv1/v2c messages (RFC 3416 PDUs).

The poller's v2c path encodes GetBulk/GetNext/Get requests and decodes their responses
here instead of through pysnmp: pyasn1's generic decoder costs ~100 µs per varbind, this
one a few µs, and decoding responses is most of a poller's CPU.

Object identifiers stay in their encoded form (``bytes``: the contents octets of the
OBJECT IDENTIFIER, without tag and length). Sub-identifiers are self-delimiting, so
``oid.startswith(column)`` is an exact "is in this subtree" test, and a response's OID
can be sent back in the next request as it is. ``encode_oid`` / ``decode_oid`` convert
from and to dotted text; ``parse_oid`` reads dotted text into a tuple of sub-identifiers.

Values decode to plain Python: INTEGER, Counter32, Gauge32, TimeTicks, Counter64 ->
``int``; OCTET STRING, Opaque -> ``bytes``; OBJECT IDENTIFIER -> dotted text; IpAddress
-> dotted text; NULL -> ``None``; the v2 exceptions -> the ``NO_SUCH_OBJECT``,
``NO_SUCH_INSTANCE`` and ``END_OF_MIB_VIEW`` markers. Anything malformed raises
``BerError``; nothing is trusted about lengths.
"""

from __future__ import annotations

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
IP_ADDRESS = 0x40
COUNTER32 = 0x41
GAUGE32 = 0x42
TIMETICKS = 0x43
OPAQUE = 0x44
COUNTER64 = 0x46

GET = 0xA0
GET_NEXT = 0xA1
RESPONSE = 0xA2
GET_BULK = 0xA5
TRAP_V2 = 0xA7
REPORT = 0xA8

VERSION_1 = 0
VERSION_2C = 1

ERROR_STATUS = {
    0: "noError", 1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr",
    6: "noAccess", 7: "wrongType", 8: "wrongLength", 9: "wrongEncoding", 10: "wrongValue",
    11: "noCreation", 12: "inconsistentValue", 13: "resourceUnavailable", 14: "commitFailed",
    15: "undoFailed", 16: "authorizationError", 17: "notWritable", 18: "inconsistentName",
}
TOO_BIG = 1


class BerError(ValueError):
    """A message that is not valid BER / SNMP."""


class Exceptional:
    """One of the SNMPv2 exception values (a varbind without a value)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_SUCH_OBJECT = Exceptional("noSuchObject")
NO_SUCH_INSTANCE = Exceptional("noSuchInstance")
END_OF_MIB_VIEW = Exceptional("endOfMibView")
_EXCEPTIONS = {0x80: NO_SUCH_OBJECT, 0x81: NO_SUCH_INSTANCE, 0x82: END_OF_MIB_VIEW}
_UNSIGNED = frozenset((COUNTER32, GAUGE32, TIMETICKS, COUNTER64))


# -- object identifiers -------------------------------------------------------------------

def _subid(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _check_oid(parts: tuple[int, ...], oid: object) -> tuple[int, ...]:
    if len(parts) < 2 or parts[0] > 2 or (parts[0] < 2 and parts[1] > 39):
        raise ValueError(f"not an OBJECT IDENTIFIER: {oid!r}")
    if any(p < 0 for p in parts):
        raise ValueError(f"not an OBJECT IDENTIFIER: {oid!r}")
    return parts


def parse_oid(text: str) -> tuple[int, ...]:
    """``"1.3.6.1.2.1"`` or ``".1.3.6..."`` -> ``(1, 3, 6, 1, 2, 1)``; ``ValueError``
    when it is not a valid OBJECT IDENTIFIER."""
    try:
        parts = tuple(int(p) for p in text.strip().strip(".").split("."))
    except ValueError:
        raise ValueError(f"not a numeric OBJECT IDENTIFIER: {text!r}") from None
    return _check_oid(parts, text)


def encode_oid(oid: str | tuple[int, ...]) -> bytes:
    """The contents octets of an OBJECT IDENTIFIER (``"1.3.6.1..."`` or a tuple)."""
    parts = parse_oid(oid) if isinstance(oid, str) else _check_oid(oid, oid)
    return _subid(parts[0] * 40 + parts[1]) + b"".join(_subid(p) for p in parts[2:])


def decode_subids(content: bytes, start: int = 0) -> tuple[int, ...]:
    """The sub-identifiers encoded in ``content[start:]`` (no first-pair folding)."""
    out = []
    n = 0
    for b in content[start:] if start else content:
        n = (n << 7) | (b & 0x7F)
        if b < 0x80:
            out.append(n)
            n = 0
    if content and content[-1] >= 0x80:
        raise BerError("truncated sub-identifier")
    return tuple(out)


def decode_oid(content: bytes) -> str:
    """Dotted text of an encoded OBJECT IDENTIFIER."""
    if not content:
        raise BerError("empty OBJECT IDENTIFIER")
    subids = decode_subids(content)
    first = subids[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return ".".join(map(str, head + subids[1:]))


# -- encoding -----------------------------------------------------------------------------

def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _length(len(body)) + body


def _integer(n: int) -> bytes:
    return _tlv(INTEGER, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


_NULL_VALUE = b"\x05\x00"


def encode_request(community: bytes, pdu: int, request_id: int, oids: list[bytes],
                   non_repeaters: int = 0, max_repetitions: int = 0,
                   version: int = VERSION_2C) -> bytes:
    """A v1/v2c request message: ``pdu`` (GET, GET_NEXT or GET_BULK) for ``oids``
    (encoded, see ``encode_oid``), each with a NULL value. For GET/GET_NEXT the two
    numbers are error-status and error-index (0)."""
    vbs = b"".join(_tlv(SEQUENCE, b"\x06" + _length(len(o)) + o + _NULL_VALUE) for o in oids)
    body = (_integer(request_id) + _integer(non_repeaters) + _integer(max_repetitions)
            + _tlv(SEQUENCE, vbs))
    return _tlv(SEQUENCE, _integer(version) + _tlv(OCTET_STRING, community) + _tlv(pdu, body))


# -- decoding -----------------------------------------------------------------------------

class Message:
    """A decoded v1/v2c message: header, PDU fields and varbinds ``(oid, value)``."""

    __slots__ = ("version", "community", "pdu", "request_id", "error_status", "error_index",
                 "varbinds")

    def __init__(self, version: int, community: bytes, pdu: int, request_id: int,
                 error_status: int, error_index: int, varbinds: list) -> None:
        self.version = version
        self.community = community
        self.pdu = pdu
        self.request_id = request_id
        self.error_status = error_status
        self.error_index = error_index
        self.varbinds = varbinds


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at ``pos``."""
    if pos + 2 > end:
        raise BerError("truncated")
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n >= 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise BerError("bad length")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    if pos + n > end:
        raise BerError("truncated")
    return tag, pos, pos + n


def _int_at(data: bytes, pos: int, end: int) -> tuple[int, int]:
    tag, start, stop = _header(data, pos, end)
    if tag != INTEGER or stop == start:
        raise BerError("expected INTEGER")
    return int.from_bytes(data[start:stop], "big", signed=True), stop


def decode_message(data: bytes) -> Message:
    """Decode a v1/v2c message (any PDU with the request-id layout: Response, Report,
    SNMPv2-Trap, Get...). Raises ``BerError`` when malformed."""
    size = len(data)
    tag, pos, end = _header(data, 0, size)
    if tag != SEQUENCE:
        raise BerError("not a SEQUENCE")
    version, pos = _int_at(data, pos, end)
    tag, start, pos = _header(data, pos, end)
    if tag != OCTET_STRING:
        raise BerError("expected the community")
    community = data[start:pos]
    pdu, pos, end = _header(data, pos, end)
    if pdu < 0xA0 or pdu > 0xA8 or pdu == 0xA4:
        raise BerError(f"unsupported PDU type 0x{pdu:02x}")
    request_id, pos = _int_at(data, pos, end)
    error_status, pos = _int_at(data, pos, end)
    error_index, pos = _int_at(data, pos, end)
    tag, pos, end = _header(data, pos, end)
    if tag != SEQUENCE:
        raise BerError("expected the varbind list")
    return Message(version, community, pdu, request_id, error_status, error_index,
                   _varbinds(data, pos, end))


def _varbinds(data: bytes, pos: int, end: int) -> list:
    """The hot loop: every length is read inline and bounds-checked."""
    out = []
    append = out.append
    from_bytes = int.from_bytes
    unsigned = _UNSIGNED
    exceptions = _EXCEPTIONS
    while pos < end:
        if data[pos] != SEQUENCE or pos + 2 > end:
            raise BerError("expected a varbind")
        n = data[pos + 1]
        pos += 2
        if n >= 0x80:
            k = n & 0x7F
            if k == 0 or k > 4:
                raise BerError("bad length")
            n = from_bytes(data[pos:pos + k], "big")
            pos += k
        vb_end = pos + n
        if vb_end > end or pos + 2 > vb_end or data[pos] != OBJECT_IDENTIFIER:
            raise BerError("bad varbind")
        n = data[pos + 1]
        pos += 2
        if n >= 0x80:
            k = n & 0x7F
            if k == 0 or k > 4:
                raise BerError("bad length")
            n = from_bytes(data[pos:pos + k], "big")
            pos += k
        oid = data[pos:pos + n]
        pos += n
        if pos + 2 > vb_end:
            raise BerError("bad varbind")
        tag = data[pos]
        n = data[pos + 1]
        pos += 2
        if n >= 0x80:
            k = n & 0x7F
            if k == 0 or k > 4:
                raise BerError("bad length")
            n = from_bytes(data[pos:pos + k], "big")
            pos += k
        if pos + n != vb_end or not oid:
            raise BerError("bad varbind")
        if tag in unsigned:
            value = from_bytes(data[pos:vb_end], "big")
        elif tag == OCTET_STRING or tag == OPAQUE:
            value = data[pos:vb_end]
        elif tag == INTEGER:
            value = from_bytes(data[pos:vb_end], "big", signed=True)
        elif tag in exceptions:
            value = exceptions[tag]
        elif tag == OBJECT_IDENTIFIER:
            value = decode_oid(data[pos:vb_end])
        elif tag == IP_ADDRESS:
            value = ".".join(map(str, data[pos:vb_end]))
        elif tag == NULL:
            value = None
        else:
            raise BerError(f"unsupported value type 0x{tag:02x}")
        append((oid, value))
        pos = vb_end
    return out
