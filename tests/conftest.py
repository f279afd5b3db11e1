"""Shared fixtures: real services, isolated per test.

- ``pg_dsn``: a fresh PostgreSQL database per test, cloned from a migrated template.
- ``broker``: the embedded Kafka-protocol broker (one per test session); ``topic_prefix``
  gives each test its own uuid-named topics.
- ``require_binary``: a tool such as ``radclient`` must be installed.

With ``CI=true`` a missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings

import psycopg
import pytest

from ispstream.db import migrate

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN_DSN = os.environ.get(
    "ISPSTREAM_TEST_DATABASE_URL", "postgresql://ispstream:ispstream@127.0.0.1:5432/ispstream"
)


def missing_service(what: str) -> None:
    """Fail in CI, skip elsewhere: a test that needs a service never passes without it."""
    msg = f"{what} is not available (run scripts/bootstrap.sh and scripts/postgres.sh)"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _dsn_for(db: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{db}"


def drop_database(name: str) -> None:
    """Drop a test database, retrying while a backend we may not terminate (autovacuum on
    a freshly cloned database runs as a superuser) is still attached to it."""
    for attempt in range(20):
        try:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            time.sleep(0.25 * (attempt + 1))
    warnings.warn(f"test database {name} could not be dropped (still in use)")


@pytest.fixture(scope="session")
def pg_template() -> str:
    """A migrated template database for this test session."""
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        missing_service(f"PostgreSQL at {ADMIN_DSN} ({exc})")
    name = f"ispt_tmpl_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    migrate(_dsn_for(name))
    yield name
    admin.close()
    drop_database(name)


@pytest.fixture
def pg_dsn(pg_template: str) -> str:
    """DSN of a fresh, migrated database for one test (dropped afterwards)."""
    name = f"ispt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _dsn_for(name)
    drop_database(name)


@pytest.fixture(scope="session")
def broker():
    """The embedded Kafka-protocol broker for this test session."""
    from ispstream.kafka import EmbeddedBroker

    b = EmbeddedBroker()
    yield b
    b.close()


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so each test uses its own topics."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def require_binary():
    def _require(name: str) -> str:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if not path:
            missing_service(f"the `{name}` program")
        return path

    return _require
