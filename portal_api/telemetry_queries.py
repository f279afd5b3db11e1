"""SQL and answers of the telemetry endpoints: alerts (list, detail, acknowledge), a
device's interfaces, an OLT's PON ports, an ONU's optics and a subscriber's line.

Every function expects ``conn`` inside ``tenant_transaction`` (row-level security limits
rows to the caller's tenant; the queries filter on ``tenant_id`` as well). The API role
may not read the SNMP secrets of ``devices``: only granted columns are ever named.
Functions raise ``NotFound`` / ``QueryError`` (404 / 422) and ``AlertCleared`` (409).
Only core PostgreSQL is used, so the same queries run with or without TimescaleDB.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable

import psycopg

from ispstream.apikeys import Principal
from ispstream.contracts import AlertEvent
from portal_api import queries
from portal_api.services import NotFound, decode_keyset, encode_keyset
from portal_api.telemetry_models import (
    OLT_RX,
    ONU_RX,
    ONU_TX,
    AlertDetailPublic,
    AlertHistoryPublic,
    AlertPagePublic,
    AlertPublic,
    DeviceInterfacesPublic,
    IfHourPublic,
    IfSamplePublic,
    InterfacePublic,
    LightLevelPublic,
    LinePublic,
    OltPonPortsPublic,
    OnuLinkPublic,
    OnuOpticalPublic,
    OnuPublic,
    OpticalHourPublic,
    OpticalLimitsPublic,
    OpticalSamplePublic,
    PonPortPublic,
    at_least,
    if_admin_status,
    if_oper_status,
    onu_object,
    onu_ref,
    verdict,
)

LIVE_STATES = ("open", "acknowledged")
LINE_ALERTS_MAX = 100

# The bucket origin of every hourly rollup (UTC hours).
_EPOCH = "timestamptz '2000-01-01 00:00:00+00'"


class AlertCleared(Exception):
    """The alert was cleared: it can no longer be acknowledged (409)."""


# --- alerts -----------------------------------------------------------------------------

ALERT_COLUMNS = ("alert_id", "key", "kind", "severity", "state", "device_id", "object",
                 "title", "explanation", "probable_cause", "affected_subscribers",
                 "suppressed_by", "details", "opened_at", "last_seen_at", "acknowledged_at",
                 "acknowledged_by", "cleared_at")
_ALERT_SELECT = ", ".join(ALERT_COLUMNS)


def _alert_rows(cur: psycopg.Cursor) -> list[dict]:
    return [dict(zip(ALERT_COLUMNS, r)) for r in cur.fetchall()]


def _alert_public(row: dict, principal: Principal) -> AlertPublic:
    row = {**row, "suppressed": row["suppressed_by"] is not None}
    if principal.role == "customer":
        # Other subscribers on the same PON, detector internals and which operator key
        # acknowledged are none of a customer's business.
        row.update(affected_subscribers=[principal.subscriber]
                   if principal.subscriber in row["affected_subscribers"] else [],
                   details={}, acknowledged_by=None)
    return AlertPublic(**row)


def alerts_page(conn: psycopg.Connection, principal: Principal, *, states: tuple[str, ...],
                min_severity: str | None, device: str | None, suppressed: bool | None,
                limit: int, cursor: str | None) -> AlertPagePublic:
    """A page of the tenant's alerts, newest first (opened_at, alert_id descending)."""
    after = decode_keyset(cursor, 1) if cursor else None
    where = ["tenant_id = %(tenant)s", "state = ANY(%(states)s)"]
    params: dict[str, Any] = {"tenant": principal.tenant_id, "states": list(states),
                              "limit": limit + 1}
    if min_severity is not None:
        where.append("severity = ANY(%(severities)s)")
        params["severities"] = at_least(min_severity)
    if device is not None:
        where.append("device_id = %(device)s")
        params["device"] = device
    if suppressed is True:
        where.append("suppressed_by IS NOT NULL")
    elif suppressed is False:
        where.append("suppressed_by IS NULL")
    if after is not None:
        where.append("(opened_at, alert_id) < (%(a_at)s, %(a_id)s)")
        params.update(a_at=after[0], a_id=after[1])
    rows = _alert_rows(conn.execute(
        f"""SELECT {_ALERT_SELECT} FROM alerts
            WHERE {" AND ".join(where)}
            ORDER BY opened_at DESC, alert_id DESC
            LIMIT %(limit)s""",
        params,
    ))
    more = len(rows) > limit
    rows = rows[:limit]
    return AlertPagePublic(items=[_alert_public(r, principal) for r in rows],
                           next_cursor=encode_keyset(rows[-1]["opened_at"],
                                                     rows[-1]["alert_id"]) if more else None)


