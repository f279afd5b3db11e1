"""Database sinks: the pipelined partition every flow's database sink shares, and the
usage flow's sink (idempotent, batched upserts in one transaction).

Per batch: session snapshots upsert ``sessions`` (only ever to a higher ``version``);
rated pieces upsert ``usage_rated`` on their stable key; ``usage_hourly`` is adjusted by
exactly what the batch changed (the new rows minus the versions they replace), so a
replayed batch adjusts it by zero. A batch of rows never written before (every batch but
the first few after a restart) takes a cheaper path: plain inserts, added to the rollup
as they are; when any of its rows already exists, that attempt is rolled back to a
savepoint and the batch is upserted. ``write_batch`` returns only after the commit, and
Bytewax completes an epoch (and snapshots its state and input offsets) only after every
sink returned: the write always precedes the commit of offsets.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, NamedTuple

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from ispstream.db import connect
from rating.sessions import SessionSnapshot
from rating.tariff import RatedPiece

log = logging.getLogger(__name__)

_SESSION_COLS = ("tenant_id", "nas_id", "session_id", "username", "state", "close_reason",
                 "started_at", "updated_at", "stopped_at", "upload_bytes", "download_bytes",
                 "resets", "interim_interval", "framed_ip", "version")
_RATED_COLS = ("tenant_id", "record_id", "piece", "ts", "ts_start", "username", "nas_id",
               "session_id", "plan_id", "cycle_start", "upload_bytes", "download_bytes",
               "billable_bytes", "zero_rated_bytes", "over_quota_bytes", "charge",
               "rate_multiplier", "flags")
_TIME_COLS = {"started_at", "updated_at", "stopped_at", "ts", "ts_start"}
_SUMS = ("upload_bytes", "download_bytes", "billable_bytes", "zero_rated_bytes",
         "over_quota_bytes", "charge")

# Staging tables: times arrive as unix seconds (cheap to write) and are converted in SQL.
_STAGING = {
    "_snap": "tenant_id text, nas_id text, session_id text, username text, state text, "
             "close_reason text, started_at bigint, updated_at bigint, stopped_at bigint, "
             "upload_bytes bigint, download_bytes bigint, resets integer, "
             "interim_interval integer, framed_ip text, version bigint",
    "_rated": "tenant_id text, record_id text, piece smallint, ts bigint, ts_start bigint, "
              "username text, nas_id text, session_id text, plan_id text, cycle_start date, "
              "upload_bytes bigint, download_bytes bigint, billable_bytes bigint, "
              "zero_rated_bytes bigint, over_quota_bytes bigint, charge numeric, "
              "rate_multiplier numeric, flags text[]",
}
_BEGIN_STAGED = ";".join(["BEGIN"] + [f"CREATE TEMP TABLE IF NOT EXISTS {table} ({cols}) "
                                      "ON COMMIT DELETE ROWS"
                                      for table, cols in _STAGING.items()])
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(v: str | None) -> str:
    """A value in COPY text format."""
    if v is None:
        return "\\N"
    return v.translate(_ESCAPES) if ("\\" in v or "\t" in v or "\n" in v or "\r" in v) else v


def _opt(v) -> str:
    return "\\N" if v is None else str(v)


def _flags(flags: tuple[str, ...]) -> str:
    # Flags are fixed identifiers (letters and underscores): no array quoting needed.
    return "{" + ",".join(flags) + "}"


def _session_line(s: SessionSnapshot) -> str:
    return "\t".join((
        _text(s.tenant_id), _text(s.nas_id), _text(s.session_id), _text(s.username), s.state,
        _text(s.close_reason), str(s.started_at), str(s.updated_at), _opt(s.stopped_at),
        str(s.upload), str(s.download), str(s.resets), _opt(s.interim_interval),
        _text(s.framed_ip), str(s.version))) + "\n"


def _rated_line(p: RatedPiece) -> str:
    return "\t".join((
        _text(p.tenant_id), p.record_id, str(p.piece), str(p.ts), str(p.ts_start),
        _text(p.username), _text(p.nas_id), _text(p.session_id), _text(p.plan_id),
        p.cycle_start.isoformat(), str(p.upload_bytes), str(p.download_bytes),
        str(p.billable_bytes), str(p.zero_rated_bytes), str(p.over_quota_bytes),
        str(p.charge), str(p.rate_multiplier), _flags(p.flags))) + "\n"


def _select(cols: Iterable[str]) -> str:
    return ", ".join(f"to_timestamp({c})" if c in _TIME_COLS else c for c in cols)


def _update_set(cols: Iterable[str], key: Iterable[str]) -> str:
    key = set(key)
    return ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)


_UPSERT_SESSIONS = f"""
INSERT INTO sessions ({", ".join(_SESSION_COLS)})
SELECT {_select(_SESSION_COLS)} FROM _snap
ON CONFLICT (tenant_id, nas_id, session_id) DO UPDATE
SET {_update_set(_SESSION_COLS, ("tenant_id", "nas_id", "session_id"))}
WHERE sessions.version < excluded.version
"""

_UPSERT_RATED = f"""
INSERT INTO usage_rated ({", ".join(_RATED_COLS)})
SELECT {_select(_RATED_COLS)} FROM _rated
ON CONFLICT (tenant_id, record_id, piece, ts) DO UPDATE
SET {_update_set(_RATED_COLS, ("tenant_id", "record_id", "piece", "ts"))}
"""

# usage_hourly is only ever adjusted by increments: they commute, so concurrent workers
# stay exact too.
_HOUR = "date_bin('1 hour', {}, timestamptz '2000-01-01 00:00:00+00')"
_ADD_TO_HOURLY = f"""
INSERT INTO usage_hourly (tenant_id, username, hour, {", ".join(_SUMS)})
SELECT tenant_id, username, hour, {", ".join(f"sum({c})" for c in _SUMS)}
FROM ({{changes}}) changes GROUP BY tenant_id, username, hour
ON CONFLICT (tenant_id, username, hour) DO UPDATE
SET {", ".join(f"{c} = usage_hourly.{c} + excluded.{c}" for c in _SUMS)}
"""
_NEW_ROWS = f"""
  SELECT tenant_id, username, {_HOUR.format("to_timestamp(ts)")} AS hour, {", ".join(_SUMS)}
  FROM _rated"""
# Runs before _UPSERT_RATED: add the batch's rows and subtract the stored versions they
# are about to replace.
_ROLLUP = _ADD_TO_HOURLY.format(changes=_NEW_ROWS + f"""
  UNION ALL
  SELECT u.tenant_id, u.username, {_HOUR.format("u.ts")},
         {", ".join(f"-u.{c}" for c in _SUMS)}
  FROM usage_rated u
  JOIN _rated r ON u.tenant_id = r.tenant_id AND u.record_id = r.record_id
               AND u.piece = r.piece AND u.ts = to_timestamp(r.ts)""")

# The common case, a batch of rows never written before: a plain insert (no conflict
# arbitration: ~20 % less work for PostgreSQL than ON CONFLICT DO NOTHING; it fails if
# any row exists) and the rows added to the rollup as they are, without looking up
# earlier versions.
_INSERT_NEW_RATED = f"""
INSERT INTO usage_rated ({", ".join(_RATED_COLS)})
SELECT {_select(_RATED_COLS)} FROM _rated
"""
_ROLLUP_NEW = _ADD_TO_HOURLY.format(changes=_NEW_ROWS)


class UsageBatch(NamedTuple):
    """One transaction's worth of usage, deduplicated and formatted as COPY text."""

    sessions: int
    rated: int
    session_copy: str
    rated_copy: str


