"""Multi-column GETBULK walks against an in-memory agent with real GETBULK semantics."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from collectors.snmp import ifmib
from collectors.snmp.ber import END_OF_MIB_VIEW, TOO_BIG, decode_oid, decode_subids, encode_oid
from collectors.snmp.walk import MAX_REQUESTS_PER_WALK, SnmpError, walk


def _key(oid: bytes) -> tuple[int, ...]:
    return decode_subids(oid)


class Agent:
    """GETBULK over a sorted table of (oid, value), RFC 3416 style: non-repeaters get one
    successor, repeaters up to max-repetitions successors each (row-major), the response
    cut at ``max_varbinds``; ``too_big_above`` answers tooBig for larger requests."""

    def __init__(self, objects: dict[str, object], max_varbinds: int = 10_000,
                 too_big_above: int | None = None) -> None:
        items = sorted((encode_oid(k), v) for k, v in objects.items())
        items.sort(key=lambda kv: _key(kv[0]))
        self.oids = [o for o, _ in items]
        self.keys = [_key(o) for o in self.oids]
        self.values = [v for _, v in items]
        self.max_varbinds = max_varbinds
        self.too_big_above = too_big_above
        self.requests: list[tuple[int, int, int]] = []

    def next(self, oid: bytes) -> tuple[bytes, object]:
        i = bisect.bisect_right(self.keys, _key(oid))
        if i >= len(self.oids):
            return oid, END_OF_MIB_VIEW
        return self.oids[i], self.values[i]

    async def bulk(self, oids, non_repeaters, max_repetitions):
        self.requests.append((len(oids), non_repeaters, max_repetitions))
        repeaters = oids[non_repeaters:]
        if self.too_big_above and len(repeaters) * max_repetitions > self.too_big_above:
            return TOO_BIG, 0, []
        out = [self.next(o) for o in oids[:non_repeaters]]
        cursors = list(repeaters)
        for _ in range(max_repetitions if repeaters else 0):
            for j, c in enumerate(cursors):
                out.append(self.next(c))
                cursors[j] = out[-1][0]
        return 0, 0, out[:self.max_varbinds]


def if_mib(n: int, with_hc: int | None = None) -> dict[str, object]:
    """ifTable and ifXTable of ``n`` interfaces (ifIndex 1, 2, 3, 1000+...), plus
    neighbours before and after, so walks must stop at the column edges."""
    objs: dict[str, object] = {"1.3.6.1.2.1.1.3.0": 4242, "1.3.6.1.2.1.1.1.0": b"test",
                               "1.3.6.1.2.1.2.1.0": n, "1.3.6.1.2.1.4.1.0": 1}
    indexes = [1, 2, 3] + [1000 + i for i in range(n - 3)]
    for position, i in enumerate(indexes):
        objs[f"1.3.6.1.2.1.2.2.1.1.{i}"] = i
        objs[f"1.3.6.1.2.1.2.2.1.2.{i}"] = f"descr{i}".encode()
        objs[f"1.3.6.1.2.1.2.2.1.7.{i}"] = 1
        objs[f"1.3.6.1.2.1.2.2.1.8.{i}"] = 1 if i % 2 else 2
        objs[f"1.3.6.1.2.1.31.1.1.1.1.{i}"] = f"if{i}".encode()
        if with_hc is None or position < with_hc:
            objs[f"1.3.6.1.2.1.31.1.1.1.6.{i}"] = 2**40 + i
            objs[f"1.3.6.1.2.1.31.1.1.1.10.{i}"] = 2**33 + i
        objs[f"1.3.6.1.2.1.31.1.1.1.15.{i}"] = 1000
        objs[f"1.3.6.1.2.1.31.1.1.1.18.{i}"] = b""
    return objs


def columns(group) -> list[bytes]:
    return [c.encoded for c in group]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("reps", [1, 7, 25, 50])
@pytest.mark.parametrize("cap", [10_000, 64, 10])
def test_walk_reads_every_row_of_every_column(reps, cap):
    agent = Agent(if_mib(60, with_hc=40), max_varbinds=cap)
    result = run(walk(agent.bulk, columns(ifmib.IFX_TABLE_COLUMNS), reps))
    got = {ifmib.IFX_TABLE_COLUMNS[i].field: len(pairs)
           for i, pairs in enumerate(result.columns)}
    assert got == {"name": 60, "in_octets": 40, "in_ucast_pkts": 0, "out_octets": 40,
                   "out_ucast_pkts": 0, "high_speed_mbps": 60, "alias": 60}
    merged: dict[int, dict] = {}
    ifmib.rows(ifmib.IFX_TABLE_COLUMNS, result.columns, merged)
    assert merged[1000]["in_octets"] == 2**40 + 1000
    assert merged[2]["name"] == "if2" and "alias" not in merged[2]
    assert sorted(merged) == [1, 2, 3] + [1000 + i for i in range(57)]
    if cap == 10_000:  # whole responses: ceil(60 / reps) + 1 requests at most
        assert result.requests <= -(-60 // reps) + 1


def test_the_scalar_rides_along_and_is_sysuptime():
    agent = Agent(if_mib(5))
    result = run(walk(agent.bulk, columns(ifmib.IF_TABLE_COLUMNS), 25,
                      scalars=[ifmib.SYS_UPTIME]))
    assert result.scalars == [4242]
    assert agent.requests == [(4, 1, 25)]  # one request: 5 rows and the ends
    assert [len(c) for c in result.columns] == [5, 5, 5]


def test_a_missing_scalar_is_none():
    objs = if_mib(3)
    del objs["1.3.6.1.2.1.1.3.0"]
    result = run(walk(Agent(objs).bulk, columns(ifmib.IF_TABLE_COLUMNS), 10,
                      scalars=[ifmib.SYS_UPTIME]))
    assert result.scalars == [None]


def test_an_empty_table_ends_at_once():
    agent = Agent({"1.3.6.1.2.1.1.3.0": 1, "1.3.6.1.2.1.4.1.0": 1})
    result = run(walk(agent.bulk, columns(ifmib.IFX_TABLE_COLUMNS), 25))
    assert result.columns == [[]] * 7 and result.requests == 1


def test_the_end_of_the_mib_ends_the_walk():
    objs = {k: v for k, v in if_mib(4).items() if not k.startswith("1.3.6.1.2.1.4.")}
    objs = {k: v for k, v in objs.items() if not k.startswith("1.3.6.1.2.1.31.1.1.1.18")}
    result = run(walk(Agent(objs).bulk, columns(ifmib.IFX_TABLE_COLUMNS), 25))
    assert len(result.columns[-1]) == 0 and len(result.columns[0]) == 4


def test_too_big_halves_the_repetitions():
    agent = Agent(if_mib(30), too_big_above=70)
    result = run(walk(agent.bulk, columns(ifmib.IFX_TABLE_COLUMNS), 40))
    assert result.max_repetitions == 10  # 7 columns x 10 = 70
    assert [len(c) for c in result.columns] == [30, 30, 0, 30, 0, 30, 30]


def test_too_big_at_one_repetition_fails():
    agent = Agent(if_mib(3), too_big_above=1)
    with pytest.raises(SnmpError, match="agent error: tooBig"):
        run(walk(agent.bulk, columns(ifmib.IF_TABLE_COLUMNS), 8))


def test_an_agent_error_fails_the_walk():
    async def gen_err(oids, nr, mr):
        return 5, 1, []

    with pytest.raises(SnmpError, match="agent error: genErr"):
        run(walk(gen_err, columns(ifmib.IF_TABLE_COLUMNS), 8))


def test_an_agent_that_goes_backwards_is_stopped_not_looped():
    agent = Agent(if_mib(10))
    calls = []

    async def backwards(oids, nr, mr):
        calls.append(oids)
        status, index, vbs = await agent.bulk(oids, nr, mr)
        if len(calls) > 1:  # from the second response on, answer the first rows again
            status, index, vbs = await agent.bulk(
                [ifmib.IFX_TABLE_COLUMNS[0].encoded] * len(oids), nr, mr)
        return status, index, vbs

    result = run(walk(backwards, [ifmib.IFX_TABLE_COLUMNS[0].encoded], 3))
    assert result.stopped_columns == 1 and len(calls) == 2
    assert [decode_oid(o) for o, _ in result.columns[0]][:3] == [
        "1.3.6.1.2.1.31.1.1.1.1.1", "1.3.6.1.2.1.31.1.1.1.1.2", "1.3.6.1.2.1.31.1.1.1.1.3"]


def test_an_empty_response_is_an_error_not_a_loop():
    async def empty(oids, nr, mr):
        return 0, 0, []

    with pytest.raises(SnmpError, match="empty response"):
        run(walk(empty, columns(ifmib.IF_TABLE_COLUMNS), 8))


def test_a_walk_that_never_ends_is_cut():
    counter = iter(range(1, 10**9))

    async def endless(oids, nr, mr):
        return 0, 0, [(encode_oid(f"1.3.6.1.2.1.2.2.1.2.{next(counter)}"), b"x")
                      for _ in oids]

    with pytest.raises(SnmpError, match="did not end"):
        run(walk(endless, [ifmib.IF_TABLE_COLUMNS[0].encoded], 1))
    assert MAX_REQUESTS_PER_WALK >= 1000


def test_a_varbind_budget_gives_the_room_of_ended_columns_to_the_others():
    agent = Agent(if_mib(60, with_hc=10))
    name, in_octets = ifmib.IFX_TABLE_COLUMNS[0].encoded, ifmib.IFX_TABLE_COLUMNS[1].encoded
    result = run(walk(agent.bulk, [name, in_octets], 10, varbind_budget=20))
    assert [len(c) for c in result.columns] == [60, 10]
    assert agent.requests == [(2, 0, 10), (2, 0, 10), (1, 0, 20), (1, 0, 20), (1, 0, 20)]


def test_too_big_halves_a_varbind_budget():
    agent = Agent(if_mib(30), too_big_above=10)
    result = run(walk(agent.bulk, columns(ifmib.IF_TABLE_COLUMNS), 16, varbind_budget=48))
    assert [len(c) for c in result.columns] == [30, 30, 30]
    assert all(n * reps <= 10 for n, _, reps in agent.requests[3:])


def test_errors_have_a_kind():
    assert (SnmpError("timeout").kind, SnmpError("authentication failure").kind) == (
        "timeout", "auth")
    assert SnmpError("agent error: empty response").kind == "protocol"

    async def gen_err(oids, nr, mr):
        return 5, 1, []

    with pytest.raises(SnmpError) as err:
        run(walk(gen_err, columns(ifmib.IF_TABLE_COLUMNS), 8))
    assert (err.value.kind, err.value.status) == ("error-status", 5)
