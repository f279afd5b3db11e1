"""What every dataflow process shares: Kafka input and output, dead letters, and running
with recovery."""

from __future__ import annotations

import gc
import logging
import pickle
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka import Message
from pydantic import BaseModel, ValidationError

from ispstream import topics
from ispstream.contracts import DeadLetter
from ispstream.settings import Settings
from pipelines.kafka_io import KafkaInput, KafkaOutput

log = logging.getLogger(__name__)


class _MutableStateLogic(StatefulBatchLogic):
    def __init__(self, new: Callable, apply: Callable, resume) -> None:
        self.apply = apply
        # pickled bytes, or the state itself as the stock operators stored it
        self.state = pickle.loads(resume) if isinstance(resume, bytes) else resume
        if self.state is None:
            self.state = new()

    def on_batch(self, items: list):
        out: list = []
        apply, state = self.apply, self.state
        for item in items:
            out.extend(apply(state, item))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, pickle.HIGHEST_PROTOCOL)


@operator
def _stateful(step_id: str, up: KeyedStream, builder: Callable) -> KeyedStream:
    return op.stateful_batch("stateful_batch", up, builder)


@operator
def stateful_apply(step_id: str, up: KeyedStream, new: Callable[[], object],
                   apply: Callable[[object, object], list]) -> KeyedStream:
    """Per key, a mutable state object (``new()`` for a new key) and ``apply(state,
    item) -> outputs`` for every item, a batch at a time.

    The snapshot is the state pickled once: Bytewax's ``stateful_map`` and
    ``stateful_flat_map`` deep-copy the state and then pickle the copy, which for session
    tables cost more than the state machine itself. The inner steps are named as those of
    ``stateful_flat_map`` (``<step>.stateful.stateful_batch``), so a recovery store it
    wrote resumes here (its snapshots hold the state object itself).
    """
    return _stateful("stateful", up, partial(_MutableStateLogic, new, apply))


def recovery_config(directory: Path, partitions: int) -> RecoveryConfig:
    """The recovery store in ``directory``, created on first use."""
    if not directory.exists() or not any(directory.glob("part-*.sqlite3")):
        directory.mkdir(parents=True, exist_ok=True)
        init_db_dir(directory, partitions)
    return RecoveryConfig(directory)


def steps_with_state(directory: Path) -> set[str]:
    """The step ids (``<flow>.<step>...``) that have state in the recovery store in
    ``directory`` (none when it does not exist yet)."""
    steps: set[str] = set()
    for part in sorted(directory.glob("part-*.sqlite3")):
        with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
            steps.update(r[0] for r in db.execute("SELECT DISTINCT step_id FROM snaps"))
    return steps


#: Allocations between young-generation collections (CPython's default is 700). Batches
#: keep thousands of records alive at once, and a young collection walks all of them:
#: 200,000 took a quarter of the collector time 50,000 did (usage flow, ~1 % of its CPU).
GC_YOUNG_THRESHOLD = 200_000


