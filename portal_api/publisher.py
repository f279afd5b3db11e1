"""Publishing events to Kafka from the API, waiting for the broker's confirmation.

One producer per app (created by ``create_app``, closed when the app shuts down), shared
by the request threads; a background thread serves its delivery callbacks. ``publish``
returns only once the broker acknowledged the record, and raises ``PublishError`` when
it did not within the delivery timeout, so a caller can undo what it recorded. Without
Kafka configured the app gets a plain ``Publisher``, whose every publish fails.
"""

from __future__ import annotations

import logging
import threading

import confluent_kafka

from ispstream.kafka import producer_config

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The record was not confirmed by Kafka (503)."""


class Publisher:
    """The app's publisher when Kafka is not configured: every publish fails (503).
    ``KafkaPublisher`` is the real one."""

    def publish(self, topic: str, key: str, value: bytes) -> None:
        """Publish ``value`` under ``key`` on ``topic`` once confirmed, or raise
        ``PublishError``."""
        raise PublishError("Kafka is not configured (ISPSTREAM_KAFKA_BOOTSTRAP); "
                           "nothing was recorded")

    def close(self, timeout: float = 5.0) -> None:
        pass


class KafkaPublisher(Publisher):
    """A durable producer (idempotent, acks=all) with confirmed, blocking publishes."""

    def __init__(self, bootstrap: str, extra: dict[str, str] | None = None, *,
                 delivery_timeout_ms: int = 3000) -> None:
        self._timeout_s = delivery_timeout_ms / 1000
        self._producer = confluent_kafka.Producer(producer_config(
            bootstrap, extra, **{"client.id": "ispstream-api",
                                 "message.timeout.ms": delivery_timeout_ms,
                                 "linger.ms": 0}))
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, args=(self._producer,),
                                        name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self, producer: confluent_kafka.Producer) -> None:
        while not self._stop.is_set():
            producer.poll(0.05)

    def publish(self, topic: str, key: str, value: bytes) -> None:
        """Produce one record and wait until Kafka confirmed it; ``PublishError`` if not."""
        done = threading.Event()
        outcome: list[confluent_kafka.KafkaError | None] = []

        def delivered(err: confluent_kafka.KafkaError | None, _msg) -> None:
            outcome.append(err)
            done.set()

        producer = self._producer
        if producer is None:
            raise PublishError("the API is shutting down; nothing was recorded")
        try:
            producer.produce(topic, value=value, key=key.encode(), on_delivery=delivered)
        except (BufferError, confluent_kafka.KafkaException) as exc:
            log.warning("cannot produce to %s: %s", topic, exc)
            raise PublishError("Kafka is unavailable; nothing was recorded") from None
        # The producer gives up after message.timeout.ms and reports it; the margin
        # covers the callback being served late.
        if not done.wait(self._timeout_s + 5.0):
            log.warning("no delivery report from Kafka for %s", topic)
            raise PublishError("Kafka did not confirm the record; nothing was recorded")
        if outcome[0] is not None:
            log.warning("Kafka did not accept a record on %s: %s", topic, outcome[0])
            raise PublishError("Kafka did not confirm the record; nothing was recorded")

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is pending (up to ``timeout`` seconds), then stop."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._stop.set()
        self._poller.join()
        remaining = producer.flush(timeout)
        if remaining:
            log.warning("%d record(s) not delivered at shutdown", remaining)
