"""Alertmanager-compatible receiver: existing Prometheus setups feed their alerts in.

Point an Alertmanager ``webhook_config`` at ``POST /v1/alertmanager/webhook`` with an
operator or admin API key (``http_config.authorization.credentials``). Each alert of the
payload (webhook version 4) becomes an ispstream alert of the key's tenant: key
``am:<fingerprint>``, one episode (``alert_id``) per ``startsAt``, kind ``alertmanager``,
severity from ``labels.severity``; firing opens it, resolved clears it. Its announcements
are queued on the tenant's alert channels like the fault flow's, and, when Kafka is
configured, its ``AlertEvent`` is published on the ``alerts`` topic. Repeated
notifications of the same alert change nothing but ``last_seen_at``.

The API role may insert and rewrite only ``am:`` alerts (a row policy and a trigger
keep it off the fault flow's own alerts).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from psycopg.types.json import Jsonb

from ispstream import topics
from ispstream.apikeys import Principal
from ispstream.contracts import AlertEvent
from ispstream.db import tenant_transaction
from portal_api.deps import ConnDep, NowDep, Operator, PublisherDep, SettingsDep
from portal_api.models import ErrorPublic
from portal_api.publisher import PublishError
from portal_api.queries import insert_audit

router = APIRouter(tags=["alerts"],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

KIND = "alertmanager"
SEVERITY_OF = {
    "critical": "critical", "page": "critical", "emergency": "critical", "alert": "critical",
    "fatal": "critical", "disaster": "critical",
    "major": "major", "error": "major", "high": "major",
    "minor": "minor", "medium": "minor", "average": "minor",
    "warning": "warning", "warn": "warning",
    "info": "info", "informational": "info", "notice": "info", "low": "info", "none": "info",
}
DEFAULT_SEVERITY = "warning"
_SEVERITIES = ["info", "warning", "minor", "major", "critical"]


class AlertmanagerAlert(BaseModel):
    """One alert of an Alertmanager notification."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AwareDatetime  # noqa: N815 - Alertmanager's field names
    endsAt: AwareDatetime | None = None  # noqa: N815
    generatorURL: str | None = None  # noqa: N815
    fingerprint: Annotated[str, Field(min_length=1, max_length=128)]


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str | None = None  # noqa: N815
    truncatedAlerts: int = 0  # noqa: N815
    status: Literal["firing", "resolved"]
    receiver: str | None = None
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str | None = None  # noqa: N815
    alerts: Annotated[list[AlertmanagerAlert], Field(max_length=5000)]


class AlertmanagerReceipt(BaseModel):
    """What the receiver did with a notification."""

    received: int
    opened: int = Field(description="alerts opened by this notification")
    cleared: int = Field(description="alerts cleared by this notification")
    alert_ids: list[str] = Field(description="the ispstream alert id of each alert, in order")


