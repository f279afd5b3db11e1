"""The pipelined database writer (pipelines.sinks._PipelinedPartition) with a real
PostgreSQL connection: the next batch is prepared while the previous one is written,
batches reach the database in order, the epoch barrier waits for every write, and a
failure in either stage fails the flow at its next call."""

from __future__ import annotations

import threading

import pytest

from pipelines.sinks import _PipelinedPartition

WAIT = 10


class Recorder:
    """prepare/write functions that record what they saw; writes block while ``gate``
    is closed."""

    def __init__(self) -> None:
        self.prepared: list[list] = []
        self.written: list[tuple] = []
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.fail_prepare = self.fail_write = False

    def prepare(self, items: list) -> tuple:
        if self.fail_prepare:
            raise ValueError("cannot format")
        self.prepared.append(list(items))
        return tuple(items)

    def write(self, conn, batch: tuple) -> None:
        if self.fail_write:
            raise ValueError("cannot write")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # a live connection
        self.writing.set()
        assert self.gate.wait(WAIT)
        self.written.append(batch)


@pytest.fixture
def writer(pg_dsn):
    rec = Recorder()
    part = _PipelinedPartition(pg_dsn, max_queued=1000, max_merge=100, write=rec.write,
                               name="test", lists=True, prepare=rec.prepare)
    yield part, rec
    rec.gate.set()
    part.close()


def wait_until(cond) -> None:
    done = threading.Event()
    for _ in range(WAIT * 100):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_the_next_batch_is_prepared_while_the_previous_one_is_written(writer):
    part, rec = writer
    rec.gate.clear()
    part.write_batch([[1, 2, 3]])
    assert rec.writing.wait(WAIT)  # batch 1 is in the database's hands
    part.write_batch([[4, 5]])
    wait_until(lambda: len(rec.prepared) == 2)  # prepared although batch 1 is unwritten
    part.write_batch([[6], [7]])  # queued: taken only once batch 2 went to the writer
    assert rec.written == []
    rec.gate.set()
    part.snapshot()  # the epoch barrier: everything queued is committed
    assert rec.written == [(1, 2, 3), (4, 5), (6, 7)]
    assert rec.prepared == [[1, 2, 3], [4, 5], [6, 7]]


def test_batches_are_merged_up_to_max_merge_and_stay_in_order(writer):
    part, rec = writer
    rec.gate.clear()
    part.write_batch([[0]])
    assert rec.writing.wait(WAIT)
    for i in range(1, 251):
        part.write_batch([[i]])
    rec.gate.set()
    part.snapshot()
    flat = [x for batch in rec.written for x in batch]
    assert flat == list(range(251))
    assert max(len(b) for b in rec.written) == 100


@pytest.mark.parametrize("stage", ["prepare", "write"])
def test_a_failed_stage_fails_the_flow_at_its_next_call(writer, stage):
    part, rec = writer
    setattr(rec, f"fail_{stage}", True)
    part.write_batch([[1]])
    with pytest.raises(RuntimeError, match="writing test to the database failed"):
        part.snapshot()
    with pytest.raises(RuntimeError):
        part.write_batch([[2]])
    assert rec.written == []
