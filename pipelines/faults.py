"""The fault dataflow: interface polls, ONU optics, traps and reachability -> alerts.

Run it with ``ispstream flow faults`` (recovery on; the alert delivery worker runs in
the same process), or build it in a test with ``build_flow(settings, ...)``.

Shape of the stream, step by step::

    snmp.ifstats + snmp.traps + onu.optical + device.status (Kafka)   Message
    -> parse                          IfStatsPoll | TrapEvent | OnuOpticalPoll | DeviceStatus
                                      | DeadLetter
    -> is_optics                      optics: OnuOpticalPoll, ONU traps (sent by the OLT)
                                      others: IfStatsPoll, link/restart traps, DeviceStatus
    -> by_device / interfaces (state per tenant/device: fault_rules.DeviceState)
                                      IfSample | InterfaceRow | DeviceStatusRow | AlertChange
    -> by_olt / optics (state per tenant/olt: fault_rules.OltState, PON correlation local)
                                      OnuSample | AlertChange
    -> link_subscribers (per alert)   AlertRecord (AlertEvent with affected subscribers)
    -> faults_db (PostgreSQL)         samples, current state, hourly rollups, alerts with
                                      history, pending deliveries; one transaction a batch
    -> alerts (Kafka)                 AlertEvent JSON, keyed tenant/alert key
    -> deadletter (Kafka)             DeadLetter JSON with the reason

Time is event time throughout (the poll's, trap's or status change's own time), so a
replay after a crash gives the same alerts with the same ids, and every write is an
upsert to a natural key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from functools import partial

import bytewax.operators as op
import psycopg
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from confluent_kafka import Message
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from ispstream import topics
from ispstream.contracts import (
    AlertEvent,
    DeadLetter,
    DeviceStatus,
    IfStatsPoll,
    OnuOpticalPoll,
    TrapEvent,
)
from ispstream.settings import Settings
from pipelines.fault_rules import (
    AlertChange,
    DeviceState,
    DeviceStatusRow,
    IfSample,
    InterfaceRow,
    OltState,
    OnuSample,
)
from pipelines.runtime import dead_letter_output, kafka_input, kafka_output, parse_event, run
from pipelines.sinks import PipelinedDbSink
from pipelines.telemetry_catalog import TelemetryCatalog

log = logging.getLogger(__name__)
STAGE = "flow.faults"

ONU_TRAPS = ("onu_los", "onu_dying_gasp", "onu_up")
LINK_TRAPS = ("link_down", "link_up")
DEFAULT_HOLD_S = 10.0  # per-ONU announcements wait this long (channel config hold_s)


# --- parsing --------------------------------------------------------------------------

def _check(ev: BaseModel) -> None:
    """What the contract allows but the rules cannot use."""
    if isinstance(ev, TrapEvent):
        if ev.kind in ONU_TRAPS and ev.pon is None and ev.onu_id is None:
            raise ValueError(f"{ev.kind} trap names neither a PON nor an ONU")
        if ev.kind in LINK_TRAPS and ev.if_index is None:
            raise ValueError(f"{ev.kind} trap without an ifIndex")


def parse_message(models: dict[str, type[BaseModel]], msg: Message):
    """Validate a message of any input topic against its contract (and ``_check``); bad
    ones become dead letters carrying the reason."""
    return parse_event(STAGE, models, _check, msg)


def is_event(x) -> bool:
    return not isinstance(x, DeadLetter)


def is_optics(ev) -> bool:
    """ONU optics and ONU traps go to the OLT's state; the rest to the device's."""
    return isinstance(ev, OnuOpticalPoll) or (isinstance(ev, TrapEvent)
                                              and ev.kind in ONU_TRAPS)


def device_key(ev) -> str:
    """``tenant/device``; for optics the OLT (an ONU trap's device is its OLT)."""
    if isinstance(ev, OnuOpticalPoll):
        return f"{ev.tenant_id}/{ev.olt_id}"
    return f"{ev.tenant_id}/{ev.device_id}"


# --- stateful steps (thin: the decisions are in fault_rules) ---------------------------

def detect_interfaces(catalog: TelemetryCatalog, state: DeviceState | None,
                      ev: IfStatsPoll | TrapEvent | DeviceStatus):
    """Per device: interface rules and reachability."""
    if state is None:
        state = DeviceState(ev.tenant_id, ev.device_id)
    th = catalog.thresholds(ev.tenant_id, ev.device_id, None)
    if isinstance(ev, IfStatsPoll):
        return state, state.on_poll(ev, th)
    if isinstance(ev, TrapEvent):
        return state, state.on_trap(ev, th)
    return state, state.on_status(ev, th)


def detect_optics(catalog: TelemetryCatalog, state: OltState | None,
                  ev: OnuOpticalPoll | TrapEvent):
    """Per OLT: ONU rules, PON and OLT correlation."""
    if isinstance(ev, OnuOpticalPoll):
        if state is None:
            state = OltState(ev.tenant_id, ev.olt_id)
        return state, state.on_poll(ev, catalog.thresholds(ev.tenant_id, ev.olt_id,
                                                           ev.profile))
    if state is None:
        state = OltState(ev.tenant_id, ev.device_id)
    return state, state.on_trap(ev, catalog.thresholds(ev.tenant_id, ev.device_id,
                                                       state.profile))


def is_keyed_alert(kv) -> bool:
    return isinstance(kv[1], AlertChange)


def value_of(kv):
    return kv[1]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert change as it is stored and published."""

    event: AlertEvent
    details: dict = field(default_factory=dict)
    note: str = ""
    history: bool = True
    onu_level: bool = False


def alert_record(catalog: TelemetryCatalog, c: AlertChange) -> tuple[str, AlertRecord]:
    """The change as an ``AlertEvent`` with the subscribers its ONUs serve, keyed
    ``tenant/key`` (so one alert's changes stay in order)."""
    subs: list[str] = []
    for r in c.onus:
        user = catalog.subscriber(c.tenant_id, c.device_id, r.pon, r.onu_id, r.serial)
        if user is not None and user not in subs:
            subs.append(user)
    ev = AlertEvent(tenant_id=c.tenant_id, alert_id=c.alert_id, key=c.key, kind=c.kind,
                    severity=c.severity, state=c.state, device_id=c.device_id,
                    object=c.object, title=c.title, explanation=c.explanation,
                    probable_cause=c.probable_cause, affected_subscribers=sorted(subs),
                    suppressed_by=c.suppressed_by, opened_at=c.opened_at,
                    changed_at=c.changed_at)
    details = dict(c.details)
    if len(c.onus) > 1:
        details["onus"] = [f"{r.pon}/{r.onu_id}" for r in c.onus]
    return f"{c.tenant_id}/{c.key}", AlertRecord(ev, details, c.note, c.history, c.onu_level)


def alert_kv(r: AlertRecord) -> tuple[bytes, bytes]:
    """An alert as an ``alerts`` message (``AlertEvent``), keyed tenant/alert key."""
    ev = r.event
    return f"{ev.tenant_id}/{ev.key}".encode(), ev.model_dump_json().encode()


# --- database --------------------------------------------------------------------------

_STAGING = {
    "_f_ifs": "tenant_id text, device_id text, if_index bigint, ts float8, "
              "oper_status smallint, in_bps float8, out_bps float8, in_util real, "
              "out_util real, discontinuity boolean",
    "_f_ifstate": "tenant_id text, device_id text, if_index bigint, name text, alias text, "
                  "oper_status smallint, admin_status smallint, high_speed_mbps integer, "
                  "last_change float8, updated_at float8",
    "_f_devstat": "tenant_id text, device_id text, reachable boolean, reason text, "
                  "changed_at float8",
    "_f_onu": "tenant_id text, olt_id text, pon text, onu_id text, ts float8, online boolean, "
              "onu_rx_dbm real, onu_tx_dbm real, olt_rx_dbm real, temperature_c real, "
              "voltage_v real, bias_ma real, serial text, baseline_rx_dbm real",
    "_f_alerts": "seq integer, tenant_id text, alert_id text, key text, kind text, "
                 "severity text, state text, device_id text, object text, title text, "
                 "explanation text, probable_cause text, affected_subscribers text[], "
                 "suppressed_by text, details jsonb, opened_at float8, changed_at float8, "
                 "note text, history boolean, onu_level boolean, payload jsonb, "
                 "latest boolean, last_open boolean",
}
_HOUR = "date_bin('1 hour', to_timestamp(ts), timestamptz '2000-01-01 00:00:00+00')"

_IF_SAMPLES = """
INSERT INTO if_samples (tenant_id, device_id, if_index, ts, oper_status, in_bps, out_bps,
                        in_util, out_util, discontinuity)
SELECT tenant_id, device_id, if_index, to_timestamp(ts), oper_status, in_bps, out_bps,
       in_util, out_util, discontinuity FROM _f_ifs
ON CONFLICT (tenant_id, device_id, if_index, ts) DO UPDATE
SET oper_status = excluded.oper_status, in_bps = excluded.in_bps, out_bps = excluded.out_bps,
    in_util = excluded.in_util, out_util = excluded.out_util,
    discontinuity = excluded.discontinuity
"""
# Every hour a batch touches is recomputed from its samples: replays change nothing. The
# LATERAL form reads each touched (object, hour) through the primary key, whatever the
# planner guesses about the staging table.
_IF_HOURLY = f"""
INSERT INTO if_hourly (tenant_id, device_id, if_index, hour, in_bps_avg, out_bps_avg,
                       in_bps_max, out_bps_max, samples)
SELECT t.tenant_id, t.device_id, t.if_index, t.hour, a.*
FROM (SELECT DISTINCT tenant_id, device_id, if_index, {_HOUR} AS hour FROM _f_ifs) t
CROSS JOIN LATERAL (
  SELECT avg(s.in_bps), avg(s.out_bps), max(s.in_bps), max(s.out_bps), count(*)
  FROM if_samples s
  WHERE s.tenant_id = t.tenant_id AND s.device_id = t.device_id AND s.if_index = t.if_index
    AND s.ts >= t.hour AND s.ts < t.hour + interval '1 hour') a
ON CONFLICT (tenant_id, device_id, if_index, hour) DO UPDATE
SET in_bps_avg = excluded.in_bps_avg, out_bps_avg = excluded.out_bps_avg,
    in_bps_max = excluded.in_bps_max, out_bps_max = excluded.out_bps_max,
    samples = excluded.samples
"""
_INTERFACES = """
INSERT INTO interfaces (tenant_id, device_id, if_index, name, alias, oper_status,
                        admin_status, high_speed_mbps, last_change, updated_at)
SELECT tenant_id, device_id, if_index, name, alias, oper_status, admin_status,
       high_speed_mbps, to_timestamp(last_change), to_timestamp(updated_at) FROM _f_ifstate
ON CONFLICT (tenant_id, device_id, if_index) DO UPDATE
SET name = excluded.name, alias = excluded.alias, oper_status = excluded.oper_status,
    admin_status = excluded.admin_status, high_speed_mbps = excluded.high_speed_mbps,
    last_change = excluded.last_change, updated_at = excluded.updated_at
WHERE interfaces.updated_at <= excluded.updated_at
"""
_DEVICE_STATUS = """
INSERT INTO device_status (tenant_id, device_id, reachable, reason, changed_at)
SELECT tenant_id, device_id, reachable, reason, to_timestamp(changed_at) FROM _f_devstat
ON CONFLICT (tenant_id, device_id) DO UPDATE
SET reachable = excluded.reachable, reason = excluded.reason, changed_at = excluded.changed_at
WHERE device_status.changed_at <= excluded.changed_at
"""
_ONU_SAMPLES = """
INSERT INTO onu_optical_samples (tenant_id, olt_id, pon, onu_id, ts, online, onu_rx_dbm,
                                 onu_tx_dbm, olt_rx_dbm, temperature_c, voltage_v, bias_ma)
SELECT tenant_id, olt_id, pon, onu_id, to_timestamp(ts), online, onu_rx_dbm, onu_tx_dbm,
       olt_rx_dbm, temperature_c, voltage_v, bias_ma FROM _f_onu
ON CONFLICT (tenant_id, olt_id, pon, onu_id, ts) DO UPDATE
SET online = excluded.online, onu_rx_dbm = excluded.onu_rx_dbm,
    onu_tx_dbm = excluded.onu_tx_dbm, olt_rx_dbm = excluded.olt_rx_dbm,
    temperature_c = excluded.temperature_c, voltage_v = excluded.voltage_v,
    bias_ma = excluded.bias_ma
"""
_ONUS = """
INSERT INTO onus (tenant_id, olt_id, pon, onu_id, serial, online, onu_rx_dbm, onu_tx_dbm,
                  olt_rx_dbm, baseline_rx_dbm, last_seen)
SELECT DISTINCT ON (tenant_id, olt_id, pon, onu_id)
       tenant_id, olt_id, pon, onu_id, serial, online, onu_rx_dbm, onu_tx_dbm, olt_rx_dbm,
       baseline_rx_dbm, to_timestamp(ts)
FROM _f_onu ORDER BY tenant_id, olt_id, pon, onu_id, ts DESC
ON CONFLICT (tenant_id, olt_id, pon, onu_id) DO UPDATE
SET serial = coalesce(excluded.serial, onus.serial), online = excluded.online,
    onu_rx_dbm = excluded.onu_rx_dbm, onu_tx_dbm = excluded.onu_tx_dbm,
    olt_rx_dbm = excluded.olt_rx_dbm,
    baseline_rx_dbm = coalesce(excluded.baseline_rx_dbm, onus.baseline_rx_dbm),
    last_seen = excluded.last_seen
WHERE onus.last_seen <= excluded.last_seen
"""
_ONU_HOURLY = f"""
INSERT INTO onu_optical_hourly (tenant_id, olt_id, pon, onu_id, hour, onu_rx_avg, onu_rx_min,
                                olt_rx_avg, olt_rx_min, samples, offline_samples)
SELECT t.tenant_id, t.olt_id, t.pon, t.onu_id, t.hour, a.*
FROM (SELECT DISTINCT tenant_id, olt_id, pon, onu_id, {_HOUR} AS hour FROM _f_onu) t
CROSS JOIN LATERAL (
  SELECT avg(s.onu_rx_dbm), min(s.onu_rx_dbm), avg(s.olt_rx_dbm), min(s.olt_rx_dbm),
         count(*), count(*) FILTER (WHERE NOT s.online)
  FROM onu_optical_samples s
  WHERE s.tenant_id = t.tenant_id AND s.olt_id = t.olt_id AND s.pon = t.pon
    AND s.onu_id = t.onu_id AND s.ts >= t.hour AND s.ts < t.hour + interval '1 hour') a
ON CONFLICT (tenant_id, olt_id, pon, onu_id, hour) DO UPDATE
SET onu_rx_avg = excluded.onu_rx_avg, onu_rx_min = excluded.onu_rx_min,
    olt_rx_avg = excluded.olt_rx_avg, olt_rx_min = excluded.olt_rx_min,
    samples = excluded.samples, offline_samples = excluded.offline_samples
"""

_ALERT_COLS = ("tenant_id, alert_id, key, kind, severity, state, device_id, object, title, "
               "explanation, probable_cause, affected_subscribers, suppressed_by, details, "
               "opened_at, last_seen_at, cleared_at")
# The API may have acknowledged an alert meanwhile: only clearing overrides that. An
# older change (a replay of what was already written) never overwrites a newer one.
_UPSERT_ALERTS = f"""
INSERT INTO alerts ({_ALERT_COLS})
SELECT tenant_id, alert_id, key, kind, severity, state, device_id, object, title,
       explanation, probable_cause, affected_subscribers, suppressed_by, details,
       to_timestamp(opened_at), to_timestamp(changed_at),
       CASE WHEN state = 'cleared' THEN to_timestamp(changed_at) END
FROM _f_alerts WHERE latest AND (state = 'cleared') = %s
ON CONFLICT (tenant_id, alert_id) DO UPDATE
SET kind = excluded.kind, severity = excluded.severity,
    state = CASE WHEN excluded.state = 'cleared' THEN 'cleared'
                 WHEN alerts.state = 'acknowledged' THEN 'acknowledged'
                 ELSE excluded.state END,
    device_id = excluded.device_id, object = excluded.object, title = excluded.title,
    explanation = excluded.explanation, probable_cause = excluded.probable_cause,
    affected_subscribers = excluded.affected_subscribers,
    suppressed_by = excluded.suppressed_by, details = excluded.details,
    last_seen_at = excluded.last_seen_at, cleared_at = excluded.cleared_at
WHERE alerts.last_seen_at <= excluded.last_seen_at
"""
# A live row of the same key under another id was left behind (e.g. the flow's state was
# reset): the new episode supersedes it, so there is one live row per key.
_SUPERSEDE = """
WITH sup AS (
  UPDATE alerts a
  SET state = 'cleared', cleared_at = greatest(a.opened_at, to_timestamp(s.opened_at)),
      last_seen_at = greatest(a.last_seen_at, to_timestamp(s.opened_at))
  FROM _f_alerts s
  WHERE s.latest AND s.state <> 'cleared' AND a.tenant_id = s.tenant_id AND a.key = s.key
    AND a.alert_id <> s.alert_id AND a.state <> 'cleared'
  RETURNING a.tenant_id, a.alert_id, a.cleared_at, s.alert_id AS by_id)
INSERT INTO alert_history (tenant_id, alert_id, at, state, note)
SELECT tenant_id, alert_id, cleared_at, 'cleared', 'superseded by ' || by_id FROM sup
ON CONFLICT DO NOTHING
"""
_HISTORY = """
INSERT INTO alert_history (tenant_id, alert_id, at, state, note)
SELECT tenant_id, alert_id, to_timestamp(changed_at), state, note FROM _f_alerts
WHERE history ORDER BY seq
ON CONFLICT DO NOTHING
"""
_SEV = "ARRAY['info','warning','minor','major','critical']"
# An opening is announced on every enabled channel whose min_severity it meets, unless it
# is suppressed; per-ONU alerts wait hold_s first (a PON alert may explain them). A row
# skipped earlier (suppressed then) is armed again when the alert is no longer suppressed.
_DELIVER_OPEN = f"""
INSERT INTO alert_deliveries (tenant_id, alert_id, channel_id, state, status, attempts,
                              next_attempt_at, payload, updated_at)
SELECT s.tenant_id, s.alert_id, c.id, 'open', 'pending', 0,
       now() + make_interval(secs => CASE WHEN NOT s.onu_level THEN 0
         WHEN c.config->>'hold_s' ~ '^[0-9]+(\\.[0-9]+)?$' THEN (c.config->>'hold_s')::float8
         ELSE %s END),
       s.payload, now()
FROM _f_alerts s
JOIN alert_channels c ON c.tenant_id = s.tenant_id AND c.enabled
 AND array_position({_SEV}, s.severity) >= array_position({_SEV}, c.min_severity)
WHERE s.last_open AND s.suppressed_by IS NULL
ON CONFLICT (tenant_id, alert_id, channel_id, state) DO UPDATE
SET payload = excluded.payload, status = 'pending',
    attempts = CASE WHEN alert_deliveries.status = 'skipped' THEN 0
                    ELSE alert_deliveries.attempts END,
    next_attempt_at = CASE WHEN alert_deliveries.status = 'skipped'
                           THEN excluded.next_attempt_at
                           ELSE alert_deliveries.next_attempt_at END,
    last_error = CASE WHEN alert_deliveries.status = 'skipped' THEN NULL
                      ELSE alert_deliveries.last_error END,
    updated_at = now()
WHERE alert_deliveries.status IN ('pending', 'skipped')
"""
# A clearing is announced wherever the opening was (or is about to be).
_DELIVER_CLEARED = """
INSERT INTO alert_deliveries (tenant_id, alert_id, channel_id, state, status, attempts,
                              next_attempt_at, payload, updated_at)
SELECT s.tenant_id, s.alert_id, d.channel_id, 'cleared', 'pending', 0, now(), s.payload,
       now()
FROM _f_alerts s
JOIN alert_deliveries d ON d.tenant_id = s.tenant_id AND d.alert_id = s.alert_id
 AND d.state = 'open' AND d.status IN ('pending', 'delivered')
WHERE s.latest AND s.state = 'cleared'
ON CONFLICT DO NOTHING
"""


def _last_by(items, key, version):
    """The item with the highest ``version`` per ``key`` (a statement may touch a row
    only once)."""
    best: dict = {}
    for it in items:
        k = key(it)
        prev = best.get(k)
        if prev is None or version(prev) <= version(it):
            best[k] = it
    return best.values()


def _copy(cur: psycopg.Cursor, table: str, rows) -> None:
    with cur.copy(f"COPY {table} FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def write_faults(conn: psycopg.Connection, items: list,
                 hold_s: float = DEFAULT_HOLD_S) -> dict[str, int]:
    """Write one batch of the fault flow's output in one transaction; returns counts.

    Samples upsert on their natural keys and the hours they touch are recomputed;
    current state (interfaces, ONUs, reachability) only moves forward in time; alerts
    upsert by (tenant, alert_id) with a history row per change that matters, and the
    announcements they cause are queued in ``alert_deliveries``."""
    ifs, ifstate, devstat, onus, alerts = [], [], [], [], []
    for it in items:
        t = type(it)
        if t is OnuSample:
            onus.append(it)
        elif t is IfSample:
            ifs.append(it)
        elif t is InterfaceRow:
            ifstate.append(it)
        elif t is AlertRecord:
            alerts.append(it)
        elif t is DeviceStatusRow:
            devstat.append(it)
        else:
            raise TypeError(f"unexpected item {t.__name__}")
    with conn.transaction():
        cur = conn.cursor()
        for table, cols in _STAGING.items():
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({cols}) "
                        "ON COMMIT DELETE ROWS")
        if ifs:
            _copy(cur, "_f_ifs", (
                (s.tenant_id, s.device_id, s.if_index, s.ts, s.oper_status, s.in_bps,
                 s.out_bps, s.in_util, s.out_util, s.discontinuity)
                for s in _last_by(ifs, lambda s: (s.tenant_id, s.device_id, s.if_index,
                                                  s.ts), lambda s: 0)))
            cur.execute(_IF_SAMPLES)
            cur.execute(_IF_HOURLY)
        if ifstate:
            _copy(cur, "_f_ifstate", (
                (r.tenant_id, r.device_id, r.if_index, r.name, r.alias, r.oper_status,
                 r.admin_status, r.high_speed_mbps, r.last_change, r.updated_at)
                for r in _last_by(ifstate, lambda r: (r.tenant_id, r.device_id, r.if_index),
                                  lambda r: r.updated_at)))
            cur.execute(_INTERFACES)
        if devstat:
            _copy(cur, "_f_devstat", (
                (r.tenant_id, r.device_id, r.reachable, r.reason, r.changed_at)
                for r in _last_by(devstat, lambda r: (r.tenant_id, r.device_id),
                                  lambda r: r.changed_at)))
            cur.execute(_DEVICE_STATUS)
        if onus:
            _copy(cur, "_f_onu", (
                (s.tenant_id, s.olt_id, s.pon, s.onu_id, s.ts, s.online, s.onu_rx_dbm,
                 s.onu_tx_dbm, s.olt_rx_dbm, s.temperature_c, s.voltage_v, s.bias_ma,
                 s.serial, s.baseline_rx_dbm)
                for s in _last_by(onus, lambda s: (s.tenant_id, s.olt_id, s.pon, s.onu_id,
                                                   s.ts), lambda s: 0)))
            cur.execute(_ONU_SAMPLES)
            cur.execute(_ONUS)
            cur.execute(_ONU_HOURLY)
        if alerts:
            _write_alerts(cur, alerts, hold_s)
    return {"if_samples": len(ifs), "interfaces": len(ifstate), "device_status": len(devstat),
            "onu_samples": len(onus), "alert_changes": len(alerts)}


def _write_alerts(cur: psycopg.Cursor, alerts: list[AlertRecord], hold_s: float) -> None:
    latest: dict[str, int] = {}
    last_open: dict[str, int] = {}
    for i, r in enumerate(alerts):
        latest[r.event.alert_id] = i
        if r.event.state != "cleared":
            last_open[r.event.alert_id] = i
    rows = []
    for i, r in enumerate(alerts):
        e = r.event
        rows.append((i, e.tenant_id, e.alert_id, e.key, e.kind, e.severity, e.state,
                     e.device_id, e.object, e.title, e.explanation, e.probable_cause,
                     list(e.affected_subscribers), e.suppressed_by, Jsonb(r.details),
                     e.opened_at, e.changed_at, r.note, r.history, r.onu_level,
                     Jsonb(e.model_dump(mode="json")), latest[e.alert_id] == i,
                     last_open.get(e.alert_id) == i))
    _copy(cur, "_f_alerts", rows)
    cur.execute(_UPSERT_ALERTS, (True,))    # clearings first: they free their keys
    cur.execute(_SUPERSEDE)
    cur.execute(_UPSERT_ALERTS, (False,))
    cur.execute(_HISTORY)
    cur.execute(_DELIVER_OPEN, (hold_s,))
    cur.execute(_DELIVER_CLEARED)


def build_db_sink(settings: Settings) -> PipelinedDbSink:
    return PipelinedDbSink(settings.dsn(), write_faults, "faults",
                           partitions=settings.db_writers)


# --- the dataflow ----------------------------------------------------------------------

def build_flow(
    settings: Settings,
    *,
    catalog: TelemetryCatalog | None = None,
    db_sink: Sink | None = None,
    tail: bool = True,
) -> Dataflow:
    """Build the fault dataflow from settings (tests may pass their own catalog/sink)."""
    catalog = catalog or TelemetryCatalog(settings.dsn(), settings.inventory_refresh_s)
    catalog.start()
    models: dict[str, type[BaseModel]] = {
        settings.topic(topics.SNMP_IFSTATS): IfStatsPoll,
        settings.topic(topics.SNMP_TRAPS): TrapEvent,
        settings.topic(topics.ONU_OPTICAL): OnuOpticalPoll,
        settings.topic(topics.DEVICE_STATUS): DeviceStatus,
    }

    flow = Dataflow("faults")
    inp = kafka_input("faults_in", flow, settings, list(models), tail)
    # librdkafka Message
    parsed = op.map("parse", inp, partial(parse_message, models))
    # IfStatsPoll | TrapEvent | OnuOpticalPoll | DeviceStatus | DeadLetter
    valid = op.branch("valid", parsed, is_event)
    # trues: events; falses: DeadLetter
    optics = op.branch("is_optics", valid.trues, is_optics)
    # trues: OnuOpticalPoll | ONU TrapEvent; falses: IfStatsPoll | TrapEvent | DeviceStatus
    by_device = op.key_on("by_device", optics.falses, device_key)
    # (tenant/device, IfStatsPoll | TrapEvent | DeviceStatus)
    if_out = op.stateful_flat_map("interfaces", by_device, partial(detect_interfaces, catalog))
    # (tenant/device, IfSample | InterfaceRow | DeviceStatusRow | AlertChange)
    by_olt = op.key_on("by_olt", optics.trues, device_key)
    # (tenant/olt, OnuOpticalPoll | TrapEvent)
    onu_out = op.stateful_flat_map("optics", by_olt, partial(detect_optics, catalog))
    # (tenant/olt, OnuSample | AlertChange)
    detected = op.merge("detected", if_out, onu_out)
    # (tenant/device, row | AlertChange)
    is_alert = op.branch("is_alert", detected, is_keyed_alert)
    # trues: (key, AlertChange); falses: (tenant/device, row)
    alerts = op.map("link_subscribers", op.map("unkey_alerts", is_alert.trues, value_of),
                    partial(alert_record, catalog))
    # (tenant/alert key, AlertRecord)
    to_db = op.merge("to_db", is_alert.falses, alerts)
    # (key, row | AlertRecord)
    op.output("faults_db", to_db, db_sink or build_db_sink(settings))
    kafka_output("alerts_out", alerts, settings, topics.ALERTS, alert_kv)
    # AlertEvent JSON keyed tenant/key
    dead_letter_output(valid.falses, settings)
    return flow


def main(settings: Settings, workers: int = 1) -> int:
    """Run the fault flow in this process with recovery (resumes where it stopped), and
    the alert delivery worker beside it on its own thread."""
    from pipelines.alert_delivery import AlertDelivery

    flow = build_flow(settings)
    delivery = AlertDelivery(settings.dsn())
    delivery.start()
    try:
        return run(flow, settings, settings.faults_recovery_dir, workers)
    finally:
        delivery.stop()
