"""Poller CPU per OID against snmpsim serving the device recordings: 102 devices (the
recordings in turn, over three addresses), each polled through the real poller (GETBULK
walks, row assembly, IfStatsPoll JSON). The poller's own CPU (this process; snmpsim runs in its
own) must stay at or above 15,000 OIDs per CPU-second.

Run ``pytest tests/integration/test_snmp_perf.py -q -s`` to see the figures."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from collectors.snmp.client import Session, V2cTransport
from collectors.snmp.devices import Device
from collectors.snmp.poller import POLLER_STATS, DevicePoller, Reachability
from tests.integration.snmp_peers import snmpsim  # noqa: F401

pytestmark = pytest.mark.integration

DEVICES = 102
ROUNDS = 1
REQUIRED_OIDS_PER_CPU_S = 15_000


class JsonSink:
    """Serializes like the Kafka sink does; keeps only sizes."""

    def __init__(self) -> None:
        self.bytes = 0
        self.polls = 0

    def ifstats(self, poll) -> None:
        self.bytes += len(poll.model_dump_json().encode())
        self.polls += 1

    def status(self, status) -> None:
        status.model_dump_json()


def test_oids_per_cpu_second(snmpsim):
    async def scenario():
        v2c = V2cTransport()
        sink = JsonSink()
        stats = dict.fromkeys(POLLER_STATS, 0)
        limit = asyncio.Semaphore(256)
        pollers = []
        for i in range(DEVICES):
            community = snmpsim.communities[i % len(snmpsim.communities)]
            address = snmpsim.addresses[i % len(snmpsim.addresses)]
            device = Device("bench", f"d{i}", "router", address, snmpsim.port,
                            community=community, max_inflight=2, timeout_s=10, retries=3)
            pollers.append(DevicePoller(device, Session(device, v2c=v2c), sink,
                                        Reachability(3), stats, 0.1, limit,
                                        random.Random(i)))
        try:
            await asyncio.gather(*(p.poll_and_report() for p in pollers))  # warm up
            assert stats["polls_failed"] == 0
            oids0, requests0 = stats["oids"], stats["requests"]
            cpu0, wall0 = time.process_time(), time.monotonic()
            for _ in range(ROUNDS):
                await asyncio.gather(*(p.poll_and_report() for p in pollers))
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
        finally:
            v2c.close()
        assert stats["polls_failed"] == 0 and sink.polls == DEVICES * (ROUNDS + 1)
        oids = stats["oids"] - oids0
        rate = oids / cpu
        print(f"\n{DEVICES} devices x {ROUNDS} rounds: {oids} OIDs in "
              f"{stats['requests'] - requests0} GETBULKs, poller CPU {cpu:.2f} s, wall "
              f"{wall:.1f} s (snmpsim-bound): {rate:,.0f} OIDs per CPU-second; "
              f"{sink.bytes / sink.polls:,.0f} bytes of JSON per poll")
        assert rate >= REQUIRED_OIDS_PER_CPU_S

    asyncio.run(scenario())
