"""API keys and the HTTP API against a real PostgreSQL (and the embedded broker).

Usage rows are seeded with SQL as the table owner; the API reads them as the restricted
role under row-level security. Amounts are asserted exactly: integer bytes, money strings.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone

import httpx
import psycopg
import pytest

from ispstream.apikeys import ApiKeyError, Principal, authenticate, create_key, parse_key
from ispstream.db import tenant_transaction
from portal_api.db import ConnectionPool, DatabaseUnavailable, api_role_transaction
from procs import free_port
from rating.cycles import cycle_at
from tests.integration.api_world import (
    api_client,
    apply_inventory,
    assert_clean_exit,
    get,
    start_api,
    wait_healthy,
)

pytestmark = pytest.mark.integration

NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc

INVENTORY = """\
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - {id: small, monthly_fee: "10.00", quota_gb: 0.5, after_quota: {overage_per_gb: "1.50"}}
      - {id: unlimited, monthly_fee: "59.00"}
      - id: fwa
        monthly_fee: "24.90"
        quota_gb: 100
        quota_counts: download
        after_quota: {throttle: "2M/2M"}
    nas:
      - {ip: 192.0.2.1, name: bng-1, secret: s1}
    subscribers:
      - {username: alice, plan: small}
      - {username: bob, plan: unlimited}
      - {username: carol, plan: small, cycle_anchor_day: 15}
      - {username: dave, plan: fwa}
  - id: beta
    timezone: Asia/Tokyo
    currency: JPY
    plans:
      - {id: basic, monthly_fee: "3000", quota_gb: 10, after_quota: {overage_per_gb: "100"}}
    nas:
      - {ip: 192.0.2.2, name: tokyo-1, secret: s2}
    subscribers:
      - {username: alice, plan: basic}
