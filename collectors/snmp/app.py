"""``ispstream collect snmp``: the composition root of the SNMP collector process.

One asyncio loop runs the interface poller (``poller.py``), the trap receiver
(``traps.py``, unless ``--no-traps``), the inventory refresh (every
``ISPSTREAM_INVENTORY_REFRESH_S``) and the Kafka producer's delivery reports; the
Prometheus ``/metrics`` endpoint (``ISPSTREAM_SNMP_METRICS_ADDR``) is served from a
thread. Records:

- ``snmp.ifstats``: one ``IfStatsPoll`` per poll, keyed ``tenant/device``;
- ``device.status``: ``DeviceStatus`` on reachability changes, keyed ``tenant/device``;
- ``snmp.traps``: one ``TrapEvent`` per accepted notification, keyed ``tenant/device``.

Telemetry is best effort: a record Kafka does not take (queue full, delivery timeout) is
counted and dropped, never spooled; the next poll supersedes it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from confluent_kafka import Producer

from collectors.radius.metrics import MetricsServer, render_family
from collectors.snmp.client import privacy_available
from collectors.snmp.devices import Device, load_devices
from collectors.snmp.poller import Poller
from collectors.snmp.traps import TrapMapper, TrapReceiver, open_trap_socket
from ispstream import topics
from ispstream.contracts import DeviceStatus, IfStatsPoll, TrapEvent
from ispstream.kafka import producer_config
from ispstream.settings import Settings, _split_addr

log = logging.getLogger(__name__)

PRODUCER_POLL_S = 0.05


class KafkaSink:
    """Produces the collector's records; counts what Kafka did not take."""

    def __init__(self, producer: Producer, settings: Settings) -> None:
        self.producer = producer
        self.topics = {"ifstats": settings.topic(topics.SNMP_IFSTATS),
                       "status": settings.topic(topics.DEVICE_STATUS),
                       "trap": settings.topic(topics.SNMP_TRAPS)}
        self.counts = {"produced": dict.fromkeys(self.topics, 0), "delivery_failures": 0,
                       "queue_full": 0}
        self._last_error_log = 0.0

    def _produce(self, kind: str, key: str, value: bytes) -> None:
        try:
            self.producer.produce(self.topics[kind], value, key.encode(),
                                  on_delivery=self._delivered)
        except BufferError:
            self.counts["queue_full"] += 1
            return
        self.counts["produced"][kind] += 1

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.counts["delivery_failures"] += 1
            now = time.monotonic()
            if now - self._last_error_log >= 30:
                self._last_error_log = now
                log.warning("Kafka did not take a record (%s); telemetry records are "
                            "dropped, not spooled", err)

    def ifstats(self, poll: IfStatsPoll) -> None:
        self._produce("ifstats", f"{poll.tenant_id}/{poll.device_id}",
                      poll.model_dump_json().encode())

    def status(self, status: DeviceStatus) -> None:
        self._produce("status", f"{status.tenant_id}/{status.device_id}",
                      status.model_dump_json().encode())

    def trap(self, event: TrapEvent) -> None:
        self._produce("trap", f"{event.tenant_id}/{event.device_id}",
                      event.model_dump_json().encode())


def make_producer(settings: Settings) -> Producer:
    kafka_log = logging.getLogger("ispstream.kafka.producer")
    conf = producer_config(settings.require_kafka(), settings.kafka_config, **{
        "client.id": "ispstream-collect-snmp",
        "linger.ms": 20,
        "message.timeout.ms": 30000,
        **settings.kafka_config,
        "logger": kafka_log,
    })
    return Producer(conf)


