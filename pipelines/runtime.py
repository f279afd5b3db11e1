"""What every dataflow process shares: Kafka input settings and running with recovery."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

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
