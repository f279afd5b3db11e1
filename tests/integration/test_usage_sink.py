"""The usage flow's database writes (pipelines.sinks.write_usage) against PostgreSQL:
new batches, exact replays, replays with changed rows mixed with new ones, and session
versions. The hourly rollup must always equal the sums of the rated rows it covers."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import psycopg
import pytest

from pipelines.sinks import write_usage
from rating.sessions import SessionSnapshot
from rating.tariff import RatedPiece

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SUMS = "upload_bytes, download_bytes, billable_bytes, zero_rated_bytes, over_quota_bytes, charge"


def piece(i: int, *, billable: int = 100, charge: str = "0.01", user: str = "alice",
          ts: int | None = None) -> RatedPiece:
    ts = T0 + 600 * i if ts is None else ts
    return RatedPiece("acme", user, "bng-1", f"S{i % 3}", f"rec{i:021d}", 0, ts - 300, ts,
                      "fiber", date(2023, 11, 1), 40, 60, billable, 100 - billable,
                      0, Decimal(charge), "EUR", Decimal("1"), ())


def snap(session: str, version: int, upload: int) -> SessionSnapshot:
    return SessionSnapshot("acme", "bng-1", session, "alice", "open", None, T0, T0 + version,
                           None, upload, 2 * upload, 0, 300, "10.0.0.1", version)


@pytest.fixture
def conn(pg_dsn):
    # autocommit: the checks' reads must not hold a transaction open around the writes
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("INSERT INTO tenants (id, timezone, currency) VALUES ('acme', 'UTC', 'EUR')")
        yield c


def hourly(conn) -> dict:
    return {r[0]: r[1:] for r in conn.execute(
        f"SELECT hour, {SUMS} FROM usage_hourly ORDER BY hour")}


def from_rows(conn) -> dict:
    return {r[0]: r[1:] for r in conn.execute(
        f"""SELECT date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS h,
                   {", ".join(f"sum({c})" for c in SUMS.split(", "))}
            FROM usage_rated GROUP BY h ORDER BY h""")}


def test_new_rows_are_inserted_and_rolled_up(conn):
    assert write_usage(conn, [piece(i) for i in range(12)]) == (0, 12)
    assert conn.execute("SELECT count(*) FROM usage_rated").fetchone()[0] == 12
    assert hourly(conn) == from_rows(conn)
    assert sum(v[2] for v in hourly(conn).values()) == 1200


def test_an_exact_replay_changes_nothing(conn):
    batch = [piece(i) for i in range(12)]
    write_usage(conn, batch)
    before = hourly(conn)
    write_usage(conn, batch)
    write_usage(conn, batch[3:7])
    assert hourly(conn) == before
    assert conn.execute("SELECT count(*) FROM usage_rated").fetchone()[0] == 12


def test_a_replay_with_changed_rows_and_new_rows_adjusts_by_the_difference(conn):
    write_usage(conn, [piece(i) for i in range(6)])
    # a replay after a plan change rated two rows differently, plus rows never seen
    batch = [piece(1, billable=0, charge="0"), piece(4, billable=70, charge="1.50")] + \
        [piece(i) for i in range(6, 10)]
    write_usage(conn, batch)
    assert conn.execute("SELECT count(*) FROM usage_rated").fetchone()[0] == 10
    assert hourly(conn) == from_rows(conn)
    assert sum(v[2] for v in hourly(conn).values()) == 100 * 8 + 0 + 70
    assert sum(v[5] for v in hourly(conn).values()) == Decimal("0.01") * 8 + Decimal("1.50")


def test_the_last_version_of_a_row_in_a_batch_wins(conn):
    write_usage(conn, [piece(1, billable=10), piece(1, billable=30)])
    assert conn.execute("SELECT billable_bytes FROM usage_rated").fetchone()[0] == 30
    assert hourly(conn) == from_rows(conn)


def test_a_connection_inside_a_transaction_is_refused(pg_dsn):
    with psycopg.connect(pg_dsn) as c:
        c.execute("SELECT 1")
        with pytest.raises(RuntimeError, match="outside a transaction"):
            write_usage(c, [piece(1)])


def test_sessions_only_move_to_a_higher_version(conn):
    write_usage(conn, [snap("S1", 3, 100), snap("S1", 6, 200), snap("S2", 3, 5)])
    write_usage(conn, [snap("S1", 4, 150)])  # an older version arriving late
    rows = dict(conn.execute("SELECT session_id, upload_bytes FROM sessions").fetchall())
    assert rows == {"S1": 200, "S2": 5}
    write_usage(conn, [snap("S1", 9, 250), piece(1)._replace(session_id="S1")])
    assert conn.execute("SELECT upload_bytes FROM sessions WHERE session_id = 'S1'"
                        ).fetchone()[0] == 250


def test_tables_updated_in_place_leave_room_for_hot_updates(conn):
    """sessions and usage_hourly rows are rewritten by every batch: their pages keep room
    so the new versions stay on the page (migrations 0010 and 0012)."""
    opts = dict(conn.execute("SELECT relname, reloptions FROM pg_class "
                             "WHERE relname IN ('sessions', 'usage_hourly')").fetchall())
    assert opts == {"sessions": ["fillfactor=70"], "usage_hourly": ["fillfactor=70"]}


def test_cycle_totals_count_exactly_the_cycles_rows_at_its_edges(conn):
    """The cycle's totals are read through the time index, within a window around the
    cycle's start date: rows at the extreme edges a zone allows (a cycle starting at
    local midnight in UTC+14, ending at local midnight in UTC-12 after 31 days) count,
    the neighbouring cycles' rows in the window do not."""
    from datetime import datetime, timezone

    from portal_api.queries import cycle_totals

    def at(iso: str) -> int:
        return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())

    nov, oct_, dec = date(2023, 11, 1), date(2023, 10, 1), date(2023, 12, 1)
    rows = [(1, "2023-10-31T10:00:00", nov, 10), (2, "2023-12-02T12:00:00", nov, 20),
            (3, "2023-11-15T00:00:00", nov, 30), (4, "2023-10-31T11:00:00", oct_, 5),
            (5, "2023-12-01T00:00:00", dec, 7), (6, "2023-11-20T00:00:00", nov, 40)]
    write_usage(conn, [piece(i, billable=b, ts=at(ts))._replace(cycle_start=c)
                       for i, ts, c, b in rows])
    write_usage(conn, [piece(7, billable=50, user="bob")])
    assert cycle_totals(conn, "acme", "alice", nov).billable_bytes == 100
    assert cycle_totals(conn, "acme", "alice", oct_).billable_bytes == 5
    assert cycle_totals(conn, "acme", "alice", dec).billable_bytes == 7


def test_a_failed_batch_leaves_nothing_and_the_connection_usable(conn):
    """A batch failing half-way (a row the database refuses) is rolled back whole: no
    session, no row, no rollup; the next batch on the same connection is written."""
    bad = piece(2)._replace(piece=70000)  # beyond usage_rated.piece's smallint
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        write_usage(conn, [snap("S1", 3, 100), piece(1), bad])
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM usage_rated").fetchone()[0] == 0
    assert hourly(conn) == {}
    assert write_usage(conn, [snap("S1", 3, 100), piece(1)]) == (1, 1)
    assert hourly(conn) == from_rows(conn)
