"""Network telemetry for the NOC: the alerts board (list, detail, acknowledge), a device's
interfaces, an OLT's PON ports, an ONU's optics (operators and admins), and a
subscriber's fibre line (operators, admins, and customers for their own line)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError

from ispstream import topics
from ispstream.apikeys import Principal
from ispstream.db import tenant_transaction
from portal_api import telemetry_queries
from portal_api.deps import (
    ConnDep,
    NowDep,
    Operator,
    PublisherDep,
    QueryInstant,
    SettingsDep,
    require_roles,
)
from portal_api.models import ErrorPublic
from portal_api.telemetry_models import (
    AlertAckCreate,
    AlertDetailPublic,
    AlertPagePublic,
    DeviceInterfacesPublic,
    LinePublic,
    OltPonPortsPublic,
    OnuOpticalPublic,
    Severity,
    parse_onu_ref,
)
from portal_api.telemetry_queries import LIVE_STATES, AlertCleared

router = APIRouter(responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})

LineReader = Annotated[Principal, Depends(require_roles("operator", "admin", "customer"))]

AlertId = Annotated[str, Path(min_length=1, max_length=200)]
DeviceId = Annotated[str, Path(min_length=1, max_length=200,
                               description="the device's inventory id")]
Username = Annotated[str, Path(min_length=1, max_length=253,
                               description="the RADIUS User-Name")]


# --- time windows -----------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetryWindow:
    """``[start, end)`` and the series granularity."""

    start: datetime
    end: datetime
    granularity: Literal["raw", "hour"]


def _invalid(param: str, msg: str, value: object) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", param),
                                    "msg": msg, "input": value}])


def _window(now: datetime, from_: datetime | None, to: datetime | None, granularity: str,
            default: timedelta, max_raw: timedelta, max_hour: timedelta) -> TelemetryWindow:
    # Validated before any database work.
    end = to or now
    start = from_ or end - default
    if start >= end:
        raise _invalid("from", "'from' must be before 'to' (default: now)", start.isoformat())
    limit = max_raw if granularity == "raw" else max_hour
    if end - start > limit:
        hint = " (use granularity=hour for longer windows)" if granularity == "raw" else ""
        raise _invalid("from", f"the window is longer than {_span(limit)} for "
                       f"granularity={granularity}{hint}", start.isoformat())
    return TelemetryWindow(start, end, granularity)


def _span(d: timedelta) -> str:
    return f"{d.days} days" if d.days >= 2 else f"{int(d.total_seconds() // 3600)} hours"


_To = Annotated[QueryInstant | None, Query(
    description="ISO-8601 instant with offset, exclusive; default: now",
    examples=["2024-03-15T12:00:00+01:00"])]

IF_DEFAULT, IF_MAX_RAW, IF_MAX_HOUR = (timedelta(hours=1), timedelta(hours=24),
                                       timedelta(days=92))
OPT_DEFAULT, OPT_MAX_RAW, OPT_MAX_HOUR = (timedelta(hours=24), timedelta(days=31),
                                          timedelta(days=731))


def interface_window(
    now: NowDep,
    from_: Annotated[QueryInstant | None, Query(
        alias="from", description="ISO-8601 instant with offset, inclusive; default: 1 hour "
        "before `to`", examples=["2024-03-15T11:00:00+01:00"])] = None,
    to: _To = None,
    granularity: Annotated[Literal["raw", "hour"], Query(
        description="`raw`: polled samples (window at most 24 hours); `hour`: hourly "
        "rollups, the UTC hours overlapping the window (at most 92 days)")] = "raw",
) -> TelemetryWindow:
    """``from`` / ``to`` / ``granularity`` of an interface traffic series."""
    return _window(now, from_, to, granularity, IF_DEFAULT, IF_MAX_RAW, IF_MAX_HOUR)


def optical_window(
    now: NowDep,
    from_: Annotated[QueryInstant | None, Query(
        alias="from", description="ISO-8601 instant with offset, inclusive; default: 24 "
        "hours before `to`", examples=["2024-03-14T12:00:00+01:00"])] = None,
    to: _To = None,
    granularity: Annotated[Literal["raw", "hour"], Query(
        description="`raw`: polled readings (window at most 31 days); `hour`: hourly "
        "rollups, the UTC hours overlapping the window (at most 731 days)")] = "raw",
) -> TelemetryWindow:
    """``from`` / ``to`` / ``granularity`` of an ONU optical series."""
    return _window(now, from_, to, granularity, OPT_DEFAULT, OPT_MAX_RAW, OPT_MAX_HOUR)


InterfaceWindow = Annotated[TelemetryWindow, Depends(interface_window)]
OpticalWindow = Annotated[TelemetryWindow, Depends(optical_window)]


# --- alerts -----------------------------------------------------------------------------


@router.get("/v1/alerts", tags=["alerts"])
def list_alerts(
    principal: Operator,
    conn: ConnDep,
    state: Annotated[Literal["live", "open", "acknowledged", "cleared", "all"], Query(
        description="`live` (open and acknowledged), one state, or `all`")] = "live",
    severity: Annotated[Severity | None, Query(
        description="minimum severity: `major` means major and critical (order: critical, "
        "major, minor, warning, info)")] = None,
    device: Annotated[str | None, Query(min_length=1, max_length=200,
                                        description="only alerts on this device")] = None,
    suppressed: Annotated[bool | None, Query(
        description="default: include suppressed alerts (flagged `suppressed`); false: "
        "hide them; true: only them")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")]
    = None,
) -> AlertPagePublic:
    """The tenant's alerts newest first (by when they opened), each with its
    explanation, probable cause, affected subscribers and what suppresses it."""
    states = {"live": LIVE_STATES, "all": ("open", "acknowledged", "cleared")}.get(
        state, (state,))
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.alerts_page(
            conn, principal, states=states, min_severity=severity, device=device,
            suppressed=suppressed, limit=limit, cursor=cursor)


@router.get("/v1/alerts/{alert_id}", tags=["alerts"],
            responses={404: {"model": ErrorPublic}})
def get_alert(alert_id: AlertId, principal: Operator, conn: ConnDep) -> AlertDetailPublic:
    """One alert with its state changes (opened, acknowledged, cleared), oldest first."""
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.alert_detail(conn, principal, alert_id)


@router.post("/v1/alerts/{alert_id}/ack", tags=["alerts"],
             responses={404: {"model": ErrorPublic}, 409: {"model": ErrorPublic},
                        503: {"model": ErrorPublic}})
def acknowledge_alert(alert_id: AlertId, principal: Operator, conn: ConnDep, now: NowDep,
                      settings: SettingsDep, publisher: PublisherDep,
                      body: AlertAckCreate | None = None) -> AlertDetailPublic:
    """Acknowledge an open alert, with an optional note.

    Records who (the API key) and when, a history row and an audit entry, and announces
    the change as an `AlertEvent` on the `alerts` topic (so alert streams show it) once
    Kafka confirmed it; 503 when Kafka is not configured or does not confirm: then
    nothing is recorded. Acknowledging an acknowledged alert changes nothing; a cleared
    alert answers 409.
    """
    publish = partial(publisher.publish, settings.topic(topics.ALERTS))
    try:
        with tenant_transaction(conn, principal.tenant_id):
            return telemetry_queries.acknowledge(conn, principal, alert_id,
                                                 body.note if body else None, now, publish)
    except AlertCleared as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


# --- devices, OLTs and ONUs ---------------------------------------------------------------


@router.get("/v1/devices/{device_id}/interfaces", tags=["devices"],
            responses={404: {"model": ErrorPublic}})
def get_interfaces(device_id: DeviceId, window: InterfaceWindow, principal: Operator,
                   conn: ConnDep) -> DeviceInterfacesPublic:
    """The device's interfaces as last polled (status, speed) with their traffic over
    `[from, to)` (default: the last hour): polled samples, or hourly rollups."""
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.device_interfaces(conn, principal, device_id, window.start,
                                                   window.end, window.granularity)


@router.get("/v1/olts/{olt_id}/pon-ports", tags=["devices"],
            responses={404: {"model": ErrorPublic}})
def get_pon_ports(olt_id: DeviceId, principal: Operator,
                  conn: ConnDep) -> OltPonPortsPublic:
    """The OLT's PON ports: ONUs online, offline and unknown; minimum and average ONU Rx
    and OLT Rx power (of ONUs not known to be offline); how many ONUs are outside the
    GPON class B+ limits (ONU Rx −27…−8 dBm, OLT Rx −28…−8 dBm); live alerts."""
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.pon_ports(conn, principal, olt_id)


@router.get("/v1/onus/{onu:path}/optical", tags=["devices"],
            responses={404: {"model": ErrorPublic}})
def get_onu_optical(
    onu: Annotated[str, Path(
        description="`<olt>:<pon>:<onu_id>`, URL-encoded (PON names contain `/`): the "
        "OLT's inventory id, the PON port as the OLT names it, the ONU id on that port. "
        "The OLT id ends at the first `:`, the ONU id starts after the last one. "
        "`OnuPublic.id` has this form.",
        examples=["olt-1:gpon_1/1/3:7"])],
    window: OpticalWindow, principal: Operator, conn: ConnDep,
) -> OnuOpticalPublic:
    """The ONU's optical readings (Rx/Tx power, OLT Rx, temperature, voltage, bias) over
    `[from, to)` (default: the last 24 hours) with the limits they are judged against."""
    ref = parse_onu_ref(onu)
    if ref is None:
        raise RequestValidationError([{
            "type": "value_error", "loc": ("path", "onu"), "input": onu,
            "msg": "expected <olt>:<pon>:<onu_id>, e.g. olt-1:gpon_1/1/3:7 (URL-encoded)"}])
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.onu_optical(conn, principal, *ref, window.start,
                                             window.end, window.granularity)


@router.get("/v1/subscribers/{username}/line", tags=["subscribers"],
            responses={404: {"model": ErrorPublic}})
def get_line(username: Username, principal: LineReader, conn: ConnDep) -> LinePublic:
    """The subscriber's fibre line: the linked ONU (by serial, else by position), whether
    it is online, its current light levels against the class B+ limits with a verdict
    each (`ok`, `low`, `high`, `no_reading`), the drift from its own baseline, and the
    open alerts affecting the subscriber (on the ONU, its PON port, or naming the
    subscriber). Customers may read only their own line."""
    with tenant_transaction(conn, principal.tenant_id):
        return telemetry_queries.line(conn, principal, username)
