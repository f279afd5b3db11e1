"""Request dependencies, as ``Annotated`` aliases so route signatures stay short.

- ``ConnDep``: a pooled connection for this request (autocommit; work runs inside
  ``tenant_transaction``).
- ``Reader``: the authenticated caller, allowed to read subscriber data (any role but
  radius; customers are further limited to their own subscriber by the services).
- ``Operator``: an operator or admin (enforcement actions).
- ``EnforcementReader``: an operator, admin or customer (their own subscriber only).
- ``RadiusCaller``: a FreeRADIUS server (role radius); 403 for any other or no key.
- ``PublisherDep``: the app's Kafka publisher; ``RadiusRepliesDep``: the RADIUS reply
  attribute mapping.
- ``NowDep``: the app's clock (tests pass a fixed one to ``create_app``).
- ``UsageWindowDep``: the validated ``from`` / ``to`` / ``granularity`` query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Callable, Iterator, Literal

import psycopg
from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BeforeValidator

from ispstream.apikeys import ROLES, Principal, authenticate
from ispstream.settings import Settings
from portal_api.db import ConnectionPool, DatabaseUnavailable, api_role_transaction
from portal_api.publisher import Publisher
from portal_api.radius_replies import RadiusReplies


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_pool(request: Request) -> ConnectionPool:
    """The app's connection pool."""
    return request.app.state.pool


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[ConnectionPool, Depends(get_pool)]


def get_conn(pool: PoolDep) -> Iterator[psycopg.Connection]:
    """Borrow a connection for the request; 503 when the database is unavailable."""
    try:
        conn = pool.getconn()
    except DatabaseUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    try:
        yield conn
    finally:
        pool.putconn(conn)


ConnDep = Annotated[psycopg.Connection, Depends(get_conn)]

_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="An API key: `Authorization: Bearer isk_<id>_<secret>`")


def bearer_key(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token of the request; 401 (before any database work) when missing."""
    if creds is None or not creds.credentials:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key (Authorization: "
                            "Bearer <key>)", headers={"WWW-Authenticate": "Bearer"})
    return creds.credentials


def get_principal(key: Annotated[str, Depends(bearer_key)], conn: ConnDep) -> Principal:
    """The caller behind the API key; 401 when the key is unknown or revoked."""
    with api_role_transaction(conn):
        principal = authenticate(conn, key)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return principal


def require_roles(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency admitting only callers with one of ``roles`` (403 otherwise)."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"role {principal.role} may not use this endpoint")
        return principal

    return check


Reader = Annotated[Principal, Depends(require_roles(
    *(r for r in ROLES if r != "radius")))]
Operator = Annotated[Principal, Depends(require_roles("operator", "admin"))]
EnforcementReader = Annotated[Principal, Depends(require_roles("operator", "admin",
                                                               "customer"))]


def radius_caller(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)], conn: ConnDep,
) -> Principal:
    """A key of role radius. Anything else is a 403, never a 401: FreeRADIUS's rest
    module turns a 401 into an Access-Reject, and a mistyped key must not reject every
    subscriber (a 403 is its ``userlock``, which the shipped policy treats like
    ispstream being unreachable)."""
    if creds is None or not creds.credentials:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing API key (Authorization: "
                            "Bearer <key of role radius>)")
    with api_role_transaction(conn):
        principal = authenticate(conn, creds.credentials)
    if principal is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")
    if principal.role != "radius":
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"role {principal.role} may not use this endpoint")
    return principal


RadiusCaller = Annotated[Principal, Depends(radius_caller)]


def get_publisher(request: Request) -> Publisher:
    """The app's Kafka publisher (its ``publish`` raises ``PublishError``, a 503, when
    Kafka is not configured or does not confirm)."""
    return request.app.state.publisher


PublisherDep = Annotated[Publisher, Depends(get_publisher)]


def get_radius_replies(request: Request) -> RadiusReplies:
    """The RADIUS reply attribute mapping the app was created with."""
    return request.app.state.radius_replies


RadiusRepliesDep = Annotated[RadiusReplies, Depends(get_radius_replies)]


def get_now(request: Request) -> datetime:
    """The current instant from the app's clock (aware, UTC)."""
    return request.app.state.clock()


NowDep = Annotated[datetime, Depends(get_now)]


_SPACED_OFFSET = re.compile(r"^(.*\d) (\d\d(?::?\d\d)?)$")


def _restore_plus(value: Any) -> Any:
    # An unencoded "+01:00" in a query string arrives as " 01:00": put the "+" back.
    if isinstance(value, str):
        m = _SPACED_OFFSET.match(value)
        if m:
            return f"{m.group(1)}+{m.group(2)}"
    return value


QueryInstant = Annotated[AwareDatetime, BeforeValidator(_restore_plus)]


@dataclass(frozen=True)
class UsageWindow:
    """``[start, end)`` (either may be None: the current cycle's bound) and granularity."""

    start: datetime | None
    end: datetime | None
    granularity: Literal["hour", "day"] | None


def usage_window(
    from_: Annotated[QueryInstant | None, Query(
        alias="from", description="ISO-8601 instant with offset, inclusive; default: start "
        "of the current billing cycle", examples=["2024-03-01T00:00:00+01:00"])] = None,
    to: Annotated[QueryInstant | None, Query(
        description="ISO-8601 instant with offset, exclusive; default: end of the current "
        "billing cycle", examples=["2024-04-01T00:00:00+02:00"])] = None,
    granularity: Annotated[Literal["hour", "day"] | None, Query(
        description="add a series: `hour` (UTC hours) or `day` (the tenant's days)")] = None,
) -> UsageWindow:
    """Validate the window (``from`` before ``to``) before any database work."""
    if from_ is not None and to is not None and from_ >= to:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("query", "from"), "input": from_.isoformat(),
            "msg": "'from' must be before 'to'",
        }])
    return UsageWindow(from_, to, granularity)


UsageWindowDep = Annotated[UsageWindow, Depends(usage_window)]
