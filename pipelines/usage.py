"""The usage dataflow: accounting events -> session deltas -> rated usage -> database.

Run it with ``ispstream flow usage`` (recovery on), or build it in a test with
``build_flow(settings, ...)`` and run it with ``bytewax.testing.run_main``.

Shape of the stream, step by step::

    radius.acct (Kafka)                      KafkaSourceMessage
    -> parse                                 AcctRecord | DeadLetter
    -> nas_clock (per NAS: route to shards, event-time ticks)
    -> sessions (state per NAS shard)        SessionDelta | SessionSnapshot
    -> by_subscriber / rate (per subscriber) RatedPiece | QuotaAction
    -> usage_db (PostgreSQL)                 rated pieces + session snapshots, one txn/batch
    -> usage.rated (Kafka)                   RatedUsage JSON, keyed tenant/username
    -> actions (Kafka)                       ActionEvent JSON, keyed tenant/username
    -> deadletter (Kafka)                    DeadLetter JSON with the reason
"""

from __future__ import annotations

import json
import json.encoder
import logging
import zlib
from dataclasses import dataclass

from functools import partial

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from pydantic import ValidationError

from ispstream import topics
from ispstream.contracts import AcctEvent, ActionEvent, DeadLetter
from ispstream.settings import Settings
from pipelines.catalog import Catalog
from pipelines.runtime import (consumer_error_letter, dead_letter, dead_letter_message,
                               input_config, run)
from pipelines.sinks import UsageDbSink
from rating.policies import QuotaAction, rate_and_enforce
from rating.sessions import AcctRecord, NasState, SessionDelta, event_time, total
from rating.tariff import RatedPiece, SubscriberUsage

log = logging.getLogger(__name__)
STAGE = "flow.usage"


# --- pure step functions (unit-testable without Bytewax) ----------------------------

def record_from_event(ev: AcctEvent) -> AcctRecord:
    """Translate the collector's event into rating's input (64-bit totals, event time)."""
    return AcctRecord(
        tenant_id=ev.tenant_id,
        nas_id=ev.nas_id,
        session_id=ev.session_id,
        status=ev.status,
        username=ev.username,
        event_time=event_time(ev.event_timestamp, ev.received_at, ev.delay_time),
        upload=total(ev.input_octets, ev.input_gigawords),
        download=total(ev.output_octets, ev.output_gigawords),
        interim_interval=ev.interim_interval,
        session_time=ev.session_time,
        framed_ip=ev.framed_ip,
        terminate_cause=ev.terminate_cause,
    )


def parse_message(msg: KafkaSourceMessage) -> AcctRecord | DeadLetter:
    """Validate one ``radius.acct`` message against the contract; bad ones become
    dead letters carrying the reason."""
    try:
        if msg.value is None:
            raise ValueError("empty message value")
        return record_from_event(AcctEvent.model_validate_json(msg.value))
    except (ValidationError, ValueError) as exc:
        reason = exc.errors(include_url=False) if isinstance(exc, ValidationError) else str(exc)
        return dead_letter(STAGE, msg, f"invalid radius.acct record: {reason}")


def is_record(x) -> bool:
    return isinstance(x, AcctRecord)


def is_keyed_delta(kv) -> bool:
    return isinstance(kv[1], SessionDelta)


NAS_WIDE = ("Accounting-On", "Accounting-Off")
TICK_EVERY = 60  # seconds of NAS event time between clock ticks to every shard


@dataclass(frozen=True, slots=True)
class ClockTick:
    """The NAS's event-time clock reached ``at``: shards sweep for stale sessions."""

    at: int


def nas_key(rec: AcctRecord) -> str:
    return f"{rec.tenant_id}/{rec.nas_id}"


def subscriber_key(delta: SessionDelta) -> str:
    return f"{delta.tenant_id}/{delta.username or ''}"


