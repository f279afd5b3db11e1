"""What the endpoints answer: access rules, windows, cycles and money formatting.

Functions here take a connection already inside ``tenant_transaction`` and the caller's
``Principal``; they raise ``NotFound`` or ``QueryError``, which the app maps to 404 and
422. Pricing itself is not done here: charges were rated by the usage flow; the API only
sums them and rounds the sum once with ``rating.money.round_money``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable
from zoneinfo import ZoneInfo

import psycopg

from ispstream.apikeys import Principal
from ispstream.contracts import ActionEvent
from portal_api import queries
from portal_api.models import (
    ActionCreate,
    ActionPagePublic,
    ActionPublic,
    AfterQuotaPublic,
    CyclePublic,
    EnforcementPublic,
    SessionPagePublic,
    SessionPublic,
    UsageBucketPublic,
    UsagePublic,
)
from portal_api.radius_replies import Attributes, RadiusReplies, parse_rate
from rating.cycles import cycle_at
from rating.money import round_money

log = logging.getLogger(__name__)

_HOUR = timedelta(hours=1)


class NotFound(Exception):
    """The object does not exist for this caller (also: another tenant's, or for a
    customer, anyone else's): always a 404, never a 403."""


class QueryError(Exception):
    """A query parameter is unacceptable (422) for a reason only known after lookup."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def plain(amount: Decimal) -> str:
    """A decimal as plain digits (no exponent, no trailing fractional zeros)."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def money(amount: Decimal, currency: str) -> tuple[str, str]:
    """(rounded once to the currency's minor unit, exact) as strings."""
    return format(round_money(amount, currency), "f"), plain(amount)


def _subscriber(conn: psycopg.Connection, principal: Principal,
                username: str) -> queries.Subscriber:
    # A customer's identity comes from the key only: any other username is "not found".
    if principal.role == "customer" and username != principal.subscriber:
        raise NotFound("subscriber not found")
    sub = queries.subscriber(conn, principal.tenant_id, username)
    if sub is None:
        raise NotFound("subscriber not found")
    return sub


def _totals_fields(t: queries.Totals, currency: str) -> dict:
    charge, exact = money(t.charge, currency)
    return {
        "upload_bytes": t.upload_bytes,
        "download_bytes": t.download_bytes,
        "billable_bytes": t.billable_bytes,
        "zero_rated_bytes": t.zero_rated_bytes,
        "over_quota_bytes": t.over_quota_bytes,
        "charge": charge,
        "charge_exact": exact,
    }


def usage(conn: psycopg.Connection, principal: Principal, username: str,
          start: datetime | None, end: datetime | None, granularity: str | None,
          now: datetime) -> UsagePublic:
    """Usage of ``username`` over ``[start, end)``; a missing bound defaults to the
    current cycle's; with ``granularity`` also an hour or day (tenant zone) series."""
    sub = _subscriber(conn, principal, username)
    if start is None or end is None:
        cycle = cycle_at(now, sub.cycle_anchor_day, sub.timezone)
        start = start or cycle.start
        end = end or cycle.end
    if start >= end:
        raise QueryError("from", f"'from' ({start.isoformat()}) must be before 'to' "
                                 f"({end.isoformat()}); a missing bound defaults to the "
                                 "current billing cycle's")
    totals = queries.usage_totals(conn, principal.tenant_id, username, start, end)
    series = None
    if granularity == "hour":
        series = [
            UsageBucketPublic(start=hour, end=hour + _HOUR,
                              **_totals_fields(t, sub.currency))
            for hour, t in queries.usage_by_hour(conn, principal.tenant_id, username,
                                                 start, end)
        ]
    elif granularity == "day":
        zone = ZoneInfo(sub.timezone)
        series = [
            UsageBucketPublic(start=day_start.astimezone(zone), end=day_end.astimezone(zone),
                              **_totals_fields(t, sub.currency))
            for day_start, day_end, t in queries.usage_by_day(
                conn, principal.tenant_id, username, start, end, sub.timezone)
        ]
    return UsagePublic(
        username=username,
        currency=sub.currency,
        from_=start.astimezone(timezone.utc),
        to=end.astimezone(timezone.utc),
        granularity=granularity,
        series=series,
        **_totals_fields(totals, sub.currency),
    )


def cycle(conn: psycopg.Connection, principal: Principal, username: str,
          now: datetime) -> CyclePublic:
    """The current cycle of ``username`` (at ``now``) with quota use and overage so far."""
    sub = _subscriber(conn, principal, username)
    c = cycle_at(now, sub.cycle_anchor_day, sub.timezone)
    t = queries.cycle_totals(conn, principal.tenant_id, username, c.start_date)
    overage, overage_exact = money(t.charge, sub.currency)
    after = None
    if sub.overage_per_gb is not None or sub.throttle_rate is not None:
        after = AfterQuotaPublic(
            overage_per_gb=None if sub.overage_per_gb is None
            else format(sub.overage_per_gb, "f"),
            throttle=sub.throttle_rate,
        )
    return CyclePublic(
        username=username,
        plan_id=sub.plan_id,
        currency=sub.currency,
        start=c.start,
        end=c.end,
        start_date=c.start_date,
        end_date=c.end_date,
        monthly_fee=format(sub.monthly_fee, "f"),
        quota_counts=sub.quota_counts,
        quota_bytes=sub.quota_bytes,
        used_bytes=t.billable_bytes,
        remaining_bytes=None if sub.quota_bytes is None
        else max(sub.quota_bytes - t.billable_bytes, 0),
        over_quota_bytes=t.over_quota_bytes,
        overage_charge=overage,
        overage_charge_exact=overage_exact,
        after_quota=after,
    )


def encode_keyset(at: datetime, *ids: str) -> str:
    """An opaque page cursor for the position after the row with sort key (at, *ids)."""
    raw = json.dumps([at.isoformat(), *ids])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_keyset(cursor: str, ids: int) -> tuple:
    """The sort key (aware datetime, then ``ids`` strings) of an ``encode_keyset`` cursor;
    ``QueryError`` when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, *rest = json.loads(raw)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None or len(rest) != ids or not all(isinstance(x, str) for x in rest):
            raise ValueError
        return (at, *rest)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise QueryError("cursor", "invalid cursor (use next_cursor from the previous page)") \
            from None


def sessions(conn: psycopg.Connection, principal: Principal, *, username: str | None,
             open_: bool | None, limit: int, cursor: str | None) -> SessionPagePublic:
    """A page of sessions, newest first. Customers only ever see their own."""
    after = decode_keyset(cursor, 2) if cursor else None
    if principal.role == "customer":
        if username is not None and username != principal.subscriber:
            return SessionPagePublic(items=[], next_cursor=None)
        username = principal.subscriber
    rows = queries.sessions(conn, principal.tenant_id, username=username, open_=open_,
                            limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPagePublic(
        items=[SessionPublic(**r) for r in rows],
        next_cursor=encode_keyset(rows[-1]["started_at"], rows[-1]["nas_id"],
                                  rows[-1]["session_id"]) if more else None,
    )



# --- enforcement ----------------------------------------------------------------------


def _action_public(row: dict, principal: Principal) -> ActionPublic:
    # Which API key asked is operator business, not the customer's.
    if principal.role == "customer":
        row = {**row, "requested_by": None}
    return ActionPublic(**row)


def enforcement(conn: psycopg.Connection, principal: Principal, username: str,
                limit: int) -> EnforcementPublic:
    """The enforced state of ``username`` (normal when none) and its newest actions."""
    _subscriber(conn, principal, username)
    row = queries.enforcement_state(conn, principal.tenant_id, username) or {
        "state": "normal", "rate": None, "reason": None, "source": None,
        "intent_id": None, "since": None, "until": None}
    history = queries.actions(conn, principal.tenant_id, username=username, limit=limit)
    return EnforcementPublic(username=username, **row,
                             history=[_action_public(a, principal) for a in history])


def request_action(conn: psycopg.Connection, principal: Principal, username: str,
                   body: ActionCreate, now: datetime,
                   publish: Callable[[str, bytes], None]) -> ActionEvent:
    """Record an operator's action (``actions`` row, audit entry) and publish it.

    ``publish(key, value)`` runs last, inside the caller's transaction: when Kafka does
    not confirm the event it raises and the transaction rolls back, so nothing is
    recorded. The key is ``tenant/username``: one subscriber's actions stay in order.
    """
    _subscriber(conn, principal, username)
    event = ActionEvent(
        intent_id=uuid.uuid4().hex,
        tenant_id=principal.tenant_id,
        username=username,
        kind=body.action,
        rate=body.rate,
        source="operator",
        reason=body.reason,
        requested_by=principal.key_id,
        at=now.timestamp(),
    )
    queries.insert_action(conn, event, now)
    queries.insert_audit(conn, principal.tenant_id, principal.key_id,
                         f"action.{body.action}", username,
                         {"intent_id": event.intent_id, "rate": body.rate,
                          "reason": body.reason})
    publish(f"{event.tenant_id}/{event.username}", event.model_dump_json().encode())
    return event


def actions(conn: psycopg.Connection, principal: Principal, *, state: str | None,
            since: datetime | None, limit: int, cursor: str | None) -> ActionPagePublic:
    """A page of the tenant's actions, newest first."""
    after = decode_keyset(cursor, 1) if cursor else None
    rows = queries.actions(conn, principal.tenant_id, state=state, since=since,
                           limit=limit + 1, after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    return ActionPagePublic(
        items=[_action_public(r, principal) for r in rows],
        next_cursor=encode_keyset(rows[-1]["at"], rows[-1]["intent_id"]) if more else None,
    )


# --- RADIUS authorization -------------------------------------------------------------


@dataclass(frozen=True)
class RadiusAnswer:
    """``reject``: refuse the Access-Request; otherwise accept with ``attributes`` (none:
    FreeRADIUS carries on with its own configuration). ``nas_known`` False: the tenant
    has no NAS with that IP."""

    nas_known: bool
    reject: bool = False
    attributes: Attributes | None = None


def radius_authorize(conn: psycopg.Connection, principal: Principal, username: str,
                     nas_ip: str, now: datetime, replies: RadiusReplies) -> RadiusAnswer:
    """What to answer FreeRADIUS for ``username`` re-authenticating on ``nas_ip``."""
    view = queries.radius_view(conn, principal.tenant_id, nas_ip, username, now)
    if view is None:
        return RadiusAnswer(nas_known=False)
    if view.state == "throttled":
        text = view.rate or view.plan_throttle_rate
        try:
            rate = parse_rate(text) if text else None
        except ValueError:
            rate = None
        if rate is None:
            log.warning("subscriber %s is throttled with no usable rate (%r): "
                        "no rate attribute sent", username, text)
            return RadiusAnswer(nas_known=True)
        attrs = replies.throttle(view.vendor, rate)
        if not attrs:
            log.warning("no throttle attribute for NAS vendor %s: subscriber %s "
                        "re-authenticates without its throttle", view.vendor, username)
        return RadiusAnswer(nas_known=True, attributes=attrs)
    if view.state == "suspended":
        if view.walled_garden:
            attrs = replies.walled_garden(view.vendor, view.walled_garden)
            if attrs:
                return RadiusAnswer(nas_known=True, attributes=attrs)
            log.warning("no walled-garden attribute for NAS vendor %s: rejecting "
                        "suspended subscriber %s", view.vendor, username)
        return RadiusAnswer(nas_known=True, reject=True)
    return RadiusAnswer(nas_known=True)