class Collector:
    """The wired process: poller, optional trap receiver, inventory refresh, metrics."""

    def __init__(self, settings: Settings, sink: KafkaSink, poller: Poller,
                 receiver: TrapReceiver | None) -> None:
        self.settings = settings
        self.sink = sink
        self.poller = poller
        self.receiver = receiver
        self.devices: dict[tuple[str, str], Device] = {}
        self.stopping = asyncio.Event()
        self.refresh_failures = 0

    def apply(self, devices: dict[tuple[str, str], Device]) -> None:
        if devices == self.devices:
            return
        v3 = sum(1 for d in devices.values() if d.version == "3")
        log.info("devices: %d loaded (%d SNMPv3)", len(devices), v3)
        if v3 and not privacy_available():
            log.error("SNMPv3 authPriv needs the 'cryptography' package, which is not "
                      "installed: the %d SNMPv3 device(s) cannot be polled", v3)
        self.devices = devices
        self.poller.update(devices)
        if self.receiver is not None:
            self.receiver.update(devices)

    async def refresh_loop(self) -> None:
        failing = False
        dsn = self.settings.dsn()
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.settings.inventory_refresh_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                devices = await asyncio.to_thread(load_devices, dsn)
            except Exception as exc:  # keep the last good table
                self.refresh_failures += 1
                if not failing:
                    log.warning("refreshing the devices failed, keeping the last ones: %s: "
                                "%s", type(exc).__name__, (str(exc).splitlines() or [""])[0])
                failing = True
                continue
            if failing:
                log.info("device refresh works again")
            failing = False
            self.apply(devices)

    async def producer_loop(self) -> None:
        poll = self.sink.producer.poll
        while not self.stopping.is_set():
            poll(0)
            await asyncio.sleep(PRODUCER_POLL_S)

    def render_metrics(self) -> str:
        stats = self.poller.stats.copy()
        v2c = self.poller.v2c.stats.copy()
        v3 = self.poller.v3.stats.copy() if self.poller.v3 is not None else {}
        produced = self.sink.counts["produced"].copy()
        parts = [
            render_family("ispstream_snmp_devices", "gauge", "Devices being polled.",
                          [({}, len(self.poller.pollers))]),
            render_family("ispstream_snmp_devices_unreachable", "gauge",
                          "Devices announced unreachable (and not recovered).",
                          [({}, self.poller.unreachable)]),
            render_family("ispstream_snmp_polls_total", "counter", "Interface polls.",
                          [({"result": "ok"}, stats["polls_ok"]),
                           ({"result": "failed"}, stats["polls_failed"])]),
            render_family("ispstream_snmp_requests_total", "counter",
                          "GETBULK requests of the polls (without retransmissions).",
                          [({}, stats["requests"])]),
            render_family("ispstream_snmp_oids_total", "counter",
                          "Varbinds received in poll responses.", [({}, stats["oids"])]),
            render_family("ispstream_snmp_status_changes_total", "counter",
                          "Reachability changes announced.",
                          [({}, stats["status_changes"])]),
            render_family("ispstream_snmp_v2c_total", "counter",
                          "SNMPv2c transport events.",
                          [({"event": k}, v) for k, v in v2c.items()]),
            render_family("ispstream_snmp_v3_total", "counter", "SNMPv3 transport events.",
                          [({"event": k}, v) for k, v in v3.items()]),
            render_family("ispstream_snmp_records_total", "counter",
                          "Records handed to Kafka, by kind.",
                          [({"kind": k}, v) for k, v in produced.items()]),
            render_family("ispstream_snmp_kafka_failures_total", "counter",
                          "Records Kafka did not take (dropped).",
                          [({"reason": "delivery"}, self.sink.counts["delivery_failures"]),
                           ({"reason": "queue_full"}, self.sink.counts["queue_full"])]),
            render_family("process_cpu_seconds_total", "counter",
                          "CPU time of the collector process.",
                          [({}, round(time.process_time(), 3))]),
        ]
        if self.receiver is not None:
            traps = [({"result": k}, v) for k, v in self.receiver.counts.copy().items()]
            traps.append(({"result": "bad_community"}, self.receiver.bad_communities()))
            traps += [({"result": k}, v) for k, v in self.receiver.usm_counters().items()]
            parts.append(render_family("ispstream_snmp_traps_total", "counter",
                                       "Notifications received, by outcome.", traps))
            parts.append(render_family(
                "ispstream_snmp_traps_by_kind_total", "counter",
                "Accepted notifications, by kind.",
                [({"kind": k}, v) for k, v in self.receiver.by_kind.copy().items()]))
        return "".join(parts)


async def run(settings: Settings, traps: bool = True) -> int:
    try:
        devices = await asyncio.to_thread(load_devices, settings.dsn())
    except Exception as exc:
        log.error("cannot load the devices from the database: %s: %s", type(exc).__name__,
                  (str(exc).splitlines() or [""])[0])
        return 1
    producer = make_producer(settings)
    sink = KafkaSink(producer, settings)
    poller = Poller(sink, settings.device_unreachable_after, settings.snmp_poll_jitter)
    receiver = None
    if traps:
        try:
            sock = open_trap_socket(_split_addr(settings.snmp_trap_addr, "0.0.0.0"))
        except (OSError, ValueError) as exc:
            log.error("cannot receive traps on udp %s: %s", settings.snmp_trap_addr, exc)
            return 1
        receiver = TrapReceiver(sock, TrapMapper.load(), sink.trap, if_names=poller.if_names)
    collector = Collector(settings, sink, poller, receiver)
    try:
        metrics = MetricsServer(_split_addr(settings.snmp_metrics_addr, "127.0.0.1"),
                                collector.render_metrics)
    except (OSError, ValueError) as exc:
        log.error("cannot serve metrics on %s: %s", settings.snmp_metrics_addr, exc)
        if receiver is not None:
            receiver.close()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, collector.stopping.set)
    collector.apply(devices)
    metrics.start()
    log.info("SNMP collector ready: %d devices, traps %s, metrics on http://%s:%d/metrics",
             len(devices), f"on udp {receiver.address[0]}:{receiver.address[1]}"
             if receiver else "off", *metrics.address)
    background = [loop.create_task(collector.refresh_loop(), name="device refresh"),
                  loop.create_task(collector.producer_loop(), name="kafka delivery")]
    try:
        await collector.stopping.wait()
    finally:
        log.info("stopping")
        collector.stopping.set()
        await asyncio.gather(*background, return_exceptions=True)
        await poller.close()
        if receiver is not None:
            receiver.close()
        metrics.stop()
        left = producer.flush(5)
        if left:
            log.warning("%d record(s) not delivered to Kafka at exit", left)
    log.info("SNMP collector stopped")
    return 0


def main(settings: Settings, traps: bool = True) -> int:
    """Run the SNMP collector until SIGTERM or SIGINT; return the exit code."""
    return asyncio.run(run(settings, traps))