def am_alert_id(tenant_id: str, key: str, starts_at: datetime) -> str:
    """One episode per Alertmanager ``startsAt``: BLAKE2b (24 hex) of length-prefixed
    tenant, key and start (ms), as the fault flow's ids are built."""
    parts = (tenant_id, key, str(round(starts_at.timestamp() * 1000)))
    text = "|".join(f"{len(p)}:{p}" for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def severity_of(labels: dict[str, str]) -> str:
    """Our severity for ``labels.severity`` (unknown or missing: warning)."""
    return SEVERITY_OF.get(labels.get("severity", "").strip().lower(), DEFAULT_SEVERITY)


def to_event(tenant_id: str, a: AlertmanagerAlert, now: datetime) -> AlertEvent:
    """The ``AlertEvent`` an Alertmanager alert stands for."""
    key = f"am:{a.fingerprint}"
    name = a.labels.get("alertname", "alert")
    summary = a.annotations.get("summary")
    explanation = a.annotations.get("description") or summary or ", ".join(
        f"{k}={v}" for k, v in sorted(a.labels.items()))
    resolved = a.status == "resolved"
    changed = a.endsAt if resolved and a.endsAt is not None and a.endsAt.year > 1 else now
    return AlertEvent(
        tenant_id=tenant_id, alert_id=am_alert_id(tenant_id, key, a.startsAt), key=key,
        kind=KIND, severity=severity_of(a.labels), state="cleared" if resolved else "open",
        device_id=a.labels.get("device") or a.labels.get("instance"), object=name,
        title=f"{name}: {summary}" if summary else name, explanation=explanation,
        probable_cause=a.labels.get("cause"), opened_at=a.startsAt.timestamp(),
        changed_at=max(changed.timestamp(), a.startsAt.timestamp()))


_SUPERSEDE = """
UPDATE alerts SET state = 'cleared', cleared_at = to_timestamp(%(opened)s),
       last_seen_at = greatest(last_seen_at, to_timestamp(%(opened)s))
WHERE tenant_id = %(tenant)s AND key = %(key)s AND alert_id <> %(id)s AND state <> 'cleared'
RETURNING alert_id
"""
_UPSERT = """
INSERT INTO alerts (tenant_id, alert_id, key, kind, severity, state, device_id, object,
                    title, explanation, probable_cause, details, opened_at, last_seen_at,
                    cleared_at)
VALUES (%(tenant)s, %(id)s, %(key)s, %(kind)s, %(severity)s, %(state)s, %(device)s,
        %(object)s, %(title)s, %(explanation)s, %(cause)s, %(details)s, to_timestamp(%(opened)s),
        to_timestamp(%(changed)s), CASE WHEN %(state)s = 'cleared'
                                        THEN to_timestamp(%(changed)s) END)
ON CONFLICT (tenant_id, alert_id) DO UPDATE
SET kind = excluded.kind, severity = excluded.severity, device_id = excluded.device_id,
    object = excluded.object, title = excluded.title, explanation = excluded.explanation,
    probable_cause = excluded.probable_cause, details = excluded.details,
    last_seen_at = greatest(alerts.last_seen_at, excluded.last_seen_at),
    state = CASE WHEN alerts.state = 'cleared' OR excluded.state = 'cleared' THEN 'cleared'
                 ELSE alerts.state END,
    cleared_at = coalesce(alerts.cleared_at, excluded.cleared_at)
"""
_QUEUE_OPEN = f"""
INSERT INTO alert_deliveries (tenant_id, alert_id, channel_id, state, status, attempts,
                              next_attempt_at, payload)
SELECT c.tenant_id, %(id)s, c.id, 'open', 'pending', 0, now(), %(payload)s
FROM alert_channels c
WHERE c.tenant_id = %(tenant)s AND c.enabled
  AND array_position(%(sevs)s::text[], %(severity)s)
      >= array_position(%(sevs)s::text[], c.min_severity)
ON CONFLICT DO NOTHING
"""
_QUEUE_CLEARED = """
INSERT INTO alert_deliveries (tenant_id, alert_id, channel_id, state, status, attempts,
                              next_attempt_at, payload)
SELECT d.tenant_id, d.alert_id, d.channel_id, 'cleared', 'pending', 0, now(), %(payload)s
FROM alert_deliveries d
WHERE d.tenant_id = %(tenant)s AND d.alert_id = %(id)s AND d.state = 'open'
  AND d.status IN ('pending', 'delivered')
ON CONFLICT DO NOTHING
"""
_HISTORY = """
INSERT INTO alert_history (tenant_id, alert_id, at, state, note, by_key)
VALUES (%s, %s, to_timestamp(%s), %s, %s, %s) ON CONFLICT DO NOTHING
"""


def record(conn, principal: Principal, ev: AlertEvent, a: AlertmanagerAlert,
           receiver: str | None) -> str | None:
    """Upsert one alert with its history and queued announcements (inside the tenant's
    transaction); returns "opened", "cleared" or None (nothing changed but last seen).
    An alert first seen already resolved is recorded cleared and announced nowhere."""
    args = {"tenant": ev.tenant_id, "id": ev.alert_id, "key": ev.key, "kind": ev.kind,
            "severity": ev.severity, "state": ev.state, "device": ev.device_id,
            "object": ev.object, "title": ev.title, "explanation": ev.explanation,
            "cause": ev.probable_cause, "opened": ev.opened_at, "changed": ev.changed_at,
            "details": Jsonb({"source": "alertmanager", "receiver": receiver,
                              "fingerprint": a.fingerprint, "labels": a.labels,
                              "annotations": a.annotations,
                              "generator_url": a.generatorURL}),
            "payload": Jsonb(ev.model_dump(mode="json")), "sevs": _SEVERITIES}
    row = conn.execute("SELECT state FROM alerts WHERE tenant_id = %s AND alert_id = %s",
                       (ev.tenant_id, ev.alert_id)).fetchone()
    before = row[0] if row else None
    if ev.state == "open" and before is None:
        for (old,) in conn.execute(_SUPERSEDE, args).fetchall():
            conn.execute(_HISTORY, (ev.tenant_id, old, ev.opened_at, "cleared",
                                    f"superseded by {ev.alert_id}", principal.key_id))
    conn.execute(_UPSERT, args)
    if before is None:
        conn.execute(_HISTORY, (ev.tenant_id, ev.alert_id, ev.opened_at, "open",
                                "opened by Alertmanager", principal.key_id))
    if ev.state == "open":
        if before is None:
            conn.execute(_QUEUE_OPEN, args)
            return "opened"
        return None
    if before == "cleared":
        return None
    conn.execute(_HISTORY, (ev.tenant_id, ev.alert_id, ev.changed_at, "cleared",
                            "resolved in Alertmanager", principal.key_id))
    conn.execute(_QUEUE_CLEARED, args)  # only where its opening was announced
    return "cleared"


@router.post("/v1/alertmanager/webhook",
             responses={422: {"description": "not an Alertmanager v4 payload"},
                        503: {"model": ErrorPublic}})
def alertmanager_webhook(body: AlertmanagerWebhook, principal: Operator, conn: ConnDep,
                         now: NowDep, settings: SettingsDep,
                         publisher: PublisherDep) -> AlertmanagerReceipt:
    """Receive an Alertmanager notification (webhook payload version 4).

    Every alert is upserted under key `am:<fingerprint>` (firing: open, resolved:
    cleared), its announcements queued on the tenant's alert channels, and the call is
    audited. With Kafka configured, each alert's `AlertEvent` is then published on the
    `alerts` topic; 503 when Kafka does not confirm (the alerts are recorded;
    Alertmanager retries and the retry records nothing twice)."""
    events = [to_event(principal.tenant_id, a, now) for a in body.alerts]
    opened = cleared = 0
    with tenant_transaction(conn, principal.tenant_id):
        for ev, a in zip(events, body.alerts):
            change = record(conn, principal, ev, a, body.receiver)
            opened += change == "opened"
            cleared += change == "cleared"
        insert_audit(conn, principal.tenant_id, principal.key_id, "alertmanager.webhook",
                     body.receiver or "", {"group_key": body.groupKey,
                                           "firing": sum(e.state == "open" for e in events),
                                           "resolved": sum(e.state == "cleared"
                                                           for e in events)})
    if settings.kafka_bootstrap:
        topic = settings.topic(topics.ALERTS)
        try:
            for ev in events:
                publisher.publish(topic, f"{ev.tenant_id}/{ev.key}",
                                  ev.model_dump_json().encode())
        except PublishError:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "alerts recorded, but Kafka did not confirm their events; "
                                "send the notification again") from None
    return AlertmanagerReceipt(received=len(events), opened=opened, cleared=cleared,
                               alert_ids=[e.alert_id for e in events])
