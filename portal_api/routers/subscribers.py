"""Subscriber usage and billing cycle (operators, analysts, admins; customers: their own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ispstream.db import tenant_transaction
from portal_api import services
from portal_api.deps import ConnDep, NowDep, Reader, UsageWindowDep
from portal_api.models import CyclePublic, ErrorPublic, UsagePublic

router = APIRouter(
    prefix="/v1/subscribers",
    tags=["subscribers"],
    responses={401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}},
)

Username = Annotated[str, Path(min_length=1, max_length=253,
                               description="the RADIUS User-Name")]


@router.get("/{username}/usage")
def get_usage(username: Username, window: UsageWindowDep, principal: Reader,
              conn: ConnDep, now: NowDep) -> UsagePublic:
    """Usage totals over ``[from, to)`` (default: the current billing cycle).

    Bytes are exact integers; ``charge`` is the usage charge rounded once to the
    currency's minor unit, ``charge_exact`` the unrounded sum. ``granularity=hour`` adds
    hourly buckets, ``granularity=day`` daily buckets in the tenant's time zone.
    """
    with tenant_transaction(conn, principal.tenant_id):
        return services.usage(conn, principal, username, window.start, window.end,
                              window.granularity, now)


@router.get("/{username}/cycle")
def get_cycle(username: Username, principal: Reader, conn: ConnDep,
              now: NowDep) -> CyclePublic:
    """The current billing cycle: quota used and remaining, overage so far, plan."""
    with tenant_transaction(conn, principal.tenant_id):
        return services.cycle(conn, principal, username, now)
