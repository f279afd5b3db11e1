"""Liveness and readiness: the database and Kafka."""

from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter, Response, status

from ispstream.kafka import check_reachable
from ispstream.settings import Settings
from portal_api.db import ConnectionPool, DatabaseUnavailable, api_role_transaction
from portal_api.deps import PoolDep, SettingsDep
from portal_api.models import CheckPublic, HealthPublic

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

KAFKA_TIMEOUT_S = 2.0
DB_TIMEOUT_S = 2.0


def _check_db(pool: ConnectionPool) -> CheckPublic:
    try:
        with pool.connection(timeout=DB_TIMEOUT_S) as conn, api_role_transaction(conn):
            conn.execute("SELECT 1")
        return CheckPublic(status="ok")
    except (DatabaseUnavailable, psycopg.Error) as exc:
        log.warning("health: database check failed: %s", exc)
        return CheckPublic(status="error", detail="database unavailable")


def _check_kafka(settings: Settings) -> CheckPublic:
    if not settings.kafka_bootstrap:
        return CheckPublic(status="not configured", detail="ISPSTREAM_KAFKA_BOOTSTRAP is empty")
    try:
        brokers = check_reachable(settings.kafka_bootstrap, settings.kafka_config,
                                  timeout=KAFKA_TIMEOUT_S)
        return CheckPublic(status="ok", detail=f"{brokers} broker(s)")
    except Exception as exc:  # noqa: BLE001 - any client failure means "not reachable"
        log.warning("health: Kafka check failed: %s", exc)
        return CheckPublic(status="error", detail="Kafka unreachable")


@router.get("/healthz", responses={503: {"model": HealthPublic}})
def healthz(pool: PoolDep, settings: SettingsDep, response: Response) -> HealthPublic:
    """200 when the database and Kafka are both reachable, 503 otherwise (no auth)."""
    checks = {"database": _check_db(pool), "kafka": _check_kafka(settings)}
    ok = all(c.status == "ok" for c in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="ok" if ok else "unavailable", checks=checks)
