"""Database access for the API: a small thread-safe connection pool.

Connections are opened lazily (up to ``max_size``), in autocommit mode so nothing ever
runs in an implicit transaction: all work happens inside explicit transactions, and every
request's reads run inside ``ispstream.db.tenant_transaction`` (restricted role, tenant
set locally). A connection that comes back in a transaction is rolled back, a broken one
is dropped, and one idle for a while is checked before it is handed out again.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg.pq import TransactionStatus

from ispstream.db import API_ROLE, connect

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """No connection could be had (pool exhausted past the timeout, or connect failed)."""


class ConnectionPool:
    """At most ``max_size`` connections to ``dsn``, shared by the request threads."""

    def __init__(self, dsn: str, *, max_size: int = 10, timeout: float = 5.0,
                 check_idle_after: float = 30.0, connect_timeout: int = 5,
                 statement_timeout_ms: int = 15000) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._check_idle_after = check_idle_after
        self._connect_kwargs = {
            "autocommit": True,
            "application_name": "ispstream-api",
            "connect_timeout": connect_timeout,
            # UTC: timestamps come back in UTC and hour arithmetic never depends on
            # the server's zone; a runaway query cannot hold a worker for ever.
            "options": f"-c TimeZone=UTC -c statement_timeout={int(statement_timeout_ms)}",
        }
        self._slots = threading.BoundedSemaphore(max_size)
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection, float]] = []
        self._closed = False

    def getconn(self, timeout: float | None = None) -> psycopg.Connection:
        """Borrow a connection (return it with ``putconn``)."""
        if self._closed:
            raise DatabaseUnavailable("the connection pool is closed")
        if not self._slots.acquire(timeout=self._timeout if timeout is None else timeout):
            raise DatabaseUnavailable("no database connection free (pool exhausted)")
        try:
            return self._take()
        except BaseException:
            self._slots.release()
            raise

    def putconn(self, conn: psycopg.Connection) -> None:
        """Give a borrowed connection back (rolled back, or dropped when broken)."""
        try:
            if not conn.closed and not conn.broken:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
                if conn.info.transaction_status == TransactionStatus.IDLE and not self._closed:
                    with self._lock:
                        self._idle.append((conn, time.monotonic()))
                    return
            conn.close()
        except psycopg.Error:
            conn.close()
        finally:
            self._slots.release()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """Borrow a connection for the ``with`` block."""
        conn = self.getconn(timeout)
        try:
            yield conn
        finally:
            self.putconn(conn)

    def close(self) -> None:
        """Close the idle connections; borrowed ones are closed when given back."""
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def _take(self) -> psycopg.Connection:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - since > self._check_idle_after:
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    log.info("dropping a stale database connection")
                    conn.close()
                    continue
            return conn
        try:
            return connect(self._dsn, **self._connect_kwargs)
        except psycopg.OperationalError as exc:
            log.warning("cannot connect to the database: %s", exc)
            raise DatabaseUnavailable("cannot connect to the database") from None


@contextmanager
def api_role_transaction(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A transaction as the restricted API role with no tenant set (RLS: no rows).

    For work that happens before the tenant is known: key lookup and health checks.
    """
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {API_ROLE}")
        yield conn
