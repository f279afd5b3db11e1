"""``ispstream collect onu``: per-ONU optics of every OLT, one sample shape on Kafka.

The OLTs are the ``devices`` rows of kind ``olt`` (reloaded every
``ISPSTREAM_INVENTORY_REFRESH_S``); each names its vendor profile
(``collectors/onu/profiles/<vendor_profile>.yaml``), which says which tables to walk and
how their rows become ``OnuReading``s. Every poll of an OLT becomes one
``OnuOpticalPoll`` on ``onu.optical`` keyed ``tenant/olt``; an OLT that stops answering
becomes a ``DeviceStatus`` on ``device.status``. Counters are served as Prometheus text
on ``ISPSTREAM_ONU_METRICS_ADDR``. The poller only translates: thresholds, baselines
and alerts are the fault flow's business.

Public surface: ``main`` (the process), ``load_profiles`` / ``profile_names`` (the valid
``vendor_profile`` values), ``decode`` (profile + walked columns -> readings).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from collectors.onu.profile import ProfileError, decode, load_profiles, profile_names

__all__ = ["main", "load_profiles", "profile_names", "decode", "ProfileError"]

log = logging.getLogger(__name__)


def _bind(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port)


def load_olts(dsn: str) -> dict:
    """Every OLT (``devices`` row of kind ``olt``) of every tenant, by ``tenant/olt``."""
    from collectors.snmp.devices import load_devices

    return {d.key: d for d in load_devices(dsn, kind="olt",
                                           application_name="ispstream-collect-onu").values()}


def _changed(old, new) -> bool:
    """Whether an OLT row changed (its OLT-only fields are left out of ``==``)."""
    return old != new or (old.vendor_profile, old.interval_optical_s) != (
        new.vendor_profile, new.interval_optical_s)


def main(settings) -> int:
    """Run the optics poller until SIGTERM or SIGINT; return the exit code."""
    from confluent_kafka import Producer

    from collectors.onu.poller import Metrics
    from collectors.radius.metrics import MetricsServer
    from ispstream import topics
    from ispstream.kafka import producer_config

    try:
        profiles = load_profiles()
    except ProfileError as exc:
        log.error("invalid ONU vendor profile: %s", exc)
        return 2
    try:
        olts = load_olts(settings.dsn())
    except Exception as exc:  # noqa: BLE001 - reported, and the process exits
        log.error("cannot load the OLTs from the database: %s: %s", type(exc).__name__,
                  (str(exc).splitlines() or [""])[0])
        return 1

    metrics = Metrics()
    kafka_log = logging.getLogger("ispstream.kafka.producer")
    last_error = {"at": 0.0}

    def on_error(err) -> None:
        if time.monotonic() - last_error["at"] >= 30:
            last_error["at"] = time.monotonic()
            kafka_log.warning("Kafka: %s", err)

    producer = Producer(producer_config(
        settings.require_kafka(), settings.kafka_config,
        # one message per OLT poll: ~100-200 bytes per ONU, so allow big OLTs (the
        # topic's max.message.bytes must allow them too, after lz4 compression)
        **{"linger.ms": 50, "message.max.bytes": 16_000_000,
           "client.id": "ispstream-collect-onu", **settings.kafka_config,
           "error_cb": on_error, "logger": kafka_log}))
    runner = _Runner(settings, profiles, metrics, producer)
    try:
        server = MetricsServer(_bind(settings.onu_metrics_addr),
                               lambda: metrics.render(runner.snmp_stats()))
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", settings.onu_metrics_addr, exc)
        return 1
    server.start()
    log.info("ONU optics poller: %d OLT(s), %d profile(s) (%s), topic %s, metrics on "
             "http://%s:%d/metrics", len(olts), len(profiles), ", ".join(sorted(profiles)),
             settings.topic(topics.ONU_OPTICAL), *server.address)
    try:
        asyncio.run(runner.run(olts))
    finally:
        server.stop()
        remaining = producer.flush(10)
        if remaining:
            log.warning("%d message(s) not delivered to Kafka at shutdown", remaining)
    log.info("ONU optics poller stopped")
    return 0


class _Runner:
    """The asyncio side: inventory refresh, one poller task per OLT, Kafka callbacks."""

    def __init__(self, settings, profiles, metrics, producer) -> None:
        from ispstream import topics

        self.settings = settings
        self.profiles = profiles
        self.metrics = metrics
        self.producer = producer
        self.topics = (settings.topic(topics.ONU_OPTICAL), settings.topic(topics.DEVICE_STATUS))
        self.client = None
        self.tasks: dict[str, asyncio.Task] = {}
        self.pollers: dict = {}
        self.rejected: dict[str, tuple] = {}

    def snmp_stats(self) -> dict[str, int]:
        return dict(self.client.stats) if self.client is not None else {}

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.metrics.publish_failures += 1
            log.warning("Kafka did not take a message for %s: %s",
                        (msg.key() or b"").decode(errors="replace"), err)

    def publish(self, topic: str, key: str, value: bytes) -> None:
        try:
            self.producer.produce(topic, value=value, key=key.encode(),
                                  on_delivery=self._delivered)
            self.metrics.published += 1
        except BufferError:
            self.producer.poll(1)
            try:
                self.producer.produce(topic, value=value, key=key.encode(),
                                      on_delivery=self._delivered)
                self.metrics.published += 1
            except (BufferError, Exception) as exc:  # noqa: BLE001 - counted and logged
                self.metrics.publish_failures += 1
                log.warning("cannot hand a message for %s to Kafka: %s", key, exc)
        except Exception as exc:  # noqa: BLE001 - e.g. message too large; counted
            self.metrics.publish_failures += 1
            log.warning("cannot hand a message for %s to Kafka: %s", key, exc)

    def _stop(self, key: str) -> None:
        task = self.tasks.pop(key, None)
        if task is not None:
            task.cancel()
        poller = self.pollers.pop(key, None)
        if poller is not None and not poller.reachability.reachable:
            self.metrics.unreachable -= 1

    def _apply(self, olts: dict) -> None:
        """Start, update or stop pollers to match the OLT rows."""
        from collectors.onu.poller import OltPoller

        for key in list(self.tasks):
            if key not in olts:
                self._stop(key)
                log.info("%s: no longer an OLT in the inventory, not polled", key)
        for key, olt in olts.items():
            profile = self.profiles.get(olt.vendor_profile or "")
            if profile is None:
                if self.rejected.get(key) != (olt.vendor_profile,):
                    self.rejected[key] = (olt.vendor_profile,)
                    self.metrics.count(self.metrics.errors, "config")
                    log.error("%s: vendor_profile %r is not one of %s; not polled", key,
                              olt.vendor_profile, ", ".join(sorted(self.profiles)))
                self._stop(key)
                continue
            poller = self.pollers.get(key)
            try:
                if poller is None:
                    poller = OltPoller(olt, profile, self.client, self.publish, self.metrics,
                                       self.topics, self.settings.snmp_poll_jitter,
                                       self.settings.device_unreachable_after, self.slots)
                    self.pollers[key] = poller
                    self.tasks[key] = asyncio.create_task(poller.run(), name=f"olt {key}")
                    log.info("%s: polling %s:%d every %gs with profile %s", key, olt.address,
                             olt.port, olt.interval_optical_s, profile.name)
                elif _changed(poller.olt, olt) or poller.profile is not profile:
                    poller.configure(olt, profile)
                    log.info("%s: OLT row changed, next poll uses it", key)
                self.rejected.pop(key, None)
            except ValueError as exc:   # e.g. an SNMPv3 protocol we do not speak
                if self.rejected.get(key) != (str(exc),):
                    self.rejected[key] = (str(exc),)
                    self.metrics.count(self.metrics.errors, "config")
                    log.error("%s: %s; not polled", key, exc)
                self._stop(key)
        self.metrics.olts = len(self.tasks)

    async def run(self, olts: dict) -> None:
        from collectors.onu.poller import MAX_CONCURRENT_POLLS
        from collectors.onu.snmp import SnmpClient

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        self.client = SnmpClient()
        self.slots = asyncio.Semaphore(MAX_CONCURRENT_POLLS)
        self._apply(olts)
        refresh = max(1.0, self.settings.inventory_refresh_s)
        next_refresh = loop.time() + refresh
        warned_at = 0.0
        try:
            while not stop.is_set():
                self.producer.poll(0)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.2)
                except asyncio.TimeoutError:
                    pass
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + refresh
                    try:
                        olts = await asyncio.to_thread(load_olts, self.settings.dsn())
                    except Exception as exc:  # noqa: BLE001 - keep the last good table
                        self.metrics.count(self.metrics.errors, "inventory")
                        if time.monotonic() - warned_at > 60:
                            warned_at = time.monotonic()
                            log.warning("cannot reload the OLTs (keeping the last ones): "
                                        "%s: %s", type(exc).__name__,
                                        (str(exc).splitlines() or [""])[0])
                        continue
                    self._apply(olts)
        finally:
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.client.close()
