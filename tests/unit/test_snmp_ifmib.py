"""IF-MIB rows from walked columns: names, fallbacks, types, indexes."""

from __future__ import annotations

from collectors.snmp import ifmib
from collectors.snmp.ber import NO_SUCH_INSTANCE, encode_oid


def walked(group, values: dict[str, dict[int, object]]) -> list:
    out = []
    for column in group:
        pairs = values.get(column.field, {})
        out.append([(encode_oid(f"{column.oid}.{i}"), v) for i, v in sorted(pairs.items())])
    return out


def test_interfaces_merge_both_tables_and_fall_back_to_ifdescr():
    merged: dict[int, dict] = {}
    ifmib.rows(ifmib.IF_TABLE_COLUMNS, walked(ifmib.IF_TABLE_COLUMNS, {
        "descr": {1: b"lo", 2: b"GigabitEthernet0/0/1", 300: b"Tunnel9"},
        "admin_status": {1: 1, 2: 1, 300: 2},
        "oper_status": {1: 1, 2: 2, 300: 2},
    }), merged)
    ifmib.rows(ifmib.IFX_TABLE_COLUMNS, walked(ifmib.IFX_TABLE_COLUMNS, {
        "name": {1: b"lo", 2: b"Gi0/0/1\x00"},
        "in_octets": {1: 5892696685, 2: 2**64 - 1},
        "out_octets": {1: 7, 2: 0},
        "in_ucast_pkts": {2: 11},
        "out_ucast_pkts": {2: 12},
        "high_speed_mbps": {1: 0, 2: 1000},
        "alias": {1: b"", 2: b"uplink to core \xe2\x80\x93 A"},
    }), merged)
    rows = ifmib.interfaces(merged)
    assert [r.if_index for r in rows] == [1, 2, 300]
    lo, gi, tun = rows
    assert (lo.name, lo.alias, lo.in_octets, lo.out_octets, lo.oper_status) == (
        "lo", None, 5892696685, 7, 1)
    assert (gi.name, gi.alias, gi.in_octets, gi.in_ucast_pkts, gi.out_ucast_pkts,
            gi.high_speed_mbps, gi.admin_status, gi.oper_status) == (
        "Gi0/0/1", "uplink to core – A", 2**64 - 1, 11, 12, 1000, 1, 2)
    assert (tun.name, tun.in_octets, tun.high_speed_mbps) == ("Tunnel9", None, None)


def test_values_of_the_wrong_type_and_odd_indexes_are_left_out():
    merged: dict[int, dict] = {}
    column = ifmib.IFX_TABLE_COLUMNS[1]  # ifHCInOctets
    pairs = [
        (encode_oid(f"{column.oid}.1"), b"12"),  # a string where a counter belongs
        (encode_oid(f"{column.oid}.2"), NO_SUCH_INSTANCE),
        (encode_oid(f"{column.oid}.3.1"), 5),  # two-part index: not an ifIndex
        (encode_oid(f"{column.oid}.0"), 5),  # ifIndex 0 does not exist
        (encode_oid(f"{column.oid}.2147483647"), 9),
        (encode_oid(f"{column.oid}.4194316032"), 10),  # a Huawei PON port, past 2^31
        (encode_oid(f"{column.oid}.4294967296"), 11),  # past 32 bits: not an ifIndex
    ]
    walked_ = [[] for _ in ifmib.IFX_TABLE_COLUMNS]
    walked_[1] = pairs
    ifmib.rows(ifmib.IFX_TABLE_COLUMNS, walked_, merged)
    assert merged == {2147483647: {"in_octets": 9}, 4194316032: {"in_octets": 10}}


def test_if_index_decoding():
    column = encode_oid("1.3.6.1.2.1.31.1.1.1.6")
    assert ifmib.if_index(encode_oid("1.3.6.1.2.1.31.1.1.1.6.5"), column) == 5
    assert ifmib.if_index(encode_oid("1.3.6.1.2.1.31.1.1.1.6.268435456"), column) == 268435456
    assert ifmib.if_index(column, column) is None
