"""Poller logic without a network: reachability changes, schedules, one device's polls."""

from __future__ import annotations

import asyncio
import random

from collectors.snmp import ifmib
from collectors.snmp.ber import END_OF_MIB_VIEW, encode_oid
from collectors.snmp.devices import Device
from collectors.snmp.poller import DevicePoller, Reachability, Schedule
from collectors.snmp.walk import SnmpError


def test_unreachable_once_after_n_failures_then_recovered_once():
    r = Reachability(3)
    assert r.success() == (True, "responding", 0)  # first verdict after a start
    assert r.success() is None
    assert [r.failure("timeout") for _ in range(2)] == [None, None]
    assert r.failure("timeout") == (False, "timeout", 3)
    assert [r.failure("timeout") for _ in range(5)] == [None] * 5
    assert r.success() == (True, "recovered", 8)
    assert r.success() is None
    assert r.failure("timeout") is None and r.success() is None  # one blip: no change


def test_a_device_down_from_the_start_is_announced_unreachable():
    r = Reachability(2)
    assert r.failure("authentication failure") is None
    assert r.failure("authentication failure") == (False, "authentication failure", 2)


def test_schedule_spreads_jitters_and_never_catches_up():
    rng = random.Random(7)
    s = Schedule(60, 0.1, now=1000.0, rng=rng)
    assert 1000 <= s.slot < 1060
    first = s.slot
    due = s.due()
    assert first <= due < first + 6
    nxt = s.advance(due + 1)  # a quick poll: the next slot
    assert first + 60 <= nxt < first + 66 and s.skipped == 0
    late = s.advance(first + 60 + 200)  # a poll that overran by 3+ intervals
    assert s.skipped == 3 and late >= first + 60 + 200
    assert (s.slot - first) % 60 == 0  # still on the device's phase


class FakeSession:
    """A device that answers from a tiny IF-MIB, or fails with a reason."""

    def __init__(self) -> None:
        self.fail: str | None = None
        self.requests = 0

    async def bulk(self, oids, non_repeaters, max_repetitions):
        self.requests += 1
        if self.fail:
            raise SnmpError(self.fail)
        out = []
        for oid in oids[:non_repeaters]:
            out.append((ifmib.SYS_UPTIME_0, 123456) if oid == ifmib.SYS_UPTIME
                       else (oid, END_OF_MIB_VIEW))
        for oid in oids[non_repeaters:]:
            column = next(c for g in ifmib.COLUMN_GROUPS for c in g
                          if oid.startswith(c.encoded))
            if oid == column.encoded:
                value = b"eth0" if column.kind == "text" else 7
                out.append((encode_oid(column.oid + ".1"), value))
            else:
                out.append((encode_oid("1.3.6.1.2.1.99"), 0))
        return 0, 0, out


class ListSink:
    def __init__(self) -> None:
        self.polls, self.statuses = [], []

    def ifstats(self, poll):
        self.polls.append(poll)

    def status(self, status):
        self.statuses.append(status)


def make_poller(session, sink, after=2):
    device = Device("acme", "r1", "router", "192.0.2.1", community="c", interval_if_s=10)
    stats = dict.fromkeys(("polls_ok", "polls_failed", "requests", "oids", "status_changes",
                           "stopped_columns"), 0)
    return DevicePoller(device, session, sink, Reachability(after), stats, 0.1,
                        asyncio.Semaphore(10), random.Random(1), clock=lambda: 1700000000.0)


def test_polls_and_reachability_changes():
    async def scenario():
        session, sink = FakeSession(), ListSink()
        poller = make_poller(session, sink)
        poll = await poller.poll_and_report()
        assert poll.sys_uptime_cs == 123456 and poll.at == 1700000000.0
        (row,) = poll.interfaces
        assert (row.if_index, row.name, row.in_octets, row.oper_status) == (1, "eth0", 7, 7)
        assert [s.reason for s in sink.statuses] == ["responding"]
        session.fail = "timeout"
        requests = session.requests
        for _ in range(4):
            assert await poller.poll_and_report() is None
        # a failing device is probed with one request per poll, not the whole walk
        assert session.requests - requests == 4 + 1  # the first failure still ran both
        assert [(s.reachable, s.reason, s.consecutive_failures) for s in sink.statuses] == [
            (True, "responding", 0), (False, "timeout", 2)]
        session.fail = None
        assert await poller.poll_and_report() is not None
        assert [(s.reachable, s.reason) for s in sink.statuses][-1] == (True, "recovered")
        assert len(sink.polls) == 2 and poller.stats["polls_failed"] == 4
        assert all(s.tenant_id == "acme" and s.device_id == "r1" for s in sink.statuses)

    asyncio.run(scenario())


def test_an_unexpected_error_fails_the_poll_not_the_poller():
    class Broken(FakeSession):
        async def bulk(self, oids, non_repeaters, max_repetitions):
            raise RuntimeError("a bug")

    async def scenario():
        sink = ListSink()
        poller = make_poller(Broken(), sink)
        assert await poller.poll_and_report() is None
        assert await poller.poll_and_report() is None
        assert [(s.reachable, s.reason) for s in sink.statuses] == [(False, "internal error")]

    asyncio.run(scenario())
