"""The poller against real agents, in process: snmpd (the test host's own IF-MIB over v2c
and v3 authPriv) and snmpsim (recordings of real routers and OLTs, every interface
checked against the file), with the per-device in-flight limit measured."""

from __future__ import annotations

import asyncio
import random

import pytest

from collectors.snmp.client import Session, V2cTransport, V3Transport, privacy_available
from collectors.snmp.devices import Device
from collectors.snmp.poller import POLLER_STATS, DevicePoller, Reachability
from collectors.snmp.walk import SnmpError
from tests.integration.snmp_peers import (  # noqa: F401
    recorded_interfaces,
    snmpd,
    snmpsim,
)

pytestmark = pytest.mark.integration


class ListSink:
    def __init__(self) -> None:
        self.polls, self.statuses = [], []

    def ifstats(self, poll):
        self.polls.append(poll)

    def status(self, status):
        self.statuses.append(status)


async def poll_once(device: Device, v2c=None, v3=None):
    sink = ListSink()
    stats = dict.fromkeys(POLLER_STATS, 0)
    session = Session(device, v2c=v2c, v3=v3)
    poller = DevicePoller(device, session, sink, Reachability(2), stats, 0.1,
                          asyncio.Semaphore(10), random.Random())
    poll = await poller.poll()
    return poll, session, stats


def host_device(snmpd, **kw) -> Device:
    kw = {"timeout_s": 3, "retries": 1, **kw}
    return Device("acme", "host", "router", "127.0.0.1", snmpd.port, **kw)


V3_NEEDS = ("SNMPv3 privacy (AES/DES) needs the 'cryptography' package, which pysnmp uses "
            "but does not require: it must be a dependency of the project")


def test_v2c_and_v3_polls_of_the_test_host(snmpd):
    assert privacy_available(), V3_NEEDS

    async def scenario():
        v2c, v3 = V2cTransport(), V3Transport()
        try:
            polls = []
            for device in (
                host_device(snmpd, version="2c", community=snmpd.community),
                host_device(snmpd, version="3", v3_user=snmpd.user,
                            v3_auth_protocol="SHA", v3_auth_key=snmpd.auth_key,
                            v3_priv_protocol="AES", v3_priv_key=snmpd.priv_key),
            ):
                poll, _, stats = await poll_once(device, v2c, v3)
                polls.append(poll)
                assert stats["oids"] >= 10 * len(poll.interfaces)
            for poll in polls:
                assert type(poll.sys_uptime_cs) is int and poll.sys_uptime_cs > 0
                lo = next(i for i in poll.interfaces if i.name == "lo")
                assert lo.oper_status == 1 and lo.admin_status == 1
                for row in poll.interfaces:
                    assert row.name
                    for counter in (row.in_octets, row.out_octets, row.in_ucast_pkts,
                                    row.out_ucast_pkts):
                        assert type(counter) is int and counter >= 0
            # v2c and v3 see the same interfaces
            assert [i.if_index for i in polls[0].interfaces] == \
                [i.if_index for i in polls[1].interfaces]
            # counters only grow between the two polls
            lo_v2c = next(i for i in polls[0].interfaces if i.name == "lo")
            lo_v3 = next(i for i in polls[1].interfaces if i.name == "lo")
            assert lo_v3.in_octets >= lo_v2c.in_octets

            bad_key = host_device(snmpd, version="3", v3_user=snmpd.user,
                                  v3_auth_protocol="SHA", v3_auth_key="not-the-key",
                                  v3_priv_protocol="AES", v3_priv_key=snmpd.priv_key)
            with pytest.raises(SnmpError) as info:
                await poll_once(bad_key, v2c, V3Transport())
            assert info.value.reason == "authentication failure"
            wrong_community = host_device(snmpd, version="2c", community="guess",
                                          timeout_s=0.5, retries=0)
            with pytest.raises(SnmpError) as info:
                await poll_once(wrong_community, v2c, v3)
            assert info.value.reason == "timeout"  # net-snmp ignores a wrong community
        finally:
            v2c.close()
            v3.close()

    asyncio.run(scenario())


def test_recordings_polled_exactly_and_in_flight_limited(snmpsim):
    async def scenario():
        v2c = V2cTransport()
        try:
            assert len(snmpsim.communities) >= 5
            for i, community in enumerate(snmpsim.communities):
                address = snmpsim.addresses[i % len(snmpsim.addresses)]
                expected = recorded_interfaces(snmpsim.data_dir / f"{community}.snmprec")
                for limit in (1, 2):
                    device = Device("acme", community, "router", address, snmpsim.port,
                                    community=community, max_inflight=limit, timeout_s=5,
                                    retries=2)
                    poll, session, stats = await poll_once(device, v2c)
                    assert session.peak_inflight == limit  # never more, and used
                    got = {row.if_index: row for row in poll.interfaces}
                    assert set(got) == set(expected), community
                    for index, want in expected.items():
                        row = got[index]
                        assert row.name == (want.get("name") or want.get("descr"))
                        assert row.alias == (want.get("alias") or None)
                        for f in ("in_octets", "out_octets", "high_speed_mbps",
                                  "oper_status", "admin_status"):
                            assert getattr(row, f) == want.get(f), (community, index, f)
        finally:
            v2c.close()

    asyncio.run(scenario())
