"""Accounting sessions, newest first, keyset-paginated."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ispstream.db import tenant_transaction
from portal_api import services
from portal_api.deps import ConnDep, Reader
from portal_api.models import ErrorPublic, SessionPagePublic

router = APIRouter(prefix="/v1/sessions", tags=["sessions"],
                   responses={401: {"model": ErrorPublic}})


@router.get("")
def list_sessions(
    principal: Reader,
    conn: ConnDep,
    username: Annotated[str | None, Query(min_length=1, max_length=253,
                                          description="only this subscriber")] = None,
    open_: Annotated[bool | None, Query(alias="open", description="true: open sessions "
                                        "only; false: closed or stale only")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")]
    = None,
) -> SessionPagePublic:
    """Sessions with their totals, newest first. Customers see only their own."""
    with tenant_transaction(conn, principal.tenant_id):
        return services.sessions(conn, principal, username=username, open_=open_,
                                 limit=limit, cursor=cursor)