def route_to_shards(shards: int, clock: tuple[int, int] | None, rec: AcctRecord):
    """Per NAS: route a record to its session shard and keep the NAS's event-time clock.

    Shard = stable hash of the session id, so each state snapshot stays small and one big
    NAS spreads over workers. Accounting-On/Off concern every session of the NAS and go
    to every shard. Every ``TICK_EVERY`` seconds of NAS event time, each shard gets a
    ``ClockTick``, so stale sessions close even in a shard that is quiet itself.
    State: (watermark, time of the last tick).
    """
    base = f"{rec.tenant_id}/{rec.nas_id}/"
    if rec.status in NAS_WIDE:
        out = [(f"{base}{i}", rec) for i in range(shards)]
    else:
        out = [(f"{base}{zlib.crc32(rec.session_id.encode()) % shards}", rec)]
    watermark, last_tick = clock or (rec.event_time, rec.event_time)
    if rec.event_time > watermark:
        watermark = rec.event_time
    if watermark - last_tick >= TICK_EVERY:
        last_tick = watermark
        out.extend((f"{base}{i}", ClockTick(watermark)) for i in range(shards))
    return (watermark, last_tick), out


def track_sessions(cfg: dict, state: NasState | None, item: AcctRecord | ClockTick):
    """Per NAS shard: session state machine -> deltas and session snapshots."""
    if isinstance(item, ClockTick):
        return state, (state.sweep(item.at) if state is not None else [])
    if state is None:
        state = NasState(**cfg)
    return state, state.apply(item)


def rate_delta(catalog: Catalog, state: SubscriberUsage | None, delta: SessionDelta):
    """Per subscriber: rate one delta against the subscriber's current tariff; the quota
    actions its pieces cause (thresholds reached, resumes) follow the pieces."""
    if state is None:
        state = SubscriberUsage()
    pieces, actions = rate_and_enforce(state, delta,
                                       catalog.tariff(delta.tenant_id, delta.username))
    if actions:
        for a in actions:
            log.info("quota action %s %s for %s/%s: %s (intent %s)", a.kind,
                     a.threshold_pct or "", a.tenant_id, a.username, a.reason, a.intent_id)
        pieces.extend(actions)
    return state, pieces


def is_keyed_action(kv) -> bool:
    return type(kv[1]) is QuotaAction


def value_of(kv):
    return kv[1]


_str = json.encoder.encode_basestring  # the C string encoder json.dumps itself uses


def rated_body(p: RatedPiece) -> str:
    """The ``usage.rated`` JSON of a piece: exactly what ``json.dumps`` of the contract's
    fields gives (compact), built from a template on the hot path; free text is escaped
    with json's own string encoder, numbers and identifiers are written as they are."""
    plan = "null" if p.plan_id is None else _str(p.plan_id)
    flags = ",".join(f'"{f}"' for f in p.flags)  # fixed identifiers, nothing to escape
    return (
        f'{{"v":1,"tenant_id":{_str(p.tenant_id)},"username":{_str(p.username)},'
        f'"nas_id":{_str(p.nas_id)},"session_id":{_str(p.session_id)},'
        f'"record_id":"{p.record_id}","piece":{p.piece},"ts_start":{p.ts_start},'
        f'"ts":{p.ts},"plan_id":{plan},"cycle_start":"{p.cycle_start.isoformat()}",'
        f'"upload_bytes":{p.upload_bytes},"download_bytes":{p.download_bytes},'
        f'"billable_bytes":{p.billable_bytes},"zero_rated_bytes":{p.zero_rated_bytes},'
        f'"over_quota_bytes":{p.over_quota_bytes},"charge":"{p.charge}",'
        f'"currency":{_str(p.currency)},"rate_multiplier":"{p.rate_multiplier}",'
        f'"flags":[{flags}]}}')


def rated_message(p: RatedPiece) -> KafkaSinkMessage:
    """A rated piece as a ``usage.rated`` message keyed by subscriber."""
    return KafkaSinkMessage(key=f"{p.tenant_id}/{p.username}".encode(),
                            value=rated_body(p).encode())


def action_message(a: QuotaAction) -> KafkaSinkMessage:
    """A quota action as an ``actions`` message (``ActionEvent``) keyed by subscriber."""
    ev = ActionEvent(intent_id=a.intent_id, tenant_id=a.tenant_id, username=a.username,
                     kind=a.kind, rate=a.rate, source=a.source, reason=a.reason,
                     threshold_pct=a.threshold_pct, cycle_start=a.cycle_start.isoformat(),
                     cycle_end=a.cycle_end.isoformat(), at=a.at)
    return KafkaSinkMessage(key=f"{a.tenant_id}/{a.username}".encode(),
                            value=ev.model_dump_json().encode())




