"""The API's SQL. Every function expects ``conn`` inside ``tenant_transaction``.

Row-level security already limits every table to the request's tenant; the queries
filter on ``tenant_id`` as well, so indexes lead with it and intent is explicit. Only
core PostgreSQL functions are used (no TimescaleDB), so the same queries run with or
without the extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb

from ispstream.contracts import ActionEvent

_SUMS = """coalesce(sum(upload_bytes), 0), coalesce(sum(download_bytes), 0),
           coalesce(sum(billable_bytes), 0), coalesce(sum(zero_rated_bytes), 0),
           coalesce(sum(over_quota_bytes), 0), coalesce(sum(charge), 0)"""


@dataclass(frozen=True)
class Totals:
    """Summed usage (exact integers and an exact, unrounded charge)."""

    upload_bytes: int
    download_bytes: int
    billable_bytes: int
    zero_rated_bytes: int
    over_quota_bytes: int
    charge: Decimal

    @classmethod
    def from_row(cls, row: tuple) -> "Totals":
        up, down, billable, zero, over, charge = row
        return cls(int(up), int(down), int(billable), int(zero), int(over), Decimal(charge))


@dataclass(frozen=True)
class Subscriber:
    """A subscriber with their plan and their tenant's zone and currency."""

    username: str
    plan_id: str
    cycle_anchor_day: int
    timezone: str
    currency: str
    monthly_fee: Decimal
    quota_bytes: int | None
    quota_counts: str
    overage_per_gb: Decimal | None
    throttle_rate: str | None


def subscriber(conn: psycopg.Connection, tenant_id: str, username: str) -> Subscriber | None:
    """The subscriber ``username`` of the tenant, or None."""
    row = conn.execute(
        """SELECT s.username, s.plan_id, s.cycle_anchor_day, t.timezone, t.currency,
                  p.monthly_fee, p.quota_bytes, p.quota_counts, p.overage_per_gb,
                  p.throttle_rate
           FROM subscribers s
           JOIN tenants t ON t.id = s.tenant_id
           JOIN plans p ON p.tenant_id = s.tenant_id AND p.id = s.plan_id
           WHERE s.tenant_id = %s AND s.username = %s""",
        (tenant_id, username),
    ).fetchone()
    if row is None:
        return None
    return Subscriber(row[0], row[1], int(row[2]), row[3], row[4].strip(), row[5], row[6],
                      row[7], row[8], row[9])


def usage_totals(conn: psycopg.Connection, tenant_id: str, username: str,
                 start: datetime, end: datetime) -> Totals:
    """Sums over the rated rows with ``ts`` in ``[start, end)``."""
    row = conn.execute(
        f"""SELECT {_SUMS} FROM usage_rated
            WHERE tenant_id = %s AND username = %s AND ts >= %s AND ts < %s""",
        (tenant_id, username, start, end),
    ).fetchone()
    return Totals.from_row(row)


def usage_by_hour(conn: psycopg.Connection, tenant_id: str, username: str,
                  start: datetime, end: datetime) -> list[tuple[datetime, Totals]]:
    """Hourly rollup buckets (UTC hours) overlapping ``[start, end)``, oldest first."""
    rows = conn.execute(
        """SELECT hour, upload_bytes, download_bytes, billable_bytes, zero_rated_bytes,
                  over_quota_bytes, charge
           FROM usage_hourly
           WHERE tenant_id = %s AND username = %s
             AND hour >= date_bin('1 hour', %s::timestamptz,
                                  timestamptz '2000-01-01 00:00:00+00')
             AND hour < %s
           ORDER BY hour""",
        (tenant_id, username, start, end),
    ).fetchall()
    return [(r[0], Totals.from_row(r[1:])) for r in rows]


def usage_by_day(conn: psycopg.Connection, tenant_id: str, username: str, start: datetime,
                 end: datetime, tz: str) -> list[tuple[datetime, datetime, Totals]]:
    """Rated rows in ``[start, end)`` summed per day of the tenant's zone ``tz``.

    Returns (local midnight, next local midnight, totals), oldest first.
    """
    rows = conn.execute(
        f"""SELECT day::timestamp AT TIME ZONE %(tz)s,
                   (day + 1)::timestamp AT TIME ZONE %(tz)s, sums.*
            FROM (SELECT (date_trunc('day', ts AT TIME ZONE %(tz)s))::date AS day, {_SUMS}
                  FROM usage_rated
                  WHERE tenant_id = %(tenant)s AND username = %(user)s
                    AND ts >= %(start)s AND ts < %(end)s
                  GROUP BY 1) sums
            ORDER BY day""",
        {"tz": tz, "tenant": tenant_id, "user": username, "start": start, "end": end},
    ).fetchall()
    return [(r[0], r[1], Totals.from_row(r[3:])) for r in rows]


