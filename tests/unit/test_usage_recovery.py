"""The usage flow refuses, before it starts, a recovery store it cannot resume correctly:
rating state kept per subscriber, or state written with other shard counts."""

from __future__ import annotations

import json
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from pipelines.runtime import recovery_config, stateful_apply, steps_with_state
from pipelines.usage import LAYOUT_FILE, check_recovery_store


def write_store(directory, step: str) -> None:
    """A recovery store of a flow named ``usage`` with state in the stateful step ``step``
    (the layout Bytewax writes)."""
    flow = Dataflow("usage")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(range(6))), lambda x: str(x % 3))
    op.output("out", stateful_apply(step, keyed, list, lambda state, x: [x]), TestingSink([]))
    cli_main(flow, epoch_interval=timedelta(seconds=0),
             recovery_config=recovery_config(directory, 2))


def test_a_store_of_the_per_subscriber_rating_step_is_refused(tmp_path):
    write_store(tmp_path, "rate")
    assert "usage.rate.stateful.stateful_batch" in steps_with_state(tmp_path)
    with pytest.raises(SystemExit, match="holds rating state per subscriber"):
        check_recovery_store(tmp_path, 16, 16)


def test_a_new_store_records_its_shard_counts_and_resumes_with_the_same(tmp_path):
    directory = tmp_path / "not-yet"
    check_recovery_store(directory, 16, 8)
    assert json.loads((directory / LAYOUT_FILE).read_text()) == \
        {"session_shards": 16, "rating_shards": 8}
    write_store(directory, "rating")
    assert "usage.rating.stateful.stateful_batch" in steps_with_state(directory)
    check_recovery_store(directory, 16, 8)


@pytest.mark.parametrize("sessions, rating", [(32, 8), (16, 4)])
def test_a_store_written_with_other_shard_counts_is_refused(tmp_path, sessions, rating):
    check_recovery_store(tmp_path, 16, 8)
    write_store(tmp_path, "rating")
    with pytest.raises(SystemExit, match="configured with"):
        check_recovery_store(tmp_path, sessions, rating)
    # nothing changed: it still resumes with the counts it was written with
    check_recovery_store(tmp_path, 16, 8)


def test_a_store_from_before_the_counts_were_kept_takes_the_current_ones(tmp_path):
    write_store(tmp_path, "rating")
    check_recovery_store(tmp_path, 16, 16)
    with pytest.raises(SystemExit, match="configured with"):
        check_recovery_store(tmp_path, 16, 32)


def test_an_empty_store_may_change_its_counts(tmp_path):
    check_recovery_store(tmp_path, 16, 16)
    check_recovery_store(tmp_path, 4, 4)
    assert json.loads((tmp_path / LAYOUT_FILE).read_text())["rating_shards"] == 4