def _alert_row(conn: psycopg.Connection, tenant_id: str, alert_id: str, *,
               lock: bool = False) -> dict | None:
    rows = _alert_rows(conn.execute(
        f"""SELECT {_ALERT_SELECT} FROM alerts WHERE tenant_id = %s AND alert_id = %s
            {"FOR UPDATE" if lock else ""}""",
        (tenant_id, alert_id),
    ))
    return rows[0] if rows else None


def _history(conn: psycopg.Connection, tenant_id: str, alert_id: str) -> list[dict]:
    cur = conn.execute(
        """SELECT at, state, note, by_key FROM alert_history
           WHERE tenant_id = %s AND alert_id = %s ORDER BY at, state""",
        (tenant_id, alert_id),
    )
    return [dict(zip(("at", "state", "note", "by_key"), r)) for r in cur.fetchall()]


def _detail(conn: psycopg.Connection, principal: Principal, row: dict) -> AlertDetailPublic:
    public = _alert_public(row, principal)
    history = [AlertHistoryPublic(**h)
               for h in _history(conn, principal.tenant_id, row["alert_id"])]
    return AlertDetailPublic(**public.model_dump(), history=history)


def alert_detail(conn: psycopg.Connection, principal: Principal,
                 alert_id: str) -> AlertDetailPublic:
    """One alert of the tenant with its history."""
    row = _alert_row(conn, principal.tenant_id, alert_id)
    if row is None:
        raise NotFound("alert not found")
    return _detail(conn, principal, row)


def alert_event(row: dict, changed_at: datetime) -> AlertEvent:
    """The ``alerts`` topic record announcing the alert's current row."""
    return AlertEvent(
        tenant_id=row["tenant_id"], alert_id=row["alert_id"], key=row["key"],
        kind=row["kind"], severity=row["severity"], state=row["state"],
        device_id=row["device_id"], object=row["object"], title=row["title"],
        explanation=row["explanation"], probable_cause=row["probable_cause"],
        affected_subscribers=list(row["affected_subscribers"]),
        suppressed_by=row["suppressed_by"], opened_at=row["opened_at"].timestamp(),
        changed_at=changed_at.timestamp(),
    )


def acknowledge(conn: psycopg.Connection, principal: Principal, alert_id: str,
                note: str | None, now: datetime,
                publish: Callable[[str, bytes], None]) -> AlertDetailPublic:
    """Acknowledge an open alert: state, who and when, a history row, an audit entry,
    and the change announced on the ``alerts`` topic (``publish(key, value)`` runs last,
    inside the caller's transaction: when Kafka does not confirm, nothing is recorded).

    Acknowledging an acknowledged alert changes nothing and answers it as it is; a
    cleared one raises ``AlertCleared``.
    """
    row = _alert_row(conn, principal.tenant_id, alert_id, lock=True)
    if row is None:
        raise NotFound("alert not found")
    if row["state"] == "cleared":
        raise AlertCleared(f"alert {alert_id} was cleared at "
                           f"{row['cleared_at'].isoformat() if row['cleared_at'] else '?'}; "
                           "a cleared alert cannot be acknowledged")
    if row["state"] == "open":
        row = _alert_rows(conn.execute(
            f"""UPDATE alerts SET state = 'acknowledged', acknowledged_at = %s,
                                  acknowledged_by = %s
                WHERE tenant_id = %s AND alert_id = %s
                RETURNING {_ALERT_SELECT}""",
            (now, principal.key_id, principal.tenant_id, alert_id),
        ))[0]
        conn.execute(
            "INSERT INTO alert_history (tenant_id, alert_id, at, state, note, by_key) "
            "VALUES (%s, %s, %s, 'acknowledged', %s, %s)",
            (principal.tenant_id, alert_id, now, note, principal.key_id),
        )
        queries.insert_audit(conn, principal.tenant_id, principal.key_id, "alert.ack",
                             alert_id, {"note": note, "key": row["key"]})
        event = alert_event({**row, "tenant_id": principal.tenant_id}, now)
        publish(f"{event.tenant_id}/{event.key}", event.model_dump_json().encode())
    return _detail(conn, principal, row)