# --- the dataflow ---------------------------------------------------------------------

def build_flow(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    db_sink: Sink | None = None,
    tail: bool = True,
) -> Dataflow:
    """Build the usage dataflow from settings (tests may pass their own catalog/sink)."""
    brokers = settings.require_kafka().split(",")
    kcfg = dict(settings.kafka_config)
    catalog = catalog or Catalog(settings.dsn(), settings.inventory_refresh_s)
    catalog.start()
    session_cfg = {"default_interim_interval": settings.default_interim_interval_s,
                   "stale_factor": settings.stale_factor}

    flow = Dataflow("usage")
    inp = kop.input("acct_in", flow, brokers=brokers, topics=[settings.topic(topics.RADIUS_ACCT)],
                    tail=tail, add_config=input_config(settings))
    # KafkaSourceMessage (oks) | KafkaError (errs)
    parsed = op.map("parse", inp.oks, parse_message)
    # AcctRecord | DeadLetter
    valid = op.branch("valid", parsed, is_record)
    # trues: AcctRecord; falses: DeadLetter
    consumer_errs = op.map("consumer_errors", inp.errs,
                           partial(consumer_error_letter, STAGE))
    dead = op.merge("dead", valid.falses, consumer_errs)
    # DeadLetter
    by_nas = op.key_on("by_nas", valid.trues, nas_key)
    # (tenant/nas, AcctRecord)
    routed = op.stateful_flat_map("nas_clock", by_nas,
                                  partial(route_to_shards, settings.session_shards))
    # (tenant/nas, (tenant/nas/shard, AcctRecord | ClockTick))
    by_shard = op.map("by_shard", routed, value_of)
    # (tenant/nas/shard, AcctRecord | ClockTick); On/Off and ticks go to every shard
    session_out = op.stateful_flat_map("sessions", by_shard,
                                       partial(track_sessions, session_cfg))
    # (tenant/nas/shard, SessionDelta | SessionSnapshot)
    split = op.branch("is_delta", session_out, is_keyed_delta)
    # trues: (key, SessionDelta); falses: (key, SessionSnapshot)
    by_sub = op.key_on("by_subscriber", op.map("unkey_deltas", split.trues, value_of),
                       subscriber_key)
    # (tenant/username, SessionDelta)
    rate_out = op.stateful_flat_map("rate", by_sub, partial(rate_delta, catalog))
    # (tenant/username, RatedPiece | QuotaAction)
    is_action = op.branch("is_action", rate_out, is_keyed_action)
    # trues: (tenant/username, QuotaAction); falses: (tenant/username, RatedPiece)
    rated_keyed = is_action.falses
    to_db = op.merge("to_db", rated_keyed, split.falses)
    # (key, RatedPiece | SessionSnapshot)
    op.output("usage_db", to_db,
              db_sink or UsageDbSink(settings.dsn(), partitions=settings.db_writers))
    rated = op.map("unkey_rated", rated_keyed, value_of)
    # RatedPiece
    kop.output("usage_rated_out", op.map("rated_json", rated, rated_message), brokers=brokers,
               topic=settings.topic(topics.USAGE_RATED), add_config=kcfg)
    actions = op.map("unkey_actions", is_action.trues, value_of)
    # QuotaAction (not to the database: the enforcer records what it receives)
    kop.output("actions_out", op.map("action_json", actions, action_message),
               brokers=brokers, topic=settings.topic(topics.ACTIONS), add_config=kcfg)
    kop.output("deadletter_out", op.map("dead_json", dead, dead_letter_message),
               brokers=brokers, topic=settings.topic(topics.DEADLETTER), add_config=kcfg)
    return flow


def main(settings: Settings, workers: int = 1) -> int:
    """Run the usage flow in this process with recovery (resumes where it stopped)."""
    return run(build_flow(settings), settings, settings.recovery_dir, workers)