# (days before the cycle's start date, length) of the rows a cycle can hold: a margin
# for zone offsets (up to 14 h) on both sides of at most 31 days.
CYCLE_WINDOW = (timedelta(days=1), timedelta(days=33))


def cycle_totals(conn: psycopg.Connection, tenant_id: str, username: str,
                 cycle_start: date) -> Totals:
    """Sums over the rated rows the rater assigned to the cycle starting ``cycle_start``.

    The rows are found through the subscriber's time index: a row of the cycle ends
    (``ts``) within the cycle, which starts on ``cycle_start`` in the tenant's zone
    (within 14 h of that date's UTC midnight) and lasts at most 31 days, so
    ``CYCLE_WINDOW`` around the date holds all of them, whatever zone or anchor day
    the rater used; ``cycle_start`` then picks exactly the cycle's rows."""
    since = datetime.combine(cycle_start, time(), timezone.utc) - CYCLE_WINDOW[0]
    row = conn.execute(
        f"""SELECT {_SUMS} FROM usage_rated
            WHERE tenant_id = %s AND username = %s AND ts >= %s AND ts < %s
              AND cycle_start = %s""",
        (tenant_id, username, since, since + CYCLE_WINDOW[1], cycle_start),
    ).fetchone()
    return Totals.from_row(row)


SESSION_COLUMNS = ("nas_id", "session_id", "username", "state", "close_reason", "started_at",
                   "updated_at", "stopped_at", "upload_bytes", "download_bytes", "framed_ip")


def sessions(conn: psycopg.Connection, tenant_id: str, *, username: str | None,
             open_: bool | None, limit: int,
             after: tuple[datetime, str, str] | None) -> list[dict]:
    """Sessions newest first (started_at, nas_id, session_id descending), keyset-paged:
    ``after`` is the sort key of the last row of the previous page."""
    where = ["tenant_id = %(tenant)s"]
    if username is not None:
        where.append("username = %(user)s")
    if open_ is True:
        where.append("state = 'open'")
    elif open_ is False:
        where.append("state <> 'open'")
    params: dict = {"tenant": tenant_id, "user": username, "limit": limit}
    if after is not None:
        where.append("(started_at, nas_id, session_id) < (%(a_ts)s, %(a_nas)s, %(a_sid)s)")
        params.update(a_ts=after[0], a_nas=after[1], a_sid=after[2])
    cur = conn.execute(
        f"""SELECT {", ".join(SESSION_COLUMNS)} FROM sessions
            WHERE {" AND ".join(where)}
            ORDER BY started_at DESC, nas_id DESC, session_id DESC
            LIMIT %(limit)s""",
        params,
    )
    return [dict(zip(SESSION_COLUMNS, row)) for row in cur.fetchall()]


# --- enforcement ----------------------------------------------------------------------


@dataclass(frozen=True)
class RadiusView:
    """What RADIUS authorization needs about one subscriber on one NAS."""

    vendor: str
    state: str | None           # None: no enforced state (normal)
    rate: str | None
    plan_throttle_rate: str | None
    walled_garden: str | None


def radius_view(conn: psycopg.Connection, tenant_id: str, nas_ip: str, username: str,
                now: datetime) -> RadiusView | None:
    """The NAS's vendor with the subscriber's enforced state (one indexed query: the NAS
    by its unique IP, then primary-key lookups); None when the tenant has no NAS with
    that IP. A state whose ``until`` has passed counts as none."""
    row = conn.execute(
        """SELECT n.vendor, e.state, e.rate, p.throttle_rate, p.walled_garden
           FROM nas n
           LEFT JOIN enforcement_state e
             ON e.tenant_id = n.tenant_id AND e.username = %(user)s
            AND (e.until IS NULL OR e.until > %(now)s)
           LEFT JOIN subscribers s ON s.tenant_id = n.tenant_id AND s.username = %(user)s
           LEFT JOIN plans p ON p.tenant_id = s.tenant_id AND p.id = s.plan_id
           WHERE n.tenant_id = %(tenant)s AND n.ip = %(ip)s::inet""",
        {"tenant": tenant_id, "ip": nas_ip, "user": username, "now": now},
    ).fetchone()
    return None if row is None else RadiusView(*row)


