"""Enforcement: operator actions on a subscriber, the enforced state with its history, and
the tenant's actions (operators and admins; customers read only their own state)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from ispstream import topics
from ispstream.contracts import ActionEvent
from ispstream.db import tenant_transaction
from portal_api import services
from portal_api.deps import (
    ConnDep,
    EnforcementReader,
    NowDep,
    Operator,
    PublisherDep,
    QueryInstant,
    SettingsDep,
)
from portal_api.models import (
    ActionCreate,
    ActionPagePublic,
    EnforcementPublic,
    ErrorPublic,
)

router = APIRouter(tags=["enforcement"],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

Username = Annotated[str, Path(min_length=1, max_length=253,
                               description="the RADIUS User-Name")]


@router.post("/v1/subscribers/{username}/actions", status_code=status.HTTP_202_ACCEPTED,
             responses={404: {"model": ErrorPublic}, 503: {"model": ErrorPublic}})
def request_action(username: Username, body: ActionCreate, principal: Operator,
                   conn: ConnDep, now: NowDep, settings: SettingsDep,
                   publisher: PublisherDep) -> ActionEvent:
    """Disconnect, throttle (with a rate), suspend or resume a subscriber.

    Answers 202 with the published `ActionEvent` once Kafka confirmed it on the
    `actions` topic; the action (state `pending`) and an audit entry naming the API key
    are recorded in the same step. The enforcer applies it to the subscriber's sessions:
    follow it with `GET /v1/subscribers/{username}/enforcement`. 503 when Kafka is not
    configured or does not confirm: then nothing is recorded.
    """
    publish = partial(publisher.publish, settings.topic(topics.ACTIONS))
    with tenant_transaction(conn, principal.tenant_id):
        return services.request_action(conn, principal, username, body, now, publish)


@router.get("/v1/subscribers/{username}/enforcement",
            responses={404: {"model": ErrorPublic}})
def get_enforcement(
    username: Username, principal: EnforcementReader, conn: ConnDep,
    limit: Annotated[int, Query(ge=1, le=200, description="actions in the history")] = 20,
) -> EnforcementPublic:
    """The enforced state (normal, throttled or suspended), why and since when, and the
    subscriber's actions newest first, each with every NAS's answer."""
    with tenant_transaction(conn, principal.tenant_id):
        return services.enforcement(conn, principal, username, limit)


@router.get("/v1/actions")
def list_actions(
    principal: Operator,
    conn: ConnDep,
    state: Annotated[Literal["pending", "done", "partial", "failed", "no_sessions"] | None,
                     Query(description="only actions in this state")] = None,
    since: Annotated[QueryInstant | None, Query(
        description="ISO-8601 instant with offset: only actions at or after it",
        examples=["2024-03-01T00:00:00+01:00"])] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")]
    = None,
) -> ActionPagePublic:
    """The tenant's actions newest first, with each NAS's answer."""
    with tenant_transaction(conn, principal.tenant_id):
        return services.actions(conn, principal, state=state, since=since, limit=limit,
                                cursor=cursor)
