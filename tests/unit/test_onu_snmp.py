"""Table walks over GETBULK against an in-memory agent: every row of every column, no
more, at most ``max_inflight`` requests in flight, tooBig and truncated answers."""

from __future__ import annotations

import asyncio
import bisect

import pytest

from collectors.onu.snmp import Session, SnmpError
from collectors.snmp.ber import END_OF_MIB_VIEW, RESPONSE, Message, encode_oid, parse_oid
from collectors.snmp.ber import decode_oid as _oid_text
from collectors.snmp.devices import Device

COLS = [parse_oid(f"1.3.6.1.4.1.9.1.{c}") for c in (1, 2, 3, 5)]


def Target(address, version="2c", community=None, max_inflight=2):
    return Device("t", "olt", "olt", address, version=version, community=community,
                  max_inflight=max_inflight)


def Response(pdu, request_id, error_status, error_index, varbinds):
    """What a fake agent answers, with OIDs as tuples."""
    return error_status, error_index, varbinds


def table(rows: int):
    data = []
    for c in COLS:
        data += [(c + (r,), r * 10 + c[-1]) for r in range(1, rows + 1)]
    data.append((parse_oid("1.3.6.1.4.1.9.2.1"), 99))           # after the table
    return sorted(data)


class FakeAgent:
    """GETBULK semantics over a sorted list; counts concurrency."""

    def __init__(self, data, max_varbinds=64, too_big_over=None, delay=0.001):
        self.oids = [o for o, _ in data]
        self.data = data
        self.max_varbinds = max_varbinds
        self.too_big_over = too_big_over
        self.delay = delay
        self.inflight = 0
        self.peak = 0
        self.requests = 0

    async def request(self, host, port, community, pdu, oids, non_repeaters, max_repetitions,
                      timeout, retries):
        """The v2c transport's interface over ``answer`` (OIDs as tuples)."""
        status, index, varbinds = await self.answer(
            (host, port), community, [parse_oid(_oid_text(o)) for o in oids], max_repetitions,
            timeout, retries)
        return Message(1, community, RESPONSE, 1, status, index,
                       [(encode_oid(o), v) for o, v in varbinds])

    async def answer(self, addr, community, oids, max_repetitions, timeout, retries):
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        self.requests += 1
        try:
            await asyncio.sleep(self.delay)
            if self.too_big_over and len(oids) * max_repetitions > self.too_big_over:
                return Response(0xA2, 1, 1, 0, [])
            out = []
            cursor = list(oids)
            for _ in range(max_repetitions):
                for i, cur in enumerate(cursor):
                    j = bisect.bisect_right(self.oids, cur)
                    if j < len(self.oids):
                        oid, value = self.data[j]
                    else:
                        oid, value = cur, END_OF_MIB_VIEW
                    cursor[i] = oid
                    out.append((oid, value))
            return Response(0xA2, 1, 0, 0, out[:self.max_varbinds])
        finally:
            self.inflight -= 1


class FakeClient:
    def __init__(self, agent):
        self.v2c = agent


def walk(agent, max_inflight=2, budget=48, columns=COLS):
    session = Session(FakeClient(agent), Target("192.0.2.1", community="c",
                                                max_inflight=max_inflight))
    return asyncio.run(session.walk_columns(columns, budget)), session


@pytest.mark.parametrize("rows", [0, 1, 7, 128, 300])
@pytest.mark.parametrize("max_inflight", [1, 2, 3])
def test_every_row_of_every_column(rows, max_inflight):
    agent = FakeAgent(table(rows))
    result, session = walk(agent, max_inflight)
    for c in COLS:
        assert result[c] == [((r,), r * 10 + c[-1]) for r in range(1, rows + 1)]
    assert agent.peak <= max_inflight
    assert session.requests == agent.requests


def test_several_columns_share_a_request():
    agent = FakeAgent(table(128))
    walk(agent, max_inflight=1, budget=48)
    # 4 columns x 12 repetitions per request: 128 rows need 11 requests, not 4 x 11
    assert agent.requests == 11


def test_truncated_answers_still_finish():
    agent = FakeAgent(table(50), max_varbinds=5)
    result, _ = walk(agent, max_inflight=2)
    assert all(len(result[c]) == 50 for c in COLS)


def test_too_big_halves_the_request():
    agent = FakeAgent(table(40), too_big_over=10)
    result, _ = walk(agent, max_inflight=1, budget=48)
    assert all(len(result[c]) == 40 for c in COLS)


def test_a_column_past_the_end_of_the_mib():
    last = parse_oid("1.3.6.1.4.1.9.2")
    agent = FakeAgent([(last + (1,), 1), (last + (2,), 2)])
    result, _ = walk(agent, columns=[last])
    assert result[last] == [((1,), 1), ((2,), 2)]


def test_a_looping_agent_is_a_protocol_error():
    class Looping(FakeAgent):
        async def answer(self, addr, community, oids, max_repetitions, timeout, retries):
            return Response(0xA2, 1, 0, 0, [(COLS[0] + (1,), 1)] * len(oids))

    with pytest.raises(SnmpError) as err:
        walk(Looping([]), max_inflight=1, columns=[COLS[0]])
    assert err.value.kind == "protocol"


def test_target_validation():
    with pytest.raises(ValueError, match="community"):
        Session(FakeClient(None), Target("192.0.2.1", version="2c"))
    with pytest.raises(ValueError, match="user"):
        Session(FakeClient(None), Target("192.0.2.1", version="3"))
    with pytest.raises(ValueError, match="version"):
        Session(FakeClient(None), Target("192.0.2.1", version="1", community="c"))


def test_a_failing_walker_stops_the_others():
    class OneDead(FakeAgent):
        async def answer(self, addr, community, oids, max_repetitions, timeout, retries):
            if COLS[0] in oids or any(o[:len(COLS[0])] == COLS[0] for o in oids):
                raise SnmpError("timeout")
            return await super().answer(addr, community, oids, max_repetitions, timeout,
                                        retries)

    agent = OneDead(table(500), delay=0.01)
    with pytest.raises(SnmpError) as err:
        walk(agent, max_inflight=2, budget=4)
    assert err.value.kind == "timeout"
    assert agent.requests < 20          # the healthy walker did not go on to the end
