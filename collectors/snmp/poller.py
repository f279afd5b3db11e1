"""The interface poller: one schedule per device, IF-MIB walks, reachability changes.

Per device:

- **Schedule.** Polls fall on slots ``phase + k * interval`` (the phase is random in
  ``[0, interval)``, so devices spread over the interval), each delayed by a random
  ``[0, jitter * interval)``. A poll that overruns its interval skips the missed slots:
  there is never a burst to catch up.
- **Poll.** Two GETBULK walks (``ifmib.COLUMN_GROUPS``), concurrently while the device
  answers, one after the other while it does not (a dead device costs one request with
  its retries per poll). Every request holds the device's semaphore, so at most
  ``max_inflight`` requests are ever in flight to it. The result is one ``IfStatsPoll``.
- **Reachability.** ``unreachable_after`` failed polls in a row emit one
  ``DeviceStatus(reachable=False, reason=...)``; the next good poll emits
  ``reachable=True`` (``recovered``). A device keeps being polled at its normal
  interval while unreachable. After a start, each device's first known state is
  announced once (``responding``, or unreachable after the failures), so a consumer
  that missed a change while the collector was down converges.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import Callable, Protocol

from collectors.snmp import ifmib
from collectors.snmp.client import Session, V2cTransport, V3Transport
from collectors.snmp.devices import Device
from collectors.snmp.walk import SnmpError, walk
from ispstream.contracts import DeviceStatus, IfStatsPoll

log = logging.getLogger(__name__)

MAX_REPETITIONS = 25  # rows per column per GETBULK (halved on tooBig, per device)
MAX_CONCURRENT_POLLS = 256  # polls of all devices in progress at once, at most

_GROUPS = tuple([c.encoded for c in group] for group in ifmib.COLUMN_GROUPS)


class Sink(Protocol):
    """Where the poller's records go (Kafka in production, a list in tests)."""

    def ifstats(self, poll: IfStatsPoll) -> None: ...

    def status(self, status: DeviceStatus) -> None: ...


class Reachability:
    """A device's reachability as the polls see it; returns a change to announce."""

    def __init__(self, unreachable_after: int) -> None:
        self.unreachable_after = unreachable_after
        self.failures = 0
        self.reachable: bool | None = None  # unknown until the first verdict

    def success(self) -> tuple[bool, str, int] | None:
        failures, self.failures = self.failures, 0
        if self.reachable is True:
            return None
        previous, self.reachable = self.reachable, True
        return True, ("recovered" if previous is False else "responding"), failures

    def failure(self, reason: str) -> tuple[bool, str, int] | None:
        self.failures += 1
        if self.failures >= self.unreachable_after and self.reachable is not False:
            self.reachable = False
            return False, reason, self.failures
        return None


class Schedule:
    """Poll times: slots ``phase + k * interval``, each plus a random delay."""

    def __init__(self, interval: float, jitter: float, now: float,
                 rng: random.Random) -> None:
        self.interval = interval
        self.jitter = jitter
        self.rng = rng
        self.slot = now + rng.uniform(0, interval)
        self.skipped = 0

    def due(self) -> float:
        return self.slot + self.rng.uniform(0, self.jitter) * self.interval

    def advance(self, now: float) -> float:
        """The next poll time after a poll that ended at ``now`` (missed slots skipped)."""
        self.slot += self.interval
        if self.slot < now:
            missed = math.ceil((now - self.slot) / self.interval)
            self.slot += missed * self.interval
            self.skipped += missed
        return self.due()


