"""What every dataflow process shares: Kafka input settings, dead letters, and running
with recovery."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

from ispstream.contracts import DeadLetter
from ispstream.settings import Settings

log = logging.getLogger(__name__)


def input_config(settings: Settings) -> dict[str, str]:
    """librdkafka settings for a flow's Kafka input.

    Idle fetches are bounded to 100 ms: a broker that does not answer as soon as data
    arrives (the embedded one holds every fetch for librdkafka's 500 ms default) would
    otherwise add up to half a second per hop. Kafka answers at once either way.
    Operator settings (``ISPSTREAM_KAFKA_CONFIG``) win.
    """
    return {"fetch.wait.max.ms": "100", **settings.kafka_config}


def recovery_config(directory: Path, partitions: int) -> RecoveryConfig:
    """The recovery store in ``directory``, created on first use."""
    if not directory.exists() or not any(directory.glob("part-*.sqlite3")):
        directory.mkdir(parents=True, exist_ok=True)
        init_db_dir(directory, partitions)
    return RecoveryConfig(directory)


def run(flow: Dataflow, settings: Settings, recovery_dir: Path, workers: int) -> int:
    """Run ``flow`` in this process with recovery (it resumes where it stopped)."""
    from bytewax._bytewax import cli_main

    log.info("%s flow: %d worker(s), recovery in %s, snapshot every %.1fs", flow.flow_id,
             workers, recovery_dir, settings.snapshot_interval_s)
    cli_main(flow, workers_per_process=workers,
             epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
             recovery_config=recovery_config(recovery_dir, settings.recovery_partitions))
    return 0


def dead_letter(stage: str, msg: KafkaSourceMessage, reason: str,
                topic: str | None = None) -> DeadLetter:
    """A Kafka record a flow cannot process, with the reason and where it came from."""
    key, value = msg.key, msg.value
    return DeadLetter(
        source_topic=topic if topic is not None else (msg.topic or ""),
        partition=msg.partition,
        offset=msg.offset,
        key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
        value=value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value),
        reason=reason,
        stage=stage,
        at=time.time(),
    )


def consumer_error_letter(stage: str, err: KafkaError) -> DeadLetter:
    """An error of the Kafka source (with the record it concerns) as a dead letter."""
    return dead_letter(stage, err.msg, f"kafka consumer error: {err.err}")


def dead_letter_message(d: DeadLetter) -> KafkaSinkMessage:
    """A dead letter as a ``deadletter`` topic message, keyed like its source record."""
    return KafkaSinkMessage(key=(d.key or "").encode(), value=d.model_dump_json().encode())