def prepare_usage(items: list) -> UsageBatch:
    """Deduplicate and format a batch of ``SessionSnapshot`` and ``RatedPiece`` items
    (pure Python, no database): within the batch the last snapshot of a session and the
    last version of a rated piece win (a statement may touch a row only once)."""
    snaps: dict[tuple, SessionSnapshot] = {}
    rated: dict[tuple, RatedPiece] = {}
    for it in items:
        if isinstance(it, RatedPiece):
            rated[(it.tenant_id, it.record_id, it.piece, it.ts)] = it
        else:
            key = (it.tenant_id, it.nas_id, it.session_id)
            prev = snaps.get(key)
            if prev is None or prev.version < it.version:
                snaps[key] = it
    return UsageBatch(len(snaps), len(rated), "".join(map(_session_line, snaps.values())),
                      "".join(map(_rated_line, rated.values())))


def write_prepared_usage(conn: psycopg.Connection, batch: UsageBatch) -> tuple[int, int]:
    """Write one prepared batch in one transaction; returns (sessions, rated rows).

    ``conn`` must be in autocommit mode and outside a transaction: the transaction's
    own ``BEGIN``, savepoint and ``COMMIT`` travel with its statements, six round trips
    in all. (The writer thread waits for the interpreter lock after each round trip,
    up to a switch interval while the flow computes: ~4 ms, a quarter of a
    transaction's time when each took its own.)"""
    if not batch.sessions and not batch.rated:
        return 0, 0
    if not conn.autocommit or \
            conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("write_usage needs an autocommit connection outside a "
                           "transaction: it runs its own, whose commit empties the "
                           "staging tables")
    cur = conn.cursor()
    try:
        cur.execute(_BEGIN_STAGED)
        if batch.sessions:
            with cur.copy("COPY _snap FROM STDIN") as cp:
                cp.write(batch.session_copy)
        if batch.rated:
            with cur.copy("COPY _rated FROM STDIN") as cp:
                cp.write(batch.rated_copy)
        sessions = [_UPSERT_SESSIONS] if batch.sessions else []
        try:
            cur.execute(";".join(["SAVEPOINT new_rows", *sessions,
                                  *([_INSERT_NEW_RATED, _ROLLUP_NEW] if batch.rated else []),
                                  "COMMIT"]))
        except psycopg.errors.UniqueViolation:
            # Some rated rows exist (a replay): replace them and adjust the rollup by the
            # difference.
            cur.execute(";".join(["ROLLBACK TO SAVEPOINT new_rows", *sessions, _ROLLUP,
                                  _UPSERT_RATED, "COMMIT"]))
    except BaseException:
        if not conn.closed and \
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:  # a broken connection: the caller sees the first error
                pass
        raise
    return batch.sessions, batch.rated