def subscriber_exists(conn: psycopg.Connection, tenant_id: str, username: str) -> bool:
    """Whether the tenant has subscriber ``username``."""
    return conn.execute(
        "SELECT 1 FROM subscribers WHERE tenant_id = %s AND username = %s",
        (tenant_id, username),
    ).fetchone() is not None


def insert_action(conn: psycopg.Connection, event: ActionEvent, at: datetime) -> None:
    """Record an action (state pending) as requested."""
    conn.execute(
        """INSERT INTO actions (tenant_id, intent_id, username, kind, rate, source, reason,
                                threshold_pct, cycle_start, requested_by, at)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (event.tenant_id, event.intent_id, event.username, event.kind, event.rate,
         event.source, event.reason, event.threshold_pct,
         date.fromisoformat(event.cycle_start) if event.cycle_start else None,
         event.requested_by, at),
    )


def insert_audit(conn: psycopg.Connection, tenant_id: str, api_key_id: str, action: str,
                 target: str, detail: dict) -> None:
    """Append to the audit trail."""
    conn.execute(
        "INSERT INTO audit_log (tenant_id, api_key_id, action, target, detail) "
        "VALUES (%s, %s, %s, %s, %s)",
        (tenant_id, api_key_id, action, target, Jsonb(detail)),
    )


STATE_COLUMNS = ("state", "rate", "reason", "source", "intent_id", "since", "until")


def enforcement_state(conn: psycopg.Connection, tenant_id: str,
                      username: str) -> dict | None:
    """The enforced state row of the subscriber, or None (normal)."""
    row = conn.execute(
        f"""SELECT {", ".join(STATE_COLUMNS)} FROM enforcement_state
            WHERE tenant_id = %s AND username = %s""",
        (tenant_id, username),
    ).fetchone()
    return None if row is None else dict(zip(STATE_COLUMNS, row))


ACTION_COLUMNS = ("intent_id", "username", "kind", "rate", "source", "reason",
                  "threshold_pct", "cycle_start", "requested_by", "at", "state",
                  "created_at", "completed_at")
ATTEMPT_COLUMNS = ("nas_id", "session_id", "request", "state", "error_cause", "attempts",
                   "created_at", "answered_at")


def actions(conn: psycopg.Connection, tenant_id: str, *, username: str | None = None,
            state: str | None = None, since: datetime | None = None, limit: int,
            after: tuple[datetime, str] | None = None) -> list[dict]:
    """Actions newest first (at, intent_id descending), keyset-paged: ``after`` is the
    sort key of the last row of the previous page. Each has its ``attempts``."""
    where = ["tenant_id = %(tenant)s"]
    params: dict = {"tenant": tenant_id, "limit": limit}
    if username is not None:
        where.append("username = %(user)s")
        params["user"] = username
    if state is not None:
        where.append("state = %(state)s")
        params["state"] = state
    if since is not None:
        where.append("at >= %(since)s")
        params["since"] = since
    if after is not None:
        where.append("(at, intent_id) < (%(a_at)s, %(a_id)s)")
        params.update(a_at=after[0], a_id=after[1])
    rows = [dict(zip(ACTION_COLUMNS, r)) for r in conn.execute(
        f"""SELECT {", ".join(ACTION_COLUMNS)} FROM actions
            WHERE {" AND ".join(where)}
            ORDER BY at DESC, intent_id DESC
            LIMIT %(limit)s""",
        params,
    ).fetchall()]
    by_intent: dict[str, list[dict]] = {r["intent_id"]: [] for r in rows}
    if rows:
        for r in conn.execute(
            f"""SELECT intent_id, {", ".join(ATTEMPT_COLUMNS)} FROM action_attempts
                WHERE tenant_id = %s AND intent_id = ANY(%s)
                ORDER BY intent_id, created_at, nas_id, session_id""",
            (tenant_id, list(by_intent)),
        ).fetchall():
            by_intent[r[0]].append(dict(zip(ATTEMPT_COLUMNS, r[1:])))
    for r in rows:
        r["attempts"] = by_intent[r["intent_id"]]
    return rows