# --- devices and interfaces -------------------------------------------------------------


def _device(conn: psycopg.Connection, tenant_id: str, device_id: str) -> dict | None:
    # Only columns granted to the API role: never the SNMP secrets.
    row = conn.execute(
        """SELECT d.id, d.kind, s.reachable, s.changed_at
           FROM devices d
           LEFT JOIN device_status s ON s.tenant_id = d.tenant_id AND s.device_id = d.id
           WHERE d.tenant_id = %s AND d.id = %s""",
        (tenant_id, device_id),
    ).fetchone()
    return None if row is None else dict(zip(("id", "kind", "reachable", "changed_at"), row))


IF_COLUMNS = ("if_index", "name", "alias", "oper_status", "admin_status", "high_speed_mbps",
              "last_change", "updated_at")
IF_SAMPLE_COLUMNS = ("ts", "oper_status", "in_bps", "out_bps", "in_util", "out_util",
                     "discontinuity")
IF_HOUR_COLUMNS = ("hour", "in_bps_avg", "out_bps_avg", "in_bps_max", "out_bps_max",
                   "samples")


def _by_index(rows: list[tuple], columns: tuple[str, ...]) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(dict(zip(columns, r[1:])))
    return out


def device_interfaces(conn: psycopg.Connection, principal: Principal, device_id: str,
                      start: datetime, end: datetime,
                      granularity: str) -> DeviceInterfacesPublic:
    """The device's interfaces (current rows, by ifIndex) with their traffic over
    ``[start, end)``: polled samples (raw) or hourly rollups (hour)."""
    tenant = principal.tenant_id
    device = _device(conn, tenant, device_id)
    if device is None:
        raise NotFound("device not found")
    current = conn.execute(
        f"""SELECT {", ".join(IF_COLUMNS)} FROM interfaces
            WHERE tenant_id = %s AND device_id = %s ORDER BY if_index""",
        (tenant, device_id),
    ).fetchall()
    params = {"tenant": tenant, "device": device_id, "start": start, "end": end}
    samples: dict[Any, list[dict]] = {}
    hours: dict[Any, list[dict]] = {}
    if granularity == "raw":
        samples = _by_index(conn.execute(
            f"""SELECT if_index, {", ".join(IF_SAMPLE_COLUMNS)} FROM if_samples
                WHERE tenant_id = %(tenant)s AND device_id = %(device)s
                  AND ts >= %(start)s AND ts < %(end)s
                ORDER BY if_index, ts""", params).fetchall(), IF_SAMPLE_COLUMNS)
    else:
        hours = _by_index(conn.execute(
            f"""SELECT if_index, {", ".join(IF_HOUR_COLUMNS)} FROM if_hourly
                WHERE tenant_id = %(tenant)s AND device_id = %(device)s
                  AND hour >= date_bin('1 hour', %(start)s::timestamptz, {_EPOCH})
                  AND hour < %(end)s
                ORDER BY if_index, hour""", params).fetchall(), IF_HOUR_COLUMNS)
    interfaces = []
    for r in current:
        row = dict(zip(IF_COLUMNS, r))
        idx = row["if_index"]
        interfaces.append(InterfacePublic(
            **{**row, "oper_status": if_oper_status(row["oper_status"]),
               "admin_status": if_admin_status(row["admin_status"])},
            samples=[IfSamplePublic(**s) for s in samples.get(idx, [])]
            if granularity == "raw" else None,
            hours=[IfHourPublic(**h) for h in hours.get(idx, [])]
            if granularity == "hour" else None,
        ))
    return DeviceInterfacesPublic(
        device_id=device_id, kind=device["kind"], reachable=device["reachable"],
        reachability_changed_at=device["changed_at"], from_=start.astimezone(timezone.utc),
        to=end.astimezone(timezone.utc), granularity=granularity, interfaces=interfaces)


