"""Kafka input and output for every dataflow: lean on the hot path, strict on delivery.

``KafkaInput`` reads each Kafka partition of its topics as one Bytewax source partition
(resuming from the offset the recovery store recorded), all of a worker's partitions
through one consumer, and emits librdkafka's message objects as they are: a step reads
``msg.value()`` and, for a dead letter, the topic, partition, offset and key. Consumer errors are emitted too (``msg.error()`` is set) so
the flow can dead-letter them; the end of a partition ends it when not tailing.

``KafkaOutput`` produces ``(key, item)`` streams with ``encode(item) -> (key, value)``
and makes the epoch wait for delivery: ``snapshot``, which Bytewax calls before it
records the epoch's state and input offsets, flushes the producer and fails the flow if
a message could not be delivered, so a restart produces it again (at least once, never
silently lost).

Bytewax's own Kafka connectors wrap every message in a frozen dataclass on the way in
and out and flush the producer after every batch; at tens of thousands of events per
second that was a fifth of the usage flow's time. Partition names are the same as
theirs (``"<partition>-<topic>"``, resume state = next offset), so a recovery store
written by either resumes with the other.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Callable, Generic, Iterable, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, \
    TopicPartition
from confluent_kafka.admin import AdminClient

from ispstream.kafka import client_config, producer_config

log = logging.getLogger(__name__)
X = TypeVar("X")

#: Messages taken from librdkafka's queue per call.
BATCH = 1000
#: How long a worker's consumer may wait for messages when its partitions have none
#: buffered (seconds), at most once per this period: bounds the CPU an idle flow spends
#: polling and the delay quiet partitions add to busy ones.
POLL_TIMEOUT = 0.001
#: How long the broker may hold a fetch that has nothing to return (milliseconds).
FETCH_WAIT_MS = 20
#: How long an epoch may wait for the broker to confirm its messages.
FLUSH_TIMEOUT_S = 30.0
#: How long closing an output waits (it may be closed while the flow fails).
CLOSE_FLUSH_TIMEOUT_S = 5.0


def list_partitions(brokers: str, topics: Iterable[str], config: dict | None = None
                    ) -> list[str]:
    """Every partition of ``topics`` as ``"<partition>-<topic>"`` (an error if a topic is
    missing: flows never create topics)."""
    admin = AdminClient(client_config(brokers, config))
    parts = []
    for topic in topics:
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"cannot read Kafka topic {topic!r}: {meta.error.str()}")
        parts.extend(f"{i}-{topic}" for i in sorted(meta.partitions))
    return parts


class _SharedConsumer:
    """One librdkafka consumer for every partition of one input that one worker reads.

    A consumer per partition costs a fetch loop and threads per partition, and each
    idle one made Bytewax wait a poll timeout in turn: with 32 partitions of three
    topics, one round over the enforce flow's inputs took ~100 ms. Here the partitions
    take their messages from per-partition buffers that one consumer fills; only a
    fill may wait, and at most once per ``POLL_TIMEOUT``.
    """

    def __init__(self, config: dict, batch: int, release: Callable[[], None]) -> None:
        self._consumer = Consumer(config)
        self._batch = batch
        self._buffers: dict[tuple[str, int], list[Message]] = {}
        self._next_wait = 0.0  # monotonic time before which fills do not wait
        self._release = release

    def add(self, topic: str, partition: int, offset: int) -> None:
        self._buffers[(topic, partition)] = []
        self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def take(self, key: tuple[str, int]) -> list[Message]:
        """The messages of one partition received so far (in order), polling when there
        are none buffered."""
        buf = self._buffers[key]
        if not buf:
            now = time.monotonic()
            wait = POLL_TIMEOUT if now >= self._next_wait else 0
            msgs = self._consumer.consume(self._batch, wait)
            if wait:
                self._next_wait = now + POLL_TIMEOUT
            buffers = self._buffers
            for m in msgs:
                # errors without a partition (broker down, ...) go to the asking one
                buffers.get((m.topic(), m.partition()), buf).append(m)
        if not buf:
            return buf
        self._buffers[key] = []
        return buf

    def remove(self, key: tuple[str, int]) -> None:
        del self._buffers[key]
        if not self._buffers:
            self._consumer.close()
            self._release()


class _InputPartition(StatefulSourcePartition[Message, int]):
    def __init__(self, shared: _SharedConsumer, topic: str, partition: int,
                 offset: int) -> None:
        self._offset = offset
        self._shared = shared
        self._key = (topic, partition)
        shared.add(topic, partition, offset)
        self._eof = False

    def next_batch(self) -> list[Message]:
        if self._eof:
            raise StopIteration()
        msgs = self._shared.take(self._key)
        if not msgs:
            return msgs
        if all(m.error() is None for m in msgs):
            self._offset = msgs[-1].offset() + 1
            return msgs
        return self._with_errors(msgs)

    def _with_errors(self, msgs: list[Message]) -> list[Message]:
        out = []
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
                self._offset = m.offset() + 1
            elif err.code() == KafkaError._PARTITION_EOF:
                self._eof = True  # emit what came before it; stop at the next call
                break
            else:
                out.append(m)  # the flow turns it into a dead letter with the reason
        return out

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._shared.remove(self._key)


class KafkaInput(FixedPartitionedSource[Message, int]):
    """Kafka topics as a flow input: one source partition per Kafka partition, read
    through one consumer per worker.

    ``tail=False`` stops at the end of every partition (benchmarks, replays). Offsets
    are kept by Bytewax's recovery store, never committed to Kafka; without a stored
    offset a partition is read from the beginning.
    """

    def __init__(self, brokers: str, topics: Iterable[str], *, tail: bool = True,
                 config: dict | None = None, batch: int = BATCH) -> None:
        self._brokers = brokers
        self._topics = list(topics)
        self._tail = tail
        self._config = dict(config or {})
        self._batch = batch
        # each worker builds, reads and closes its partitions on its own thread: one
        # consumer per thread
        self._worker = threading.local()

    def list_parts(self) -> list[str]:
        return list_partitions(self._brokers, self._topics, self._config)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _InputPartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise RuntimeError(f"the recovery store has partition {for_part!r} of a topic "
                               f"this flow does not read ({', '.join(self._topics)})")
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _InputPartition(self._consumer(), topic, int(idx), offset)

    def _consumer(self) -> _SharedConsumer:
        worker = self._worker
        shared = getattr(worker, "consumer", None)
        if shared is None:
            shared = worker.consumer = _SharedConsumer(self._consumer_config(), self._batch,
                                                       partial(delattr, worker, "consumer"))
        return shared

    def _consumer_config(self) -> dict:
        # A fetch with nothing to return waits at most 20 ms: Kafka answers as soon as
        # data arrives, but a broker that holds every fetch until this bound (the
        # embedded one does) adds it to every hop (librdkafka's default is 500 ms). With
        # one consumer per worker, the idle fetches cost ~50 requests/s. The operator's
        # settings win.
        fetch = {"fetch.wait.max.ms": FETCH_WAIT_MS, **self._config}
        return client_config(self._brokers, fetch, **{
            "group.id": "ispstream-unused",  # offsets live in the recovery store
            "enable.auto.commit": False,
            # a stored offset that retention already deleted: read what is left, not
            # skip to the end
            "auto.offset.reset": "earliest",
            "enable.partition.eof": not self._tail,
        })


class _OutputPartition(StatefulSinkPartition[X, None], Generic[X]):
    def __init__(self, config: dict, topic: str,
                 encode: Callable[[X], tuple[bytes | None, bytes]], lists: bool) -> None:
        # Delivery failures, reported by librdkafka inside poll()/flush() on this thread.
        self._errors: list[str] = []
        self._producer = Producer({**config, "delivery.report.only.error": True,
                                   "on_delivery": self._failed})
        self._topic = topic
        self._encode = encode
        self._lists = lists

    def _failed(self, err, msg) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def write_batch(self, values: list[X]) -> None:
        produce, topic, encode = self._producer.produce, self._topic, self._encode
        if self._lists:
            values = [v for vs in values for v in vs]
        for v in values:
            key, value = encode(v)
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    # the local queue is full: serve deliveries until there is room
                    # (messages that cannot be delivered time out and free it too)
                    self._producer.poll(0.1)
        self._producer.poll(0)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._errors:
            raise RuntimeError(f"Kafka did not take {len(self._errors)} message(s), "
                               f"e.g. {self._errors[0]}")

    def snapshot(self) -> None:
        left = self._producer.flush(FLUSH_TIMEOUT_S)
        if left:
            raise RuntimeError(f"{left} message(s) to {self._topic} not confirmed by Kafka "
                               f"within {FLUSH_TIMEOUT_S:.0f}s")
        self._raise_if_failed()
        return None

    def close(self) -> None:
        # Bytewax also closes partitions while unwinding from a failure: raising here
        # again would abort the process, so this only reports. (At the end of a finite
        # flow, snapshot() ran first and raised on any failure.)
        left = self._producer.flush(CLOSE_FLUSH_TIMEOUT_S)
        if left or self._errors:
            log.error("closing %s output: %d message(s) unconfirmed, %d refused",
                      self._topic, left, len(self._errors))


class KafkaOutput(FixedPartitionedSink[X, None]):
    """A keyed stream to one Kafka topic: ``encode(item)`` gives the message's key and
    value. ``partitions`` producer partitions are spread over the workers (items are
    routed by their stream key). Every epoch waits until Kafka confirmed its messages;
    a message Kafka refused fails the flow, which then resumes from the last epoch.
    With ``lists``, each item is a list of values (a batch), each produced on its own."""

    def __init__(self, brokers: str, topic: str,
                 encode: Callable[[X], tuple[bytes | None, bytes]], *,
                 config: dict | None = None, partitions: int = 1,
                 lists: bool = False) -> None:
        self._brokers = brokers
        self._topic = topic
        self._encode = encode
        self._config = dict(config or {})
        self._partitions = partitions
        self._lists = lists

    def list_parts(self) -> list[str]:
        return [f"{self._topic}-{i}" for i in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: None
                   ) -> _OutputPartition[X]:
        return _OutputPartition(producer_config(self._brokers, self._config), self._topic,
                                self._encode, self._lists)