def write_usage(conn: psycopg.Connection, items: list) -> tuple[int, int]:
    """Write one batch of ``SessionSnapshot`` and ``RatedPiece`` items in one transaction
    (``prepare_usage`` then ``write_prepared_usage``). Returns (sessions, rated rows)
    written."""
    return write_prepared_usage(conn, prepare_usage(items))


WriteFn = Callable[[psycopg.Connection, Any], object]


def _as_is(items: list) -> list:
    return items


class _PipelinedPartition(StatefulSinkPartition):
    """Writes batches on background threads, so the flow keeps computing meanwhile.

    Two stages, each on its own thread: ``prepare(items)`` turns whatever queued up
    since the last batch was taken into one batch (pure Python: deduplicating,
    formatting), while ``write(conn, prepared)`` writes the previous one in one
    transaction (idempotently: a batch may be written again after a reconnect or a
    replay). So PostgreSQL works on one batch while the next is formatted, and a batch
    is taken only once the previous one went to the database (under backlog, repeated
    snapshots of a row coalesce). ``snapshot``, which Bytewax calls at the end of every
    epoch before it records that epoch's state and input offsets, blocks until
    everything queued is committed: the write precedes the commit of offsets. A failed
    prepare or write fails the flow at the next call, and it resumes from the last
    snapshot. With ``lists``, each item the flow hands over is a list of items (a batch).
    """

    def __init__(self, dsn: str, max_queued: int, max_merge: int,
                 write: WriteFn | None = None, name: str = "usage", lists: bool = False,
                 prepare: Callable[[list], Any] = _as_is) -> None:
        self._dsn = dsn
        self._lists = lists
        self._max_queued = max_queued
        self._max_merge = max_merge
        self._prepare_fn = prepare
        self._write_fn: WriteFn = write or write_usage
        self._name = name
        self._cv = threading.Condition()
        self._queue: list = []
        self._preparing = False  # the preparer holds items taken from the queue
        self._ready: list = []  # at most one prepared batch, for the writer
        self._writing = False
        self._error: BaseException | None = None
        self._closing = False
        self._conn = connect(dsn, autocommit=True)
        self._threads = [
            threading.Thread(target=self._run_prepare, name=f"{name}-db-prepare",
                             daemon=True),
            threading.Thread(target=self._run_write, name=f"{name}-db-writer", daemon=True)]
        for t in self._threads:
            t.start()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing {self._name} to the database failed") \
                from self._error

    def write_batch(self, values: list) -> None:
        with self._cv:
            self._raise_if_failed()
            # Back-pressure: never hold more than max_queued items in memory.
            self._cv.wait_for(lambda: len(self._queue) < self._max_queued
                              or self._error is not None)
            self._raise_if_failed()
            if self._lists:
                for v in values:
                    self._queue.extend(v)
            else:
                self._queue.extend(values)
            self._cv.notify_all()

    def _idle(self) -> bool:
        return not (self._queue or self._preparing or self._ready or self._writing)

    def snapshot(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._idle() or self._error is not None)
            self._raise_if_failed()
        return None

    def close(self) -> None:
        # Bytewax also closes partitions while unwinding from a failure: raising again
        # here would abort the process, so a failure is only reported.
        try:
            self.snapshot()
        except RuntimeError:
            log.error("closing the %s database writer after a failed write", self._name)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(10)
        self._conn.close()

    def _fail(self, exc: BaseException, what: str) -> None:
        log.error("%s database %s failed", self._name, what, exc_info=exc)
        with self._cv:
            self._error = exc
            self._preparing = self._writing = False
            self._cv.notify_all()

    def _run_prepare(self) -> None:
        while True:
            with self._cv:
                # the next batch is taken once the previous one went to the writer
                self._cv.wait_for(lambda: self._error is not None
                                  or (not self._ready and (self._queue or self._closing)))
                if self._error is not None or not self._queue:
                    return
                batch = self._queue[: self._max_merge]
                del self._queue[: self._max_merge]
                self._preparing = True
                self._cv.notify_all()  # room in the queue
            try:
                prepared = self._prepare_fn(batch)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the flow thread
                self._fail(exc, "prepare")
                return
            with self._cv:
                self._ready.append(prepared)
                self._preparing = False
                self._cv.notify_all()

    def _run_write(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._ready or self._error is not None
                                  or (self._closing and self._idle()))
                if self._error is not None or not self._ready:
                    return
                prepared = self._ready.pop(0)
                self._writing = True
                self._cv.notify_all()  # the preparer may take the next batch
            try:
                self._write(prepared)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the flow thread
                self._fail(exc, "write")
                return
            with self._cv:
                self._writing = False
                self._cv.notify_all()

    def _write(self, prepared) -> None:
        try:
            self._write_fn(self._conn, prepared)
        except psycopg.OperationalError:
            # The connection broke: reconnect once and retry the same idempotent batch.
            log.warning("database connection lost; reconnecting")
            self._conn.close()
            self._conn = connect(self._dsn, autocommit=True)
            self._write_fn(self._conn, prepared)