# --- OLTs, PON ports and ONUs -----------------------------------------------------------


def _olt(conn: psycopg.Connection, tenant_id: str, olt_id: str) -> dict:
    device = _device(conn, tenant_id, olt_id)
    if device is None or device["kind"] != "olt":
        raise NotFound("OLT not found")
    return device


def _natural(text: str) -> list:
    # gpon_1/1/2 before gpon_1/1/10
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


_PON_COLUMNS = ("pon", "onus_total", "onus_online", "onus_offline", "onus_unknown",
                "onu_rx_dbm_min", "onu_rx_dbm_avg", "olt_rx_dbm_min", "olt_rx_dbm_avg",
                "onus_out_of_limits")


def pon_ports(conn: psycopg.Connection, principal: Principal,
              olt_id: str) -> OltPonPortsPublic:
    """Per PON port of the OLT: ONU counts by state, light statistics of the ONUs not
    known to be offline, how many are outside the class B+ limits, and live alerts."""
    tenant = principal.tenant_id
    olt = _olt(conn, tenant, olt_id)
    rows = conn.execute(
        """SELECT pon, count(*), count(*) FILTER (WHERE online),
                  count(*) FILTER (WHERE NOT online), count(*) FILTER (WHERE online IS NULL),
                  min(onu_rx_dbm) FILTER (WHERE online IS NOT FALSE),
                  round(avg(onu_rx_dbm) FILTER (WHERE online IS NOT FALSE)::numeric, 2),
                  min(olt_rx_dbm) FILTER (WHERE online IS NOT FALSE),
                  round(avg(olt_rx_dbm) FILTER (WHERE online IS NOT FALSE)::numeric, 2),
                  count(*) FILTER (WHERE online IS NOT FALSE AND (
                      onu_rx_dbm NOT BETWEEN %(onu_lo)s AND %(onu_hi)s
                      OR olt_rx_dbm NOT BETWEEN %(olt_lo)s AND %(olt_hi)s))
           FROM onus WHERE tenant_id = %(tenant)s AND olt_id = %(olt)s
           GROUP BY pon""",
        {"tenant": tenant, "olt": olt_id, "onu_lo": ONU_RX.min_dbm, "onu_hi": ONU_RX.max_dbm,
         "olt_lo": OLT_RX.min_dbm, "olt_hi": OLT_RX.max_dbm},
    ).fetchall()
    # Live alerts on the OLT, counted against the PON port they name: the port itself,
    # or one of its ONUs.
    pon_of = {r[0]: r[0] for r in rows}
    for pon, onu_id in conn.execute(
            "SELECT pon, onu_id FROM onus WHERE tenant_id = %s AND olt_id = %s",
            (tenant, olt_id)).fetchall():
        pon_of[onu_object(pon, onu_id)] = pon
    alerts: dict[str, int] = {}
    for (obj,) in conn.execute(
            "SELECT object FROM alerts WHERE tenant_id = %s AND device_id = %s "
            "AND state <> 'cleared' AND object IS NOT NULL", (tenant, olt_id)).fetchall():
        if obj in pon_of:
            alerts[pon_of[obj]] = alerts.get(pon_of[obj], 0) + 1
    ports = []
    for r in sorted(rows, key=lambda r: _natural(r[0])):
        row = dict(zip(_PON_COLUMNS, r))
        for k in ("onu_rx_dbm_avg", "olt_rx_dbm_avg"):
            row[k] = None if row[k] is None else float(row[k])
        ports.append(PonPortPublic(**row, open_alerts=alerts.get(row["pon"], 0)))
    return OltPonPortsPublic(olt_id=olt_id, reachable=olt["reachable"],
                             limits=OpticalLimitsPublic(), pon_ports=ports)


