"""Database sink of the usage flow: idempotent, batched upserts in one transaction.

Per batch: session snapshots upsert ``sessions`` (only ever to a higher ``version``);
rated pieces upsert ``usage_rated`` on their stable key; the ``usage_hourly`` buckets the
batch touched are recomputed from ``usage_rated``. ``write_batch`` returns only after the
commit, and Bytewax completes an epoch (and snapshots its state and input offsets) only
after every sink returned: the write always precedes the commit of offsets.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Iterable

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition

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


def _ts(epoch: int | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _session_row(s: SessionSnapshot) -> tuple:
    return (s.tenant_id, s.nas_id, s.session_id, s.username, s.state, s.close_reason,
            _ts(s.started_at), _ts(s.updated_at), _ts(s.stopped_at), s.upload, s.download,
            s.resets, s.interim_interval, s.framed_ip, s.version)


def _rated_row(p: RatedPiece) -> tuple:
    return (p.tenant_id, p.record_id, p.piece, _ts(p.ts), _ts(p.ts_start), p.username,
            p.nas_id, p.session_id, p.plan_id, p.cycle_start, p.upload_bytes,
            p.download_bytes, p.billable_bytes, p.zero_rated_bytes, p.over_quota_bytes,
            p.charge, p.rate_multiplier, list(p.flags))


def _update_set(cols: Iterable[str], key: Iterable[str]) -> str:
    key = set(key)
    return ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)


_UPSERT_SESSIONS = f"""
INSERT INTO sessions ({", ".join(_SESSION_COLS)})
SELECT {", ".join(_SESSION_COLS)} FROM _snap
ON CONFLICT (tenant_id, nas_id, session_id) DO UPDATE
SET {_update_set(_SESSION_COLS, ("tenant_id", "nas_id", "session_id"))}
WHERE sessions.version < excluded.version
"""

_UPSERT_RATED = f"""
INSERT INTO usage_rated ({", ".join(_RATED_COLS)})
SELECT {", ".join(_RATED_COLS)} FROM _rated
ON CONFLICT (tenant_id, record_id, piece, ts) DO UPDATE
SET {_update_set(_RATED_COLS, ("tenant_id", "record_id", "piece", "ts"))}
"""

# Recompute (not increment) every hour bucket the batch touched: replays stay exact.
_ROLLUP = """
WITH touched AS (
  SELECT DISTINCT tenant_id, username,
         date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS hour
  FROM _rated
)
INSERT INTO usage_hourly (tenant_id, username, hour, upload_bytes, download_bytes,
                          billable_bytes, zero_rated_bytes, over_quota_bytes, charge)
SELECT t.tenant_id, t.username, t.hour,
       sum(u.upload_bytes), sum(u.download_bytes), sum(u.billable_bytes),
       sum(u.zero_rated_bytes), sum(u.over_quota_bytes), sum(u.charge)
FROM touched t
JOIN usage_rated u ON u.tenant_id = t.tenant_id AND u.username = t.username
                  AND u.ts >= t.hour AND u.ts < t.hour + interval '1 hour'
GROUP BY t.tenant_id, t.username, t.hour
ON CONFLICT (tenant_id, username, hour) DO UPDATE
SET upload_bytes = excluded.upload_bytes, download_bytes = excluded.download_bytes,
    billable_bytes = excluded.billable_bytes, zero_rated_bytes = excluded.zero_rated_bytes,
    over_quota_bytes = excluded.over_quota_bytes, charge = excluded.charge
"""


def write_usage(conn: psycopg.Connection, items: list) -> tuple[int, int]:
    """Write one batch of ``SessionSnapshot`` and ``RatedPiece`` items in one transaction.

    Returns (sessions, rated rows) written. Within the batch the last snapshot of a session
    and the last version of a rated piece win (a statement may touch a row only once).
    """
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
    with conn.transaction():
        cur = conn.cursor()
        if snaps:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS _snap "
                        "(LIKE sessions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY _snap ({', '.join(_SESSION_COLS)}) FROM STDIN") as cp:
                for s in snaps.values():
                    cp.write_row(_session_row(s))
            cur.execute(_UPSERT_SESSIONS)
        if rated:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS _rated "
                        "(LIKE usage_rated INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY _rated ({', '.join(_RATED_COLS)}) FROM STDIN") as cp:
                for p in rated.values():
                    cp.write_row(_rated_row(p))
            cur.execute(_UPSERT_RATED)
            cur.execute(_ROLLUP)
    return len(snaps), len(rated)


class _UsagePartition(StatelessSinkPartition):
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = connect(dsn)

    def write_batch(self, items: list) -> None:
        try:
            write_usage(self._conn, items)
        except psycopg.OperationalError:
            # The connection broke: reconnect once and retry the same idempotent batch;
            # if that fails too the flow stops and resumes from its last snapshot.
            log.warning("database connection lost; reconnecting")
            self._conn.close()
            self._conn = connect(self._dsn)
            write_usage(self._conn, items)

    def close(self) -> None:
        self._conn.close()


class UsageDbSink(DynamicSink):
    """Bytewax sink writing rated usage and session state to PostgreSQL."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UsagePartition:
        return _UsagePartition(self._dsn)
