"""The usage flow refuses a recovery store whose rating state it cannot resume."""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource

from pipelines.runtime import recovery_config, stateful_apply, steps_with_state
from pipelines.usage import check_recovery_store


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
        check_recovery_store(tmp_path)


def test_a_store_of_the_sharded_rating_step_and_no_store_at_all_are_fine(tmp_path):
    check_recovery_store(tmp_path / "not-yet")
    write_store(tmp_path, "rating")
    assert "usage.rating.stateful.stateful_batch" in steps_with_state(tmp_path)
    check_recovery_store(tmp_path)