ONU_COLUMNS = ("olt_id", "pon", "onu_id", "serial", "online", "onu_rx_dbm", "onu_tx_dbm",
               "olt_rx_dbm", "baseline_rx_dbm", "last_seen")
_ONU_SELECT = ", ".join(ONU_COLUMNS)


def _onu(conn: psycopg.Connection, tenant_id: str, olt_id: str, pon: str,
         onu_id: str) -> dict | None:
    row = conn.execute(
        f"""SELECT {_ONU_SELECT} FROM onus
            WHERE tenant_id = %s AND olt_id = %s AND pon = %s AND onu_id = %s""",
        (tenant_id, olt_id, pon, onu_id),
    ).fetchone()
    return None if row is None else dict(zip(ONU_COLUMNS, row))


def _onu_public(row: dict) -> OnuPublic:
    return OnuPublic(id=onu_ref(row["olt_id"], row["pon"], row["onu_id"]),
                     olt_id=row["olt_id"], pon=row["pon"], onu_id=row["onu_id"],
                     serial=row["serial"], online=row["online"], last_seen=row["last_seen"])


OPTICAL_SAMPLE_COLUMNS = ("ts", "online", "onu_rx_dbm", "onu_tx_dbm", "olt_rx_dbm",
                          "temperature_c", "voltage_v", "bias_ma")
OPTICAL_HOUR_COLUMNS = ("hour", "onu_rx_avg", "onu_rx_min", "olt_rx_avg", "olt_rx_min",
                        "samples", "offline_samples")


def onu_optical(conn: psycopg.Connection, principal: Principal, olt_id: str, pon: str,
                onu_id: str, start: datetime, end: datetime,
                granularity: str) -> OnuOpticalPublic:
    """The ONU's optical readings over ``[start, end)`` (raw samples or hourly rollups)."""
    tenant = principal.tenant_id
    onu = _onu(conn, tenant, olt_id, pon, onu_id)
    if onu is None:
        raise NotFound("ONU not found")
    params = {"tenant": tenant, "olt": olt_id, "pon": pon, "onu": onu_id, "start": start,
              "end": end}
    samples = hours = None
    if granularity == "raw":
        samples = [OpticalSamplePublic(**dict(zip(OPTICAL_SAMPLE_COLUMNS, r)))
                   for r in conn.execute(
            f"""SELECT {", ".join(OPTICAL_SAMPLE_COLUMNS)} FROM onu_optical_samples
                WHERE tenant_id = %(tenant)s AND olt_id = %(olt)s AND pon = %(pon)s
                  AND onu_id = %(onu)s AND ts >= %(start)s AND ts < %(end)s
                ORDER BY ts""", params).fetchall()]
    else:
        hours = [OpticalHourPublic(**dict(zip(OPTICAL_HOUR_COLUMNS, r)))
                 for r in conn.execute(
            f"""SELECT {", ".join(OPTICAL_HOUR_COLUMNS)} FROM onu_optical_hourly
                WHERE tenant_id = %(tenant)s AND olt_id = %(olt)s AND pon = %(pon)s
                  AND onu_id = %(onu)s
                  AND hour >= date_bin('1 hour', %(start)s::timestamptz, {_EPOCH})
                  AND hour < %(end)s
                ORDER BY hour""", params).fetchall()]
    return OnuOpticalPublic(onu=_onu_public(onu), limits=OpticalLimitsPublic(),
                            from_=start.astimezone(timezone.utc),
                            to=end.astimezone(timezone.utc), granularity=granularity,
                            samples=samples, hours=hours)


# --- a subscriber's line ----------------------------------------------------------------