def tune_gc() -> None:
    """Make the cyclic garbage collector run rarely in a flow process.

    A flow allocates and drops a few short-lived objects per event (tuples, records),
    while its state holds millions of long-lived ones. With CPython's default thresholds
    the collector runs every 700 allocations and its older generations walk that state
    again and again: about a fifth of the usage flow's CPU went there. Reference counting
    still frees everything at once; the collector is only needed for cycles, which the
    hot path does not make. Objects that exist before the flow starts (modules, the
    catalog's first load) are moved out of its sight with ``gc.freeze``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


def run(flow: Dataflow, settings: Settings, recovery_dir: Path, workers: int) -> int:
    """Run ``flow`` in this process with recovery (it resumes where it stopped)."""
    from bytewax._bytewax import cli_main

    tune_gc()
    if workers > 1:
        log.warning("%s flow: %d worker threads share one interpreter lock; on the measured "
                    "machine 2 ran the usage flow at a third of the speed of 1",
                    flow.flow_id, workers)
    log.info("%s flow: %d worker(s), recovery in %s, snapshot every %.1fs", flow.flow_id,
             workers, recovery_dir, settings.snapshot_interval_s)
    cli_main(flow, workers_per_process=workers,
             epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
             recovery_config=recovery_config(recovery_dir, settings.recovery_partitions))
    return 0


def dead_letter(stage: str, msg: Message, reason: str) -> DeadLetter:
    """A Kafka record a flow cannot process, with the reason and where it came from."""
    key, value = msg.key(), msg.value()
    return DeadLetter(
        source_topic=msg.topic() or "",
        partition=msg.partition(),
        offset=msg.offset(),
        key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
        value=value.decode("utf-8", "replace") if value is not None else "",
        reason=reason,
        stage=stage,
        at=time.time(),
    )


def consumer_error_letter(stage: str, msg: Message) -> DeadLetter:
    """An error the Kafka consumer reported (``msg.error()``) as a dead letter."""
    return dead_letter(stage, msg, f"kafka consumer error: {msg.error().str()}")


def parse_event(stage: str, models: dict[str, type[BaseModel]],
                check: Callable[[BaseModel], None], msg: Message) -> BaseModel | DeadLetter:
    """Validate a message of any of a flow's input topics against that topic's contract
    (``models``: topic -> model) and ``check`` (which raises ``ValueError`` for what the
    contract allows but the flow cannot use); consumer errors and bad records become
    dead letters carrying the reason."""
    if msg.error() is not None:
        return consumer_error_letter(stage, msg)
    topic = msg.topic() or ""
    model = models.get(topic)
    value = msg.value()
    try:
        if model is None:
            raise ValueError(f"unexpected topic {topic!r}")
        if value is None:
            raise ValueError("empty message value")
        ev = model.model_validate_json(value)
        check(ev)
        return ev
    except (ValidationError, ValueError) as exc:
        reason = exc.errors(include_url=False) if isinstance(exc, ValidationError) else str(exc)
        what = model.__name__ if model else "message"
        return dead_letter(stage, msg, f"invalid {what}: {reason}")


def dead_letter_kv(d: DeadLetter) -> tuple[bytes, bytes]:
    """A dead letter as a ``deadletter`` topic message, keyed like its source record."""
    return (d.key or "").encode(), d.model_dump_json().encode()


@operator
def kafka_input(step_id: str, flow: Dataflow, settings: Settings, topic_names: list[str],
                tail: bool = True) -> Stream[Message]:
    """The flow's Kafka input over ``topic_names`` (librdkafka messages, errors included).

    The input step is ``<step>.kafka_input`` as in Bytewax's own Kafka operator, so the
    input offsets of a recovery store it wrote carry over."""
    return op.input("kafka_input", flow, KafkaInput(settings.require_kafka(), topic_names,
                                                    tail=tail, config=settings.kafka_config))


def kafka_output(step_id: str, up: KeyedStream, settings: Settings, topic: str,
                 encode: Callable, *, lists: bool = False) -> None:
    """Produce a keyed stream to ``settings.topic(topic)`` with ``encode(item) -> (key,
    value)`` (``lists``: each item is a list of them), confirmed by Kafka before each
    epoch's offsets are recorded."""
    op.output(step_id, up, KafkaOutput(settings.require_kafka(), settings.topic(topic), encode,
                                       config=settings.kafka_config,
                                       partitions=settings.db_writers, lists=lists))


def dead_letter_output(dead: Stream[DeadLetter], settings: Settings) -> None:
    """Send a flow's dead letters to the ``deadletter`` topic."""
    kafka_output("deadletter_out", op.key_on("dead_key", dead, _dead_key), settings,
                 topics.DEADLETTER, dead_letter_kv)


def _dead_key(d: DeadLetter) -> str:
    return d.key or ""
