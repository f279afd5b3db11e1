"""The API logged in as a role that is neither superuser, owner nor BYPASSRLS."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from fastapi.testclient import TestClient

from ispstream.apikeys import create_key
from ispstream.settings import Settings
from portal_api.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def api_login(pg_dsn):
    """A login role that is only a member of ispstream_api."""
    role = f"ispt_web_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOBYPASSRLS "
                     "IN ROLE ispstream_api")
    base, _, db = pg_dsn.rpartition("/")
    host = base.rpartition("@")[2]
    yield f"postgresql://{role}:pw@{host}/{db}", role
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


def test_api_serves_usage_as_a_non_owner_login_role(pg_dsn, api_login):
    login_dsn, role = api_login
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO tenants VALUES ('acme', 'UTC', 'EUR'), ('other', 'UTC', 'EUR')")
        conn.execute("INSERT INTO plans (tenant_id, id, monthly_fee) VALUES "
                     "('acme', 'p', 10), ('other', 'p', 10)")
        conn.execute("INSERT INTO subscribers (tenant_id, username, plan_id) VALUES "
                     "('acme', 'alice', 'p'), ('other', 'zed', 'p')")
        conn.execute(
            "INSERT INTO usage_rated (tenant_id, record_id, piece, ts, ts_start, username, "
            "nas_id, session_id, plan_id, cycle_start, upload_bytes, download_bytes, "
            "billable_bytes, zero_rated_bytes, over_quota_bytes, charge, rate_multiplier) "
            "VALUES ('acme', 'r1', 0, '2026-03-02T10:00Z', '2026-03-02T09:55Z', 'alice', "
            "'n', 's', 'p', '2026-03-01', 5, 7, 12, 0, 0, 0, 1)")
    with psycopg.connect(login_dsn) as conn:
        row = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles "
                           "WHERE rolname = current_user").fetchone()
        assert row == (False, False)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = "
                             "'usage_rated'").fetchone()[0]
        assert owner != role
        # Outside a tenant transaction the role sees nothing at all.
        assert conn.execute("SELECT count(*) FROM usage_rated").fetchone()[0] == 0

    key = create_key(pg_dsn, "acme", "operator")
    other_key = create_key(pg_dsn, "other", "operator")
    app = create_app(Settings(database_url=pg_dsn, api_database_url=login_dsn))
    with TestClient(app) as client:
        params = {"from": datetime(2026, 3, 1, tzinfo=timezone.utc).isoformat(),
                  "to": datetime(2026, 3, 3, tzinfo=timezone.utc).isoformat()}
        r = client.get("/v1/subscribers/alice/usage", params=params,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        assert (r.json()["upload_bytes"], r.json()["download_bytes"]) == (5, 7)
        r = client.get("/v1/subscribers/alice/usage", params=params,
                       headers={"Authorization": f"Bearer {other_key}"})
        assert r.status_code == 404