LINK_COLUMNS = ("olt_id", "serial", "pon", "onu_id")


def _linked_onu(conn: psycopg.Connection, tenant_id: str, link: dict) -> dict | None:
    # By serial first (an ONU moved to another port keeps its serial; the newest sighting
    # wins), else by position.
    if link["serial"] is not None:
        row = conn.execute(
            f"""SELECT {_ONU_SELECT} FROM onus
                WHERE tenant_id = %s AND olt_id = %s AND serial = %s
                ORDER BY last_seen DESC LIMIT 1""",
            (tenant_id, link["olt_id"], link["serial"]),
        ).fetchone()
        if row is not None:
            return dict(zip(ONU_COLUMNS, row))
    if link["pon"] is not None and link["onu_id"] is not None:
        return _onu(conn, tenant_id, link["olt_id"], link["pon"], link["onu_id"])
    return None


def _level(dbm: float | None, limit) -> LightLevelPublic:
    return LightLevelPublic(dbm=dbm, min_dbm=limit.min_dbm, max_dbm=limit.max_dbm,
                            verdict=verdict(dbm, limit))


def line(conn: psycopg.Connection, principal: Principal, username: str) -> LinePublic:
    """The subscriber's ONU, its current light levels against the limits, and the live
    alerts affecting the subscriber. A customer may only ask for itself."""
    tenant = principal.tenant_id
    if principal.role == "customer" and username != principal.subscriber:
        raise NotFound("subscriber not found")
    if not queries.subscriber_exists(conn, tenant, username):
        raise NotFound("subscriber not found")
    row = conn.execute(
        f"""SELECT {", ".join(LINK_COLUMNS)} FROM onu_links
            WHERE tenant_id = %s AND username = %s""",
        (tenant, username),
    ).fetchone()
    link = None if row is None else dict(zip(LINK_COLUMNS, row))
    onu = None if link is None else _linked_onu(conn, tenant, link)
    # Alerts naming the subscriber, or on its ONU or the ONU's PON port.
    where = ["%(user)s = ANY(affected_subscribers)"]
    params: dict[str, Any] = {"tenant": tenant, "user": username, "limit": LINE_ALERTS_MAX}
    if onu is not None:
        where.append("(device_id = %(olt)s AND object = ANY(%(objects)s))")
        params.update(olt=onu["olt_id"],
                      objects=[onu["pon"], onu_object(onu["pon"], onu["onu_id"])])
    alerts = _alert_rows(conn.execute(
        f"""SELECT {_ALERT_SELECT} FROM alerts
            WHERE tenant_id = %(tenant)s AND state <> 'cleared'
              AND ({" OR ".join(where)})
            ORDER BY opened_at DESC, alert_id DESC LIMIT %(limit)s""",
        params,
    ))
    levels: dict[str, LightLevelPublic | None] = {"onu_rx": None, "olt_rx": None,
                                                   "onu_tx": None}
    drift = None
    if onu is not None:
        # An offline ONU has no current reading, whatever was last stored.
        live = onu["online"] is not False
        reading = {k: onu[k] if live else None
                   for k in ("onu_rx_dbm", "olt_rx_dbm", "onu_tx_dbm")}
        levels = {"onu_rx": _level(reading["onu_rx_dbm"], ONU_RX),
                  "olt_rx": _level(reading["olt_rx_dbm"], OLT_RX),
                  "onu_tx": _level(reading["onu_tx_dbm"], ONU_TX)}
        if reading["onu_rx_dbm"] is not None and onu["baseline_rx_dbm"] is not None:
            drift = round(reading["onu_rx_dbm"] - onu["baseline_rx_dbm"], 2)
    return LinePublic(
        username=username,
        link=None if link is None else OnuLinkPublic(**link),
        onu=None if onu is None else _onu_public(onu),
        **levels,
        baseline_rx_dbm=None if onu is None else onu["baseline_rx_dbm"],
        drift_db=drift,
        alerts=[_alert_public(a, principal) for a in alerts],
    )