"""

# (tenant, record, ts, user, cycle_start, up, down, billable, zero_rated, over, charge, flags)
RATED = [
    ("acme", "r1", "2024-03-10T22:30Z", "alice", "2024-03-01",
     1000, 400_000_000, 400_001_000, 0, 0, "0", []),
    # 00:30 on March 11 in Berlin, still March 10 in UTC
    ("acme", "r2", "2024-03-10T23:30Z", "alice", "2024-03-01",
     2000, 300_000_000, 300_002_000, 0, 200_003_000, "0.3000045", []),
    ("acme", "r3", "2024-03-11T08:15Z", "alice", "2024-03-01", 5, 10, 0, 15, 0, "0", []),
    # two charges of 0.004 each: rounded separately they would be 0.00 + 0.00
    ("acme", "r5", "2024-03-12T10:00Z", "alice", "2024-03-01",
     0, 2_666_667, 2_666_667, 0, 2_666_667, "0.0040000005", []),
    ("acme", "r6", "2024-03-12T10:30Z", "alice", "2024-03-01",
     0, 2_666_667, 2_666_667, 0, 2_666_667, "0.0040000005", []),
    # March 31 in Berlin has 23 hours (CET -> CEST)
    ("acme", "r7", "2024-03-31T12:00Z", "alice", "2024-03-01", 7, 0, 7, 0, 7, "0.0000000105",
     []),
    # the previous cycle
    ("acme", "r4", "2024-02-20T10:00Z", "alice", "2024-02-01", 999, 999, 1998, 0, 0, "0", []),
    ("acme", "c1", "2024-03-15T08:00Z", "carol", "2024-03-15", 40, 60, 100, 0, 0, "0", []),
    ("acme", "c0", "2024-03-14T08:00Z", "carol", "2024-02-15", 1, 1, 2, 0, 0, "0", []),
    ("beta", "t1", "2024-03-12T00:00Z", "alice", "2024-03-01", 1, 2, 3, 0, 3, "12.5", []),
]

# (tenant, nas, session, user, state, close_reason, started, updated, stopped, up, down, ip)
SESSIONS = [
    ("acme", "bng-1", "A1", "alice", "closed", "User-Request", "2024-03-10T08:00Z",
     "2024-03-10T09:00Z", "2024-03-10T09:00Z", 100, 200, "10.0.0.1"),
    ("acme", "bng-1", "A2", "alice", "open", None, "2024-03-12T08:00Z",
     "2024-03-15T11:55Z", None, 5_000_000_000, 7_000_000_001, "10.0.0.1"),
    ("acme", "bng-1", "C1", "carol", "open", None, "2024-03-12T08:00Z",
     "2024-03-15T11:50Z", None, 1, 2, "10.0.0.3"),
    ("acme", "bng-1", "C0", "carol", "stale", "stale", "2024-03-01T00:00Z",
     "2024-03-01T01:00Z", "2024-03-01T01:12:30Z", 3, 4, None),
    ("acme", "bng-1", "B1", "bob", "closed", "Lost-Carrier", "2024-03-14T00:00Z",
     "2024-03-14T02:00Z", "2024-03-14T02:00Z", 10, 20, "10.0.0.2"),
    ("beta", "tokyo-1", "X1", "alice", "open", None, "2024-03-13T00:00Z",
     "2024-03-15T11:00Z", None, 9, 9, "10.9.0.1"),
]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seed(dsn: str, rated=RATED, sessions=SESSIONS) -> None:
    """Insert usage, the hourly rollup (as the usage flow computes it) and sessions."""
    with psycopg.connect(dsn) as conn:
        for (tenant, rec, at, user, cycle, up, down, billable, zero, over, charge,
             flags) in rated:
            conn.execute(
                "INSERT INTO usage_rated (tenant_id, record_id, piece, ts, ts_start, "
                "username, nas_id, session_id, plan_id, cycle_start, upload_bytes, "
                "download_bytes, billable_bytes, zero_rated_bytes, over_quota_bytes, "
                "charge, rate_multiplier, flags) VALUES (%s, %s, 0, %s, %s, %s, 'n', 's', "
                "NULL, %s, %s, %s, %s, %s, %s, %s::numeric, 1, %s)",
                (tenant, rec, ts(at), ts(at) - timedelta(minutes=5), user,
                 date.fromisoformat(cycle), up, down, billable, zero, over, charge, flags))
        conn.execute("DELETE FROM usage_hourly")
        conn.execute(
            "INSERT INTO usage_hourly SELECT tenant_id, username, "
            "date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'), "
            "sum(upload_bytes), sum(download_bytes), sum(billable_bytes), "
            "sum(zero_rated_bytes), sum(over_quota_bytes), sum(charge) "
            "FROM usage_rated GROUP BY 1, 2, 3")
        for (tenant, nas, sid, user, state, reason, started, updated, stopped, up, down,
             ip) in sessions:
            conn.execute(
                "INSERT INTO sessions (tenant_id, nas_id, session_id, username, state, "
                "close_reason, started_at, updated_at, stopped_at, upload_bytes, "
                "download_bytes, framed_ip, version) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1)",
                (tenant, nas, sid, user, state, reason, ts(started), ts(updated),
                 ts(stopped) if stopped else None, up, down, ip))


@pytest.fixture
def world(pg_dsn, tmp_path):
    """Two tenants with inventory, usage, sessions and keys."""
    apply_inventory(pg_dsn, tmp_path, INVENTORY)
    seed(pg_dsn)
    keys = {
        "acme": create_key(pg_dsn, "acme", "operator"),
        "acme_analyst": create_key(pg_dsn, "acme", "analyst"),
        "carol": create_key(pg_dsn, "acme", "customer", subscriber="carol"),
        "beta": create_key(pg_dsn, "beta", "admin"),
    }
    return pg_dsn, keys


@pytest.fixture
def api(world):
    dsn, keys = world
    with api_client(dsn, NOW) as client:
        yield client, keys


# --- API keys -----------------------------------------------------------------------


def test_key_is_stored_hashed(world):
    dsn, keys = world
    key = keys["acme"]
    key_id, secret = parse_key(key)
    assert key.startswith(f"isk_{key_id}_") and len(key_id) == 12
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT tenant_id, role, key_hash, subscriber, revoked_at "
                           "FROM api_keys WHERE id = %s", (key_id,)).fetchone()
        assert row == ("acme", "operator", hashlib.sha256(secret.encode()).digest(), None,
                       None)
        # the key itself, or its secret part, is stored nowhere
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM api_keys t").fetchone()[0]
        assert secret not in dump and key not in dump
        assert "\\x" + hashlib.sha256(secret.encode()).hexdigest() in dump
        audit = conn.execute("SELECT tenant_id, action, target, detail FROM audit_log "
                             "WHERE action = 'apikey.create' AND target = %s",
                             (key_id,)).fetchall()
        assert audit == [("acme", "apikey.create", key_id,
                          {"role": "operator", "subscriber": None})]


def test_key_creation_errors(world):
    dsn, _ = world
    with pytest.raises(ApiKeyError, match="tenant 'nope' does not exist"):
        create_key(dsn, "nope", "operator")
    with pytest.raises(ApiKeyError, match="role customer needs a subscriber"):
        create_key(dsn, "acme", "customer")
    with pytest.raises(ApiKeyError, match="subscriber 'zed' does not exist in tenant 'acme'"):
        create_key(dsn, "acme", "customer", subscriber="zed")
    with pytest.raises(ApiKeyError, match="unknown role"):
        create_key(dsn, "acme", "root")
    with pytest.raises(ApiKeyError, match="not tied to a subscriber"):
        create_key(dsn, "acme", "operator", subscriber="alice")


def test_authenticate_as_the_restricted_role(world):
    dsn, keys = world
    key_id, secret = parse_key(keys["carol"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        with api_role_transaction(conn):
            assert conn.execute("SELECT current_user").fetchone() == ("ispstream_api",)
            assert authenticate(conn, keys["carol"]) == Principal(key_id, "acme", "customer",
                                                                  "carol")
            assert authenticate(conn, f"isk_{key_id}_{'A' * 43}") is None
            assert authenticate(conn, "isk_nothing") is None
            assert authenticate(conn, "") is None
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
        with api_role_transaction(conn):
            assert authenticate(conn, keys["carol"]) is None


# --- authentication -------------------------------------------------------------------


def test_missing_or_invalid_key_is_401(api, world):
    client, keys = api
    r = get(client, None, "/v1/subscribers/alice/usage")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/sessions", headers={"Authorization": "Basic YTpi"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    key_id, _ = parse_key(keys["acme"])
    for bad in ("isk_nothing", f"isk_{key_id}_{'x' * 43}"):
        r = get(client, bad, "/v1/sessions")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    with psycopg.connect(world[0]) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    assert get(client, keys["acme"], "/v1/sessions").status_code == 401


# --- usage ----------------------------------------------------------------------------

ALICE_CYCLE = {
    "upload_bytes": 3012,
    "download_bytes": 705_333_344,
    "billable_bytes": 705_336_341,
    "zero_rated_bytes": 15,
    "over_quota_bytes": 205_336_341,
    "charge": "0.31",
    "charge_exact": "0.3080045115",
}


def test_usage_defaults_to_the_current_cycle(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/usage")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ALICE_CYCLE} == ALICE_CYCLE
    assert body["currency"] == "EUR" and body["username"] == "alice"
    # March in Berlin: 1 March 00:00 CET to 1 April 00:00 CEST
    assert ts(body["from"]) == ts("2024-02-29T23:00Z")
    assert ts(body["to"]) == ts("2024-03-31T22:00Z")
    assert body["series"] is None and body["granularity"] is None
    # an analyst may read too
    assert get(client, keys["acme_analyst"], "/v1/subscribers/alice/usage").json() == body


def test_usage_over_an_explicit_window(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/usage",
            **{"from": "2024-03-10T23:30:00+00:00", "to": "2024-03-12T11:30:00+01:00"})
    body = r.json()
    # r2 (at 'from', included), r3, r5 (10:00Z); r6 at 10:30Z is exactly 'to' (excluded)
    assert {k: body[k] for k in ALICE_CYCLE} == {
        "upload_bytes": 2005,
        "download_bytes": 302_666_677,
        "billable_bytes": 302_668_667,
        "zero_rated_bytes": 15,
        "over_quota_bytes": 202_669_667,
        "charge": "0.30",
        "charge_exact": "0.3040045005",
    }
    assert ts(body["from"]) == ts("2024-03-10T23:30Z")
    assert ts(body["to"]) == ts("2024-03-12T10:30Z")


def bucket(start, end, up, down, billable, zero, over, charge, exact):
    return {"start": start, "end": end, "upload_bytes": up, "download_bytes": down,
            "billable_bytes": billable, "zero_rated_bytes": zero, "over_quota_bytes": over,
            "charge": charge, "charge_exact": exact}


def normalised(series: list[dict]) -> list[dict]:
    return [{**b, "start": ts(b["start"]), "end": ts(b["end"])} for b in series]


def test_daily_series_uses_the_tenants_days(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/usage", granularity="day",
            **{"from": "2024-03-10T00:00:00+01:00", "to": "2024-03-13T00:00:00+01:00"})
    body = r.json()
    assert body["granularity"] == "day"
    # r2 at 23:30 UTC on March 10 belongs to March 11 in Berlin
    assert body["series"] == [
        bucket("2024-03-10T00:00:00+01:00", "2024-03-11T00:00:00+01:00",
               1000, 400_000_000, 400_001_000, 0, 0, "0.00", "0"),
        bucket("2024-03-11T00:00:00+01:00", "2024-03-12T00:00:00+01:00",
               2005, 300_000_010, 300_002_000, 15, 200_003_000, "0.30", "0.3000045"),
        bucket("2024-03-12T00:00:00+01:00", "2024-03-13T00:00:00+01:00",
               0, 5_333_334, 5_333_334, 0, 5_333_334, "0.01", "0.008000001"),
    ]
    assert body["charge"] == "0.31"  # the total is rounded once, not summed from buckets
    assert body["charge_exact"] == "0.308004501"


def test_daily_series_on_a_23_hour_day(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/alice/usage", granularity="day").json()
    last = body["series"][-1]
    assert last == bucket("2024-03-31T00:00:00+01:00", "2024-04-01T00:00:00+02:00",
                          7, 0, 7, 0, 7, "0.00", "0.0000000105")
    assert ts(last["end"]) - ts(last["start"]) == timedelta(hours=23)
    assert sum(b["billable_bytes"] for b in body["series"]) == ALICE_CYCLE["billable_bytes"]


def test_hourly_series_from_the_rollup(api):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/usage", granularity="hour",
            **{"from": "2024-03-10T22:30:00Z", "to": "2024-03-12T11:00:00Z"})
    body = r.json()
    assert normalised(body["series"]) == normalised([
        # the bucket holding 'from' is included whole (buckets are whole UTC hours)
        bucket("2024-03-10T22:00:00Z", "2024-03-10T23:00:00Z",
               1000, 400_000_000, 400_001_000, 0, 0, "0.00", "0"),
        bucket("2024-03-10T23:00:00Z", "2024-03-11T00:00:00Z",
               2000, 300_000_000, 300_002_000, 0, 200_003_000, "0.30", "0.3000045"),
        bucket("2024-03-11T08:00:00Z", "2024-03-11T09:00:00Z", 5, 10, 0, 15, 0, "0.00", "0"),
        bucket("2024-03-12T10:00:00Z", "2024-03-12T11:00:00Z",
               0, 5_333_334, 5_333_334, 0, 5_333_334, "0.01", "0.008000001"),
    ])
    assert body["billable_bytes"] == 705_336_334


def test_zero_decimal_currency_rounds_half_up(api):
    client, keys = api
    body = get(client, keys["beta"], "/v1/subscribers/alice/usage").json()
    assert (body["currency"], body["charge"], body["charge_exact"]) == ("JPY", "13", "12.5")
    assert (body["upload_bytes"], body["download_bytes"], body["over_quota_bytes"]) == (1, 2, 3)


def test_unencoded_plus_in_offset_is_accepted(api):
    client, keys = api
    r = client.get("/v1/subscribers/alice/usage?from=2024-03-10T00:00:00+01:00"
                   "&to=2024-03-11T00:00:00+01:00",
                   headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 200, r.text
    assert r.json()["billable_bytes"] == 400_001_000


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2024-03-10T00:00:00"}, "Input should have timezone info"),
        ({"to": "2024-03-10"}, "Input should have timezone info"),
        ({"from": "yesterday"}, "Input should be a valid datetime"),
        ({"from": "2024-03-11T00:00:00Z", "to": "2024-03-11T00:00:00Z"},
         "'from' must be before 'to'"),
        ({"from": "2024-03-12T00:00:00Z", "to": "2024-03-11T00:00:00Z"},
         "'from' must be before 'to'"),
        # 'from' defaults to the cycle's start, which is after this 'to'
        ({"to": "2024-02-01T00:00:00Z"}, "'from' (2024-02-29T23:00:00+00:00) must be before"),
        ({"granularity": "week"}, "Input should be 'hour' or 'day'"),
    ],
)
def test_bad_usage_params_are_422(api, params, message):
    client, keys = api
    r = get(client, keys["acme"], "/v1/subscribers/alice/usage", **params)
    assert r.status_code == 422, r.text
    assert any(message in e["msg"] for e in r.json()["detail"]), r.json()


# --- cycle ----------------------------------------------------------------------------


def test_cycle_over_quota(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/alice/cycle").json()
    assert body == {
        "username": "alice",
        "plan_id": "small",
        "currency": "EUR",
        "start": body["start"],
        "end": body["end"],
        "start_date": "2024-03-01",
        "end_date": "2024-04-01",
        "monthly_fee": "10.00",
        "quota_counts": "total",
        "quota_bytes": 500_000_000,
        "used_bytes": 705_336_341,
        "remaining_bytes": 0,
        "over_quota_bytes": 205_336_341,
        "overage_charge": "0.31",
        "overage_charge_exact": "0.3080045115",
        "after_quota": {"overage_per_gb": "1.50", "throttle": None},
    }
    assert ts(body["start"]) == ts("2024-02-29T23:00Z")
    assert ts(body["end"]) == ts("2024-03-31T22:00Z")


def test_cycle_with_quota_left_and_own_anchor_day(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/subscribers/carol/cycle").json()
    assert (body["start_date"], body["end_date"]) == ("2024-03-15", "2024-04-15")
    assert (body["used_bytes"], body["remaining_bytes"], body["over_quota_bytes"]) == (
        100, 499_999_900, 0)
    assert (body["overage_charge"], body["overage_charge_exact"]) == ("0.00", "0")


def test_cycle_unlimited_and_throttle_plans(api):
    client, keys = api
    bob = get(client, keys["acme"], "/v1/subscribers/bob/cycle").json()
    assert (bob["quota_bytes"], bob["remaining_bytes"], bob["after_quota"]) == (None, None,
                                                                               None)
    dave = get(client, keys["acme"], "/v1/subscribers/dave/cycle").json()
    assert dave["after_quota"] == {"overage_per_gb": None, "throttle": "2M/2M"}
    assert (dave["quota_bytes"], dave["remaining_bytes"], dave["quota_counts"]) == (
        100_000_000_000, 100_000_000_000, "download")


# --- tenancy and roles ----------------------------------------------------------------


def test_another_tenants_subscriber_is_404(api):
    client, keys = api
    for path in ("/v1/subscribers/carol/usage", "/v1/subscribers/carol/cycle"):
        r = get(client, keys["beta"], path)
        assert r.status_code == 404 and r.json() == {"detail": "subscriber not found"}
    # the same username in each tenant: each key sees only its own tenant's alice
    beta = get(client, keys["beta"], "/v1/subscribers/alice/usage").json()
    acme = get(client, keys["acme"], "/v1/subscribers/alice/usage").json()
    assert beta["billable_bytes"] == 3 and acme["billable_bytes"] == 705_336_341


def test_customer_sees_only_itself(api):
    client, keys = api
    r = get(client, keys["carol"], "/v1/subscribers/carol/usage")
    assert r.status_code == 200 and r.json()["billable_bytes"] == 100
    assert get(client, keys["carol"], "/v1/subscribers/carol/cycle").status_code == 200
    for other in ("alice", "bob", "nobody"):
        for what in ("usage", "cycle"):
            r = get(client, keys["carol"], f"/v1/subscribers/{other}/{what}")
            assert r.status_code == 404, (other, what)
    ids = [s["session_id"] for s in get(client, keys["carol"], "/v1/sessions").json()["items"]]
    assert ids == ["C1", "C0"]
    assert get(client, keys["carol"], "/v1/sessions", username="alice").json() == {
        "items": [], "next_cursor": None}


def test_requests_run_as_the_restricted_role(api, world):
    client, keys = api
    pool = client.app.state.pool
    with pool.connection() as conn, tenant_transaction(conn, "acme"):
        user, superuser, bypass = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user").fetchone()
        assert (user, superuser, bypass) == ("ispstream_api", False, False)
        owner = conn.execute("SELECT tableowner FROM pg_tables "
                             "WHERE tablename = 'usage_rated'").fetchone()[0]
        assert owner != user
        assert conn.execute("SELECT DISTINCT tenant_id FROM usage_rated").fetchall() == [
            ("acme",)]
    # Prove the real routes read under RLS: a policy that only binds the restricted role
    # hides a row. The owner would still see it.
    dsn, _ = world
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE POLICY hide_marked ON usage_rated AS RESTRICTIVE "
                     "TO ispstream_api USING (NOT ('hidden' = ANY (flags)))")
    seed(dsn, rated=[("acme", "h1", "2024-03-13T00:00Z", "alice", "2024-03-01",
                      1, 1, 2, 0, 0, "5", ["hidden"])], sessions=[])
    body = get(client, keys["acme"], "/v1/subscribers/alice/usage").json()
    assert {k: body[k] for k in ALICE_CYCLE} == ALICE_CYCLE
    assert get(client, keys["acme"], "/v1/subscribers/alice/cycle").json()[
        "used_bytes"] == ALICE_CYCLE["billable_bytes"]


# --- sessions -------------------------------------------------------------------------


def session_ids(client, key, **params) -> list[str]:
    r = get(client, key, "/v1/sessions", **params)
    assert r.status_code == 200, r.text
    return [s["session_id"] for s in r.json()["items"]]


def test_sessions_newest_first_with_keyset_pages(api):
    client, keys = api
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = get(client, keys["acme"], "/v1/sessions", **params).json()
        seen += [s["session_id"] for s in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # C1 and A2 started at the same instant: ties are broken by (nas_id, session_id)
    assert seen == ["B1", "C1", "A2", "A1", "C0"] and pages == 3
    assert session_ids(client, keys["acme"]) == seen


def test_session_fields_and_filters(api):
    client, keys = api
    body = get(client, keys["acme"], "/v1/sessions", username="alice").json()
    assert body["items"] == [
        {"nas_id": "bng-1", "session_id": "A2", "username": "alice", "state": "open",
         "close_reason": None, "started_at": body["items"][0]["started_at"],
         "updated_at": body["items"][0]["updated_at"], "stopped_at": None,
         "upload_bytes": 5_000_000_000, "download_bytes": 7_000_000_001,
         "framed_ip": "10.0.0.1"},
        {"nas_id": "bng-1", "session_id": "A1", "username": "alice", "state": "closed",
         "close_reason": "User-Request", "started_at": body["items"][1]["started_at"],
         "updated_at": body["items"][1]["updated_at"],
         "stopped_at": body["items"][1]["stopped_at"], "upload_bytes": 100,
         "download_bytes": 200, "framed_ip": "10.0.0.1"},
    ]
    assert ts(body["items"][0]["started_at"]) == ts("2024-03-12T08:00Z")
    assert ts(body["items"][1]["stopped_at"]) == ts("2024-03-10T09:00Z")
    assert session_ids(client, keys["acme"], open="true") == ["C1", "A2"]
    assert session_ids(client, keys["acme"], open="false") == ["B1", "A1", "C0"]
    assert session_ids(client, keys["acme"], username="carol", open="true") == ["C1"]


def test_sessions_are_tenant_isolated(api):
    client, keys = api
    assert session_ids(client, keys["beta"]) == ["X1"]
    assert session_ids(client, keys["beta"], username="carol") == []
    assert "X1" not in session_ids(client, keys["acme"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 501}, "less than or equal to 500"),
        ({"open": "maybe"}, "Input should be a valid boolean"),
        ({"cursor": "not-a-cursor"}, "invalid cursor"),
        ({"username": ""}, "at least 1 character"),
    ],
)
def test_bad_session_params_are_422(api, params, message):
    client, keys = api
    r = get(client, keys["acme"], "/v1/sessions", **params)
    assert r.status_code == 422, r.text
    assert any(message in e["msg"] for e in r.json()["detail"]), r.json()


# --- health ---------------------------------------------------------------------------


def test_healthz_503_when_kafka_is_not_configured(pg_dsn):
    with api_client(pg_dsn) as client:
        r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert r.json()["checks"]["database"] == {"status": "ok", "detail": None}
    assert r.json()["checks"]["kafka"]["status"] == "not configured"


def test_healthz_503_when_kafka_is_unreachable(pg_dsn):
    unreachable = f"127.0.0.1:{free_port()}"
    with api_client(pg_dsn, kafka=unreachable) as client:
        r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["checks"]["kafka"] == {"status": "error", "detail": "Kafka unreachable"}


def test_healthz_503_when_the_database_is_down(broker):
    dead = f"postgresql://ispstream:ispstream@127.0.0.1:{free_port()}/nothing"
    with api_client(dead, kafka=broker.bootstrap) as client:
        r = client.get("/healthz")
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == {"status": "error",
                                                  "detail": "database unavailable"}
        assert r.json()["checks"]["kafka"]["status"] == "ok"
        # and an authenticated endpoint says so too, without a stack trace
        r = client.get("/v1/sessions", headers={"Authorization": "Bearer isk_x"})
        assert r.status_code == 503


def test_healthz_200_with_the_broker(pg_dsn, broker):
    with api_client(pg_dsn, kafka=broker.bootstrap) as client:
        r = client.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {
        "database": {"status": "ok", "detail": None},
        "kafka": {"status": "ok", "detail": "1 broker(s)"}}}


def test_openapi_documents_the_endpoints(pg_dsn):
    with api_client(pg_dsn) as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    # Exactly these: a route added without being meant (or documented) fails here.
    assert set(spec["paths"]) == {
        "/healthz", "/v1/subscribers/{username}/usage", "/v1/subscribers/{username}/cycle",
        "/v1/sessions", "/v1/subscribers/{username}/actions",
        "/v1/subscribers/{username}/enforcement", "/v1/actions", "/v1/radius/authorize",
        "/v1/alerts", "/v1/alerts/{alert_id}", "/v1/alerts/{alert_id}/ack",
        "/v1/alertmanager/webhook", "/v1/devices/{device_id}/interfaces",
        "/v1/olts/{olt_id}/pon-ports", "/v1/onus/{onu}/optical",
        "/v1/subscribers/{username}/line", "/v1/stream/alerts"}
    usage = spec["components"]["schemas"]["UsagePublic"]["properties"]
    assert "from" in usage and "charge_exact" in usage


# --- a real `ispstream api` process -----------------------------------------------------


def test_real_api_process(world, broker, tmp_path):
    dsn, keys = world
    now = datetime.now(UTC)
    cycle = cycle_at(now, 1, "Europe/Berlin")
    seed(dsn, rated=[("acme", "live", (now - timedelta(minutes=1)).isoformat(), "bob",
                      cycle.start_date.isoformat(), 11, 22, 33, 0, 0, "0", [])], sessions=[])
    proc, base = start_api(dsn, tmp_path, broker.bootstrap, topic_prefix="")
    try:
        health = wait_healthy(base, timeout=30)
        assert health.json()["checks"]["kafka"]["status"] == "ok"
        auth = {"Authorization": f"Bearer {keys['acme']}"}
        r = httpx.get(f"{base}/v1/subscribers/bob/usage", headers=auth, timeout=5,
                      params={"from": (now - timedelta(hours=1)).isoformat(),
                              "to": (now + timedelta(hours=1)).isoformat()})
        assert r.status_code == 200, r.text
        assert (r.json()["upload_bytes"], r.json()["download_bytes"],
                r.json()["billable_bytes"], r.json()["charge"]) == (11, 22, 33, "0.00")
        r = httpx.get(f"{base}/v1/subscribers/bob/cycle", headers=auth, timeout=5)
        assert r.json()["used_bytes"] == 33 and r.json()["quota_bytes"] is None
        r = httpx.get(f"{base}/v1/subscribers/alice/usage", timeout=5)
        assert r.status_code == 401
        r = httpx.get(f"{base}/v1/subscribers/alice/usage", timeout=5,
                      headers={"Authorization": f"Bearer {keys['beta']}"})
        assert r.status_code == 200 and r.json()["currency"] == "JPY"
        r = httpx.get(f"{base}/v1/subscribers/carol/usage", timeout=5,
                      headers={"Authorization": f"Bearer {keys['beta']}"})
        assert r.status_code == 404
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
    finally:
        code = proc.stop()
    assert_clean_exit(proc, code)


# --- the connection pool ----------------------------------------------------------------


def test_pooled_connections_carry_no_tenant_or_role(world):
    dsn, _ = world
    pool = ConnectionPool(dsn, max_size=1)
    try:
        with pool.connection() as conn, tenant_transaction(conn, "acme"):
            assert conn.execute("SELECT count(*) FROM subscribers").fetchone() == (4,)
        with pool.connection() as again:
            assert again is conn  # the same connection, reused
            user, tenant = again.execute(
                "SELECT current_user, current_setting('ispstream.tenant_id', true)"
            ).fetchone()
            assert user != "ispstream_api" and tenant in (None, "")
            with api_role_transaction(again):  # no tenant set: RLS shows nothing
                assert again.execute("SELECT count(*) FROM subscribers").fetchone() == (0,)
    finally:
        pool.close()


def test_pool_bounds_concurrency_and_recovers_connections(world):
    dsn, _ = world
    pool = ConnectionPool(dsn, max_size=2, timeout=10)
    try:
        def work(i: int) -> int:
            tenant = "acme" if i % 2 else "beta"
            with pool.connection() as conn, tenant_transaction(conn, tenant):
                conn.execute("SELECT pg_sleep(0.05)")
                return conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]

        with ThreadPoolExecutor(8) as ex:
            counts = list(ex.map(work, range(16)))
        assert counts == [1 if i % 2 == 0 else 4 for i in range(16)]
        with psycopg.connect(dsn) as admin:
            (n,) = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                 "application_name = 'ispstream-api' AND "
                                 "datname = current_database()").fetchone()
        assert n <= 2
        # a connection given back mid-transaction is rolled back; a closed one is dropped
        conn = pool.getconn()
        conn.execute("BEGIN")
        conn.execute("SET LOCAL ROLE ispstream_api")
        pool.putconn(conn)
        with pool.connection() as conn2:
            assert conn2.execute("SELECT current_user").fetchone() != ("ispstream_api",)
            conn2.close()
        with pool.connection() as conn3:
            assert not conn3.closed
        with pytest.raises(DatabaseUnavailable):
            held = [pool.getconn(), pool.getconn()]
            try:
                pool.getconn(timeout=0.2)
            finally:
                for c in held:
                    pool.putconn(c)
    finally:
        pool.close()