class DevicePoller:
    """Polls one device on its schedule until cancelled."""

    def __init__(self, device: Device, session: Session, sink: Sink,
                 reachability: Reachability, stats: dict, jitter: float,
                 limit: asyncio.Semaphore, rng: random.Random,
                 clock: Callable[[], float] = time.time) -> None:
        self.device = device
        self.session = session
        self.sink = sink
        self.reachability = reachability
        self.stats = stats
        self.limit = limit
        self.clock = clock
        self.max_repetitions = MAX_REPETITIONS
        self.polls = 0
        self.if_names: dict[int, str] = {}  # as last polled (the trap receiver names PONs)
        loop = asyncio.get_running_loop()
        self.schedule = Schedule(device.interval_if_s, jitter, loop.time(), rng)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = self.schedule.due()
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self.limit:
                await self.poll_and_report()
            due = self.schedule.advance(loop.time())

    async def poll_and_report(self) -> IfStatsPoll | None:
        d = self.device
        self.polls += 1
        try:
            poll = await self.poll()
        except (SnmpError, Exception) as exc:
            self.stats["polls_failed"] += 1
            if isinstance(exc, SnmpError):
                reason = exc.reason
                log.debug("%s: poll failed: %s", d.key, reason)
            else:  # a bug or an agent's oddity: this device's poll fails, nothing else
                reason = "internal error"
                log.exception("%s: poll failed", d.key)
            change = self.reachability.failure(reason)
            if change is not None:
                log.warning("%s (%s:%d) unreachable after %d failed polls: %s", d.key,
                            d.address, d.port, change[2], reason)
            self._announce(change)
            return None
        self.stats["polls_ok"] += 1
        self.if_names = {row.if_index: row.name for row in poll.interfaces if row.name}
        self.sink.ifstats(poll)
        change = self.reachability.success()
        if change is not None and change[1] == "recovered":
            log.info("%s reachable again after %d failed polls", d.key, change[2])
        self._announce(change)
        return poll

    def _announce(self, change: tuple[bool, str, int] | None) -> None:
        if change is None:
            return
        reachable, reason, failures = change
        self.stats["status_changes"] += 1
        self.sink.status(DeviceStatus(tenant_id=self.device.tenant_id,
                                      device_id=self.device.id, at=self.clock(),
                                      reachable=reachable, reason=reason,
                                      consecutive_failures=failures))

    async def poll(self) -> IfStatsPoll:
        """One poll of the device's interfaces (raises ``SnmpError``)."""
        bulk = self.session.bulk
        reps = self.max_repetitions
        if_columns, ifx_columns = _GROUPS
        if self.reachability.failures:
            # not answering lately: one probe first, the rest only if it answers
            results = [await walk(bulk, if_columns, reps, scalars=[ifmib.SYS_UPTIME]),
                       await walk(bulk, ifx_columns, reps)]
        else:
            results = await asyncio.gather(
                walk(bulk, if_columns, reps, scalars=[ifmib.SYS_UPTIME]),
                walk(bulk, ifx_columns, reps), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        at = self.clock()
        merged: dict[int, dict] = {}
        for group, result in zip(ifmib.COLUMN_GROUPS, results):
            ifmib.rows(group, result.columns, merged)
            self.stats["requests"] += result.requests
            self.stats["oids"] += result.varbinds
            self.stats["stopped_columns"] += result.stopped_columns
            self.max_repetitions = min(self.max_repetitions, result.max_repetitions)
        uptime = results[0].scalars[0]
        return IfStatsPoll(tenant_id=self.device.tenant_id, device_id=self.device.id, at=at,
                           sys_uptime_cs=uptime if type(uptime) is int else None,
                           interfaces=ifmib.interfaces(merged))


POLLER_STATS = ("polls_ok", "polls_failed", "requests", "oids", "status_changes",
                "stopped_columns")


class Poller:
    """Runs one ``DevicePoller`` per device and follows inventory changes."""

    def __init__(self, sink: Sink, unreachable_after: int, jitter: float,
                 rng: random.Random | None = None) -> None:
        self.sink = sink
        self.unreachable_after = unreachable_after
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.stats = dict.fromkeys(POLLER_STATS, 0)
        self.v2c = V2cTransport()
        self.v3: V3Transport | None = None
        self.limit = asyncio.Semaphore(MAX_CONCURRENT_POLLS)
        self.pollers: dict[tuple[str, str], DevicePoller] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task] = {}
        self._reachability: dict[tuple[str, str], Reachability] = {}

    def update(self, devices: dict[tuple[str, str], Device]) -> None:
        """Start polling new devices, stop removed ones, restart changed ones (their
        reachability state is kept)."""
        for key in [k for k in self.pollers if k not in devices]:
            self._stop(key)
            self._reachability.pop(key, None)
        for key, device in devices.items():
            current = self.pollers.get(key)
            if current is not None and current.device == device:
                continue
            if current is not None:
                self._stop(key)
            self._start(key, device)

    def _start(self, key: tuple[str, str], device: Device) -> None:
        if device.version == "3" and self.v3 is None:
            self.v3 = V3Transport()
        session = Session(device, v2c=self.v2c, v3=self.v3)
        reach = self._reachability.setdefault(key, Reachability(self.unreachable_after))
        poller = DevicePoller(device, session, self.sink, reach, self.stats, self.jitter,
                              self.limit, self.rng)
        self.pollers[key] = poller
        task = asyncio.get_running_loop().create_task(poller.run(), name=f"poll {device.key}")
        task.add_done_callback(self._crashed)
        self._tasks[key] = task

    def _crashed(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("poller task %s stopped: %r", task.get_name(), task.exception())

    def _stop(self, key: tuple[str, str]) -> None:
        self.pollers.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def if_names(self, tenant_id: str, device_id: str) -> dict[int, str]:
        """A device's interface names by ifIndex, as last polled (empty before)."""
        poller = self.pollers.get((tenant_id, device_id))
        return poller.if_names if poller is not None else {}

    @property
    def unreachable(self) -> int:
        return sum(1 for r in self._reachability.values() if r.reachable is False)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self._stop(key)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.v2c.close()
        if self.v3 is not None:
            self.v3.close()
