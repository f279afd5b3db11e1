"""IF-MIB by number: the columns one interface poll reads, and how rows are assembled.

No MIB files are involved (pysnmp bundles no IF-MIB and Debian ships none): every object
is named by its numeric OID here, once.

A poll walks two groups of columns, each with GETBULK requests that carry one varbind
per column (so one response brings up to ``max-repetitions`` rows of every column):

- ``ifTable`` (1.3.6.1.2.1.2.2.1): ifDescr, ifAdminStatus, ifOperStatus, plus
  sysUpTime.0 as a non-repeater of the first request;
- ``ifXTable`` (1.3.6.1.2.1.31.1.1.1): ifName, ifHCInOctets, ifHCInUcastPkts,
  ifHCOutOctets, ifHCOutUcastPkts, ifHighSpeed, ifAlias.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from collectors.snmp.ber import decode_subids, encode_oid
from ispstream.contracts import IfRow

SYS_UPTIME = encode_oid("1.3.6.1.2.1.1.3")  # GETNEXT/non-repeater -> sysUpTime.0
SYS_UPTIME_0 = encode_oid("1.3.6.1.2.1.1.3.0")

IF_TABLE = "1.3.6.1.2.1.2.2.1"
IFX_TABLE = "1.3.6.1.2.1.31.1.1.1"


@dataclass(frozen=True)
class Column:
    """One IF-MIB column: the ``IfRow`` field it fills, its OID and its value kind."""

    field: str
    oid: str
    kind: str  # "text" (OCTET STRING) or "int" (INTEGER, Gauge32, Counter64)

    @cached_property
    def encoded(self) -> bytes:
        return encode_oid(self.oid)


IF_TABLE_COLUMNS = (
    Column("descr", f"{IF_TABLE}.2", "text"),  # ifDescr: the name when ifName is missing
    Column("admin_status", f"{IF_TABLE}.7", "int"),  # ifAdminStatus
    Column("oper_status", f"{IF_TABLE}.8", "int"),  # ifOperStatus
)
IFX_TABLE_COLUMNS = (
    Column("name", f"{IFX_TABLE}.1", "text"),  # ifName
    Column("in_octets", f"{IFX_TABLE}.6", "int"),  # ifHCInOctets
    Column("in_ucast_pkts", f"{IFX_TABLE}.7", "int"),  # ifHCInUcastPkts
    Column("out_octets", f"{IFX_TABLE}.10", "int"),  # ifHCOutOctets
    Column("out_ucast_pkts", f"{IFX_TABLE}.11", "int"),  # ifHCOutUcastPkts
    Column("high_speed_mbps", f"{IFX_TABLE}.15", "int"),  # ifHighSpeed
    Column("alias", f"{IFX_TABLE}.18", "text"),  # ifAlias
)
COLUMN_GROUPS = (IF_TABLE_COLUMNS, IFX_TABLE_COLUMNS)

_MAX_IF_INDEX = 2**32 - 1  # InterfaceIndex stops at 2^31 - 1; Huawei OLTs go past it


def if_index(oid: bytes, column: bytes) -> int | None:
    """The ifIndex of a column instance OID (``column`` + one sub-identifier), or None
    when the instance is not a single valid ifIndex."""
    n = len(oid) - len(column)
    if n == 1:
        return oid[-1] or None  # the common case: ifIndex < 128
    if n < 1:
        return None
    subids = decode_subids(oid, len(column))
    if len(subids) != 1 or not 0 < subids[0] <= _MAX_IF_INDEX:
        return None
    return subids[0]


def _text(value) -> str | None:
    if not isinstance(value, bytes):
        return None
    text = value.rstrip(b"\x00").decode("utf-8", "replace").strip()
    return text or None


def _int(value) -> int | None:
    return value if type(value) is int else None


def rows(columns: tuple[Column, ...], walked: list[list[tuple[bytes, object]]],
         into: dict[int, dict]) -> None:
    """Merge one walked column group (``walked[i]``: the ``(oid, value)`` pairs of
    ``columns[i]``) into ``into``: ifIndex -> {field: value}. Values of the wrong type
    (an agent's bug) are left out."""
    for column, pairs in zip(columns, walked):
        prefix = column.encoded
        field = column.field
        convert = _text if column.kind == "text" else _int
        for oid, value in pairs:
            index = if_index(oid, prefix)
            if index is None:
                continue
            converted = convert(value)
            if converted is None:
                continue
            row = into.get(index)
            if row is None:
                into[index] = {field: converted}
            else:
                row[field] = converted


def interfaces(merged: dict[int, dict]) -> list[IfRow]:
    """The ``IfRow`` of every interface seen in any column, by ifIndex; the name is
    ifName, else ifDescr."""
    out = []
    for index in sorted(merged):
        fields = merged[index]
        descr = fields.pop("descr", None)
        if "name" not in fields and descr is not None:
            fields["name"] = descr
        out.append(IfRow(if_index=index, **fields))
    return out
