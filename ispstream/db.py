"""Database plumbing: connections, migrations, and tenant-scoped transactions."""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

import psycopg

log = logging.getLogger(__name__)

TIMESCALE_MARKER = "-- ispstream: requires timescaledb"
API_ROLE = "ispstream_api"


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """Open a connection (autocommit off) with a recognisable application name."""
    kwargs.setdefault("application_name", "ispstream")
    return psycopg.connect(dsn, **kwargs)


def migrations_dir() -> Path:
    """The ``sql/`` folder shipped with the project."""
    here = Path(__file__).resolve().parent.parent / "sql"
    if here.is_dir():
        return here
    return Path(str(resources.files("ispstream").joinpath("../sql")))


def _timescale_available(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return row is not None


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the ordered ``*.sql`` migrations not yet recorded; return what ran.

    Each file runs in its own transaction together with its ``schema_migrations`` row,
    under an advisory lock so concurrent runs wait for each other. A file whose first
    line is the TimescaleDB marker runs only when that extension is available and is
    retried on later runs until it does.
    """
    directory = directory or migrations_dir()
    files = sorted(p for p in directory.glob("*.sql"))
    applied: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("SELECT pg_advisory_lock(hashtext('ispstream.migrate'))")
        try:
            done = {
                v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            timescale = None
            for path in files:
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                version = path.stem
                if version in done:
                    if done[version] != checksum:
                        log.warning("migration %s changed after it was applied", version)
                    continue
                if sql.startswith(TIMESCALE_MARKER):
                    if timescale is None:
                        timescale = _timescale_available(conn)
                    if not timescale:
                        log.info("skipping %s: timescaledb extension not available", version)
                        continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (version, checksum),
                    )
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('ispstream.migrate'))")
    return applied


@contextmanager
def tenant_transaction(conn: psycopg.Connection, tenant_id: str) -> Iterator[psycopg.Connection]:
    """A transaction running as the restricted API role with the tenant set locally.

    ``SET LOCAL ROLE`` and ``set_config(..., true)`` last only until the transaction
    ends, so a pooled connection never carries one tenant's context into the next.
    """
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {API_ROLE}")
        conn.execute("SELECT set_config('ispstream.tenant_id', %s, true)", (tenant_id,))
        yield conn
