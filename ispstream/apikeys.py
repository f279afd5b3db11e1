"""API keys: ``isk_<id>_<secret>``, stored as SHA-256 of the secret only.

The id (12 hex digits) finds the row; the secret (32 random bytes, URL-safe base64) is
never stored. Keys are looked up through the ``ispstream_authenticate`` SECURITY DEFINER
function, so authentication works as the restricted API role before the tenant is known.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import psycopg

from ispstream.db import connect

log = logging.getLogger(__name__)

Role = Literal["customer", "operator", "analyst", "admin", "radius"]
# radius: a FreeRADIUS server calling the RADIUS authorization endpoint, nothing else.
ROLES: tuple[str, ...] = ("customer", "operator", "analyst", "admin", "radius")
PREFIX = "isk"
_KEY = re.compile(r"^isk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class ApiKeyError(ValueError):
    """A key cannot be created as asked (unknown tenant or subscriber, bad role)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant and role, and for customers their subscriber."""

    key_id: str
    tenant_id: str
    role: str
    subscriber: str | None = None


def hash_secret(secret: str) -> bytes:
    """The stored form of a key's secret part."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_key(key: str) -> tuple[str, str] | None:
    """Split ``isk_<id>_<secret>`` into (id, secret); None when it is not a key."""
    m = _KEY.match(key.strip())
    return (m.group(1), m.group(2)) if m else None


def create_key(dsn: str, tenant: str, role: str, subscriber: str | None = None) -> str:
    """Create a key for ``tenant`` with ``role`` and return it (the only time it is shown).

    Role ``customer`` requires ``subscriber`` (a username of that tenant) and other roles
    take none. Raises ``ApiKeyError`` with a clear message otherwise, or when the tenant
    or subscriber does not exist. The creation is recorded in ``audit_log``.
    """
    if role not in ROLES:
        raise ApiKeyError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role == "customer" and not subscriber:
        raise ApiKeyError("role customer needs a subscriber (the customer's username)")
    if role != "customer" and subscriber:
        raise ApiKeyError(f"role {role} is not tied to a subscriber; omit the subscriber")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    with connect(dsn) as conn, conn.transaction():
        if conn.execute("SELECT 1 FROM tenants WHERE id = %s", (tenant,)).fetchone() is None:
            raise ApiKeyError(f"tenant {tenant!r} does not exist "
                              "(create it with `ispstream inventory apply`)")
        if subscriber is not None and conn.execute(
            "SELECT 1 FROM subscribers WHERE tenant_id = %s AND username = %s",
            (tenant, subscriber),
        ).fetchone() is None:
            raise ApiKeyError(f"subscriber {subscriber!r} does not exist in tenant {tenant!r}")
        conn.execute(
            "INSERT INTO api_keys (id, tenant_id, role, key_hash, subscriber) "
            "VALUES (%s, %s, %s, %s, %s)",
            (key_id, tenant, role, hash_secret(secret), subscriber),
        )
        conn.execute(
            "INSERT INTO audit_log (tenant_id, api_key_id, action, target, detail) "
            "VALUES (%s, NULL, 'apikey.create', %s, %s::jsonb)",
            (tenant, key_id, json.dumps({"role": role, "subscriber": subscriber})),
        )
    log.info("created API key %s (tenant %s, role %s)", key_id, tenant, role)
    return f"{PREFIX}_{key_id}_{secret}"


def authenticate(conn: psycopg.Connection, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None.

    Works as the restricted API role (through the SECURITY DEFINER lookup function);
    runs in whatever transaction ``conn`` is in.
    """
    parsed = parse_key(key)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = conn.execute(
        "SELECT tenant_id, role, subscriber FROM ispstream_authenticate(%s, %s)",
        (key_id, hash_secret(secret)),
    ).fetchone()
    if row is None:
        return None
    return Principal(key_id=key_id, tenant_id=row[0], role=row[1], subscriber=row[2])
