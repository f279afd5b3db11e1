"""Polling OLTs: one schedule per OLT, one ``OnuOpticalPoll`` per successful poll.

- Each OLT is polled every ``interval_optical_s`` (its ``devices`` row), each interval
  varied by ``snmp_poll_jitter``; the first poll of an OLT falls at a random point of its
  first interval, so a thousand OLTs spread over the interval instead of arriving
  together. A poll that overruns its slot skips the missed slots.
- A failed poll is retried after ``min(interval, 60 s)``, never sooner. After
  ``device_unreachable_after`` consecutive timeouts or authentication failures the OLT
  is announced unreachable (``DeviceStatus``), and reachable again on the next success.
- At most ``MAX_CONCURRENT_POLLS`` OLTs are polled at once (bursts after an outage).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from collectors.onu.profile import DecodeStats, Profile, decode
from collectors.onu.snmp import SnmpClient, SnmpError
from collectors.radius.metrics import render_family
from collectors.snmp.devices import Device
from ispstream.contracts import DeviceStatus, OnuOpticalPoll

log = logging.getLogger(__name__)

FAILED_POLL_RETRY_S = 60.0
MAX_CONCURRENT_POLLS = 128
REACHABILITY_KINDS = ("timeout", "auth")

# publish(topic_name, key, value_bytes)
Publish = Callable[[str, str, bytes], None]


class Reachability:
    """Consecutive-failure counting for one device; returns the status changes."""

    def __init__(self, threshold: int) -> None:
        self.threshold = max(1, threshold)
        self.failures = 0
        self.reachable = True

    def failure(self, reason: str) -> tuple[bool, str, int] | None:
        self.failures += 1
        if self.reachable and self.failures >= self.threshold:
            self.reachable = False
            return False, reason, self.failures
        return None

    def success(self) -> tuple[bool, str, int] | None:
        self.failures = 0
        if not self.reachable:
            self.reachable = True
            return True, "recovered", 0
        return None


@dataclass
class Metrics:
    """Counters of the poller, read by the metrics thread (plain dicts)."""

    polls: dict = field(default_factory=dict)          # (profile, result) -> n
    onus: dict = field(default_factory=dict)           # profile -> n
    skipped: dict = field(default_factory=lambda: dict.fromkeys(
        ("sentinel", "implausible", "unparsed", "offline"), 0))
    rows_skipped: dict = field(default_factory=lambda: {"skip_rule": 0, "bad_index": 0})
    errors: dict = field(default_factory=dict)         # kind -> n
    published: int = 0
    publish_failures: int = 0
    status_changes: int = 0
    poll_seconds_sum: float = 0.0
    poll_seconds_count: int = 0
    olts: int = 0
    unreachable: int = 0
    snmp_requests: int = 0

    def count(self, table: dict, key, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def add_decode(self, profile: str, stats: DecodeStats) -> None:
        self.count(self.onus, profile, stats.onus)
        for reason in ("sentinel", "implausible", "unparsed", "offline"):
            self.skipped[reason] += getattr(stats, reason)
        self.rows_skipped["skip_rule"] += stats.skipped_rows
        self.rows_skipped["bad_index"] += stats.bad_index

    def render(self, extra: dict[str, int] | None = None) -> str:
        polls = dict(self.polls)
        out = [
            render_family("ispstream_onu_olts", "gauge", "OLTs configured for optics polls",
                          [({}, self.olts)]),
            render_family("ispstream_onu_olts_unreachable", "gauge",
                          "OLTs currently announced unreachable", [({}, self.unreachable)]),
            render_family("ispstream_onu_polls_total", "counter", "OLT optics polls",
                          [({"profile": p, "result": r}, n) for (p, r), n in
                           sorted(polls.items())]),
            render_family("ispstream_onu_onus_total", "counter", "ONU readings published",
                          [({"profile": p}, n) for p, n in sorted(dict(self.onus).items())]),
            render_family("ispstream_onu_readings_skipped_total", "counter",
                          "values not reported as readings (sentinel = the OLT's 'no "
                          "reading' value, implausible = outside the valid range, "
                          "unparsed, offline = measurements of an offline ONU)",
                          [({"reason": r}, n) for r, n in dict(self.skipped).items()]),
            render_family("ispstream_onu_rows_skipped_total", "counter",
                          "table rows not reported as ONUs",
                          [({"reason": r}, n) for r, n in dict(self.rows_skipped).items()]),
            render_family("ispstream_onu_errors_total", "counter",
                          "failed polls and other errors by kind",
                          [({"kind": k}, n) for k, n in sorted(dict(self.errors).items())]),
            render_family("ispstream_onu_messages_published_total", "counter",
                          "messages handed to Kafka", [({}, self.published)]),
            render_family("ispstream_onu_publish_failures_total", "counter",
                          "messages Kafka did not take", [({}, self.publish_failures)]),
            render_family("ispstream_onu_device_status_changes_total", "counter",
                          "DeviceStatus messages published", [({}, self.status_changes)]),
            "# HELP ispstream_onu_poll_seconds wall time of successful polls\n"
            "# TYPE ispstream_onu_poll_seconds summary\n"
            f"ispstream_onu_poll_seconds_sum {self.poll_seconds_sum:g}\n"
            f"ispstream_onu_poll_seconds_count {self.poll_seconds_count}\n",
            render_family("ispstream_onu_snmp_requests_total", "counter",
                          "SNMP requests sent", [({}, self.snmp_requests)]),
            render_family("ispstream_onu_process_cpu_seconds_total", "counter",
                          "CPU time of this process", [({}, round(time.process_time(), 3))]),
        ]
        for name, value in (extra or {}).items():
            out.append(render_family(f"ispstream_onu_snmp_{name}_total", "counter",
                                     f"SNMP {name.replace('_', ' ')}", [({}, value)]))
        return "".join(out)


class OltPoller:
    """Polls one OLT on its schedule until cancelled."""

    def __init__(self, olt: Device, profile: Profile, client: SnmpClient, publish: Publish,
                 metrics: Metrics, topics: tuple[str, str], jitter: float,
                 unreachable_after: int, slots: asyncio.Semaphore) -> None:
        self.client = client
        self.publish = publish
        self.metrics = metrics
        self.optical_topic, self.status_topic = topics
        self.jitter = jitter
        self.slots = slots
        self.reachability = Reachability(unreachable_after)
        self.empty_warned = False
        self.configure(olt, profile)

    def configure(self, olt: Device, profile: Profile) -> None:
        """Apply a (changed) row; the next poll uses it (ValueError: unusable row)."""
        session = self.client.session(olt)
        if getattr(self, "profile", None) is not profile:
            self.pon_memory: dict[str, str] = {}    # for profiles with remember_pon
        self.olt = olt
        self.profile = profile
        self.columns = profile.columns()
        self.session = session

    def _vary(self, seconds: float) -> float:
        return seconds * (1.0 + random.uniform(-self.jitter, self.jitter))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + random.uniform(0, self.olt.interval_optical_s)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            async with self.slots:
                try:
                    ok = await self.poll_once()
                except Exception:  # noqa: BLE001 - a bug must not end this OLT's schedule
                    log.exception("%s: optics poll crashed", self.olt.key)
                    self.metrics.count(self.metrics.errors, "internal")
                    ok = False
            interval = self.olt.interval_optical_s
            now = loop.time()
            if ok:
                due += self._vary(interval)
                if due < now:   # overran: skip the missed slots
                    due = now + interval * random.uniform(0, max(self.jitter, 0.05))
            else:
                due = now + self._vary(min(interval, FAILED_POLL_RETRY_S))

    async def poll_once(self) -> bool:
        """One poll: walk, decode, publish. False when the OLT did not answer properly."""
        olt, profile, session = self.olt, self.profile, self.session
        started = time.monotonic()
        before = session.requests
        try:
            walks = await session.walk_columns(self.columns)
        except SnmpError as exc:
            self.metrics.snmp_requests += session.requests - before
            self._failed(exc.kind, str(exc))
            return False
        except (OSError, ValueError) as exc:
            self.metrics.snmp_requests += session.requests - before
            self._failed("protocol", f"{type(exc).__name__}: {exc}")
            return False
        self.metrics.snmp_requests += session.requests - before
        at = time.time()
        stats = DecodeStats()
        try:
            onus = decode(profile, walks, stats, self.pon_memory)
            message = OnuOpticalPoll(tenant_id=olt.tenant_id, olt_id=olt.id,
                                     profile=profile.name, at=at, onus=onus)
        except Exception:  # noqa: BLE001 - a decoding bug must not stop the schedule
            log.exception("%s: decoding with profile %s failed", olt.key, profile.name)
            self.metrics.count(self.metrics.errors, "decode")
            self.metrics.count(self.metrics.polls, (profile.name, "failed"))
            self._reachable()
            return True
        if not onus and not self.empty_warned:
            self.empty_warned = True
            log.warning("%s: no ONU rows with profile %s (is it the right profile?)",
                        olt.key, profile.name)
        if stats.bad_index:
            log.debug("%s: %d OID suffixes did not fit the profile's index", olt.key,
                      stats.bad_index)
        self.publish(self.optical_topic, olt.key,
                     message.model_dump_json(exclude_none=True).encode())
        self.metrics.add_decode(profile.name, stats)
        self.metrics.count(self.metrics.polls, (profile.name, "ok"))
        self.metrics.poll_seconds_sum += time.monotonic() - started
        self.metrics.poll_seconds_count += 1
        self._reachable()
        return True

    def _reachable(self) -> None:
        change = self.reachability.success()
        if change:
            self._announce(*change)

    def _failed(self, kind: str, message: str) -> None:
        olt = self.olt
        self.metrics.count(self.metrics.errors, kind)
        self.metrics.count(self.metrics.polls, (self.profile.name, "failed"))
        level = logging.WARNING if self.reachability.failures == 0 else logging.DEBUG
        log.log(level, "%s: optics poll failed (%s): %s", olt.key, kind, message)
        if kind in REACHABILITY_KINDS:
            change = self.reachability.failure(kind)
            if change:
                self._announce(*change)
        else:   # it answered, just not well
            self._reachable()

    def _announce(self, reachable: bool, reason: str, failures: int) -> None:
        olt = self.olt
        status = DeviceStatus(tenant_id=olt.tenant_id, device_id=olt.id, at=time.time(),
                              reachable=reachable, reason=f"onu optics poll: {reason}",
                              consecutive_failures=failures)
        self.metrics.unreachable += -1 if reachable else 1
        self.metrics.status_changes += 1
        (log.info if reachable else log.warning)(
            "%s: %s (%s)", olt.key, "reachable again" if reachable else "unreachable",
            status.reason)
        self.publish(self.status_topic, olt.key, status.model_dump_json().encode())