class UsageDbSink(FixedPartitionedSink):
    """Bytewax sink writing rated usage and session state to PostgreSQL.

    Items are ``(key, [RatedPiece | SessionSnapshot, ...])`` (the usage flow moves
    batches); ``partitions`` writer partitions
    (each with its own connection and two threads) are spread over the workers.
    """

    def __init__(self, dsn: str, partitions: int = 1, max_queued: int = 200_000,
                 max_merge: int = 50_000) -> None:
        self._dsn = dsn
        self._partitions = partitions
        self._max_queued = max_queued
        self._max_merge = max_merge

    def list_parts(self) -> list[str]:
        return [f"db-{i}" for i in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _PipelinedPartition:
        return _PipelinedPartition(self._dsn, self._max_queued, self._max_merge,
                                   write_prepared_usage, "usage", lists=True,
                                   prepare=prepare_usage)


class PipelinedDbSink(FixedPartitionedSink):
    """A Bytewax sink writing ``(key, item)`` batches with ``write(conn, items)`` on
    ``partitions`` pipelined writer partitions (each with its own connection and
    two threads), with the same epoch barrier as the usage sink. Items are routed to a
    partition by key, so one key's items are always written in order."""

    def __init__(self, dsn: str, write: WriteFn, name: str, partitions: int = 1,
                 max_queued: int = 200_000, max_merge: int = 50_000) -> None:
        self._dsn = dsn
        self._write = write
        self._name = name
        self._partitions = partitions
        self._max_queued = max_queued
        self._max_merge = max_merge

    def list_parts(self) -> list[str]:
        return [f"{self._name}-db-{i}" for i in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _PipelinedPartition:
        return _PipelinedPartition(self._dsn, self._max_queued, self._max_merge,
                                   self._write, self._name)
