"""The usage dataflow: accounting events -> session deltas -> rated usage -> database.

Run it with ``ispstream flow usage`` (recovery on), or build it in a test with
``build_flow(settings, ...)`` and run it with ``bytewax.testing.run_main``.

Shape of the stream, step by step::

    radius.acct (Kafka)                      librdkafka messages
    -> parse                                 (tenant/nas, AcctRecord) | DeadLetter
    -> nas_clock (per NAS: route to shards, event-time ticks)
    -> sessions (state per NAS shard)        SessionDelta | SessionSnapshot
    -> by_subscriber / rate (per subscriber) RatedPiece | QuotaAction
    -> usage_db (PostgreSQL)                 rated pieces + session snapshots, one txn/batch
    -> usage.rated (Kafka)                   RatedUsage JSON, keyed tenant/username
    -> actions (Kafka)                       ActionEvent JSON, keyed tenant/username
    -> deadletter (Kafka)                    DeadLetter JSON with the reason
"""

from __future__ import annotations

import json.encoder
import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache, partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from confluent_kafka import Message
from pydantic import ValidationError

from ispstream import topics
from ispstream.contracts import AcctEvent, ActionEvent, DeadLetter
from ispstream.settings import Settings
from pipelines.catalog import Catalog
from pipelines.runtime import (consumer_error_letter, dead_letter, dead_letter_output,
                               kafka_input, kafka_output, run, stateful_apply)
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
        ev.tenant_id, ev.nas_id, ev.session_id, ev.status, ev.username,
        event_time(ev.event_timestamp, ev.received_at, ev.delay_time),
        total(ev.input_octets, ev.input_gigawords),
        total(ev.output_octets, ev.output_gigawords),
        ev.interim_interval, ev.session_time, ev.framed_ip, ev.terminate_cause)


def parse_message(msg: Message) -> tuple[str, AcctRecord] | DeadLetter:
    """Validate one ``radius.acct`` message against the contract and key it by NAS; bad
    ones (and consumer errors) become dead letters carrying the reason."""
    if msg.error() is not None:
        return consumer_error_letter(STAGE, msg)
    value = msg.value()
    try:
        if value is None:
            raise ValueError("empty message value")
        rec = record_from_event(AcctEvent.model_validate_json(value))
    except (ValidationError, ValueError) as exc:
        reason = exc.errors(include_url=False) if isinstance(exc, ValidationError) else str(exc)
        return dead_letter(STAGE, msg, f"invalid radius.acct record: {reason}")
    return f"{rec.tenant_id}/{rec.nas_id}", rec


def is_keyed(x) -> bool:
    return type(x) is tuple


NAS_WIDE = ("Accounting-On", "Accounting-Off")
TICK_EVERY = 60  # seconds of NAS event time between clock ticks to every shard


@dataclass(frozen=True, slots=True)
class ClockTick:
    """The NAS's event-time clock reached ``at``: shards sweep for stale sessions."""

    at: int


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


def track_sessions(state: NasState, item: AcctRecord | ClockTick) -> list:
    """Per NAS shard: the session state machine -> deltas and session snapshots."""
    if type(item) is ClockTick:
        return state.sweep(item.at)
    return state.apply(item)


def by_subscriber(kv):
    """Re-key a session delta by subscriber (rating's key); snapshots keep their key."""
    item = kv[1]
    if type(item) is SessionDelta:
        return f"{item.tenant_id}/{item.username or ''}", item
    return kv


def is_keyed_delta(kv) -> bool:
    return type(kv[1]) is SessionDelta


def rate_delta(catalog: Catalog, state: SubscriberUsage, delta: SessionDelta) -> list:
    """Per subscriber: rate one delta against the subscriber's current tariff; the quota
    actions its pieces cause (thresholds reached, resumes) follow the pieces."""
    pieces, actions = rate_and_enforce(state, delta,
                                       catalog.tariff(delta.tenant_id, delta.username))
    if actions:
        for a in actions:
            log.info("quota action %s %s for %s/%s: %s (intent %s)", a.kind,
                     a.threshold_pct or "", a.tenant_id, a.username, a.reason, a.intent_id)
        pieces.extend(actions)
    return pieces


def is_keyed_action(kv) -> bool:
    return type(kv[1]) is QuotaAction


def value_of(kv):
    return kv[1]


_str = json.encoder.encode_basestring  # the C string encoder json.dumps itself uses


@lru_cache(maxsize=64)
def _iso(d) -> str:
    return d.isoformat()  # a handful of cycle starts, formatted once


def rated_body(p: RatedPiece) -> str:
    """The ``usage.rated`` JSON of a piece: exactly what ``json.dumps`` of the contract's
    fields gives (compact), built from a template on the hot path; free text is escaped
    with json's own string encoder, numbers and identifiers are written as they are."""
    plan = "null" if p.plan_id is None else _str(p.plan_id)
    # flags are fixed identifiers, nothing to escape
    flags = ",".join([f'"{f}"' for f in p.flags]) if p.flags else ""
    return (
        f'{{"v":1,"tenant_id":{_str(p.tenant_id)},"username":{_str(p.username)},'
        f'"nas_id":{_str(p.nas_id)},"session_id":{_str(p.session_id)},'
        f'"record_id":"{p.record_id}","piece":{p.piece},"ts_start":{p.ts_start},'
        f'"ts":{p.ts},"plan_id":{plan},"cycle_start":"{_iso(p.cycle_start)}",'
        f'"upload_bytes":{p.upload_bytes},"download_bytes":{p.download_bytes},'
        f'"billable_bytes":{p.billable_bytes},"zero_rated_bytes":{p.zero_rated_bytes},'
        f'"over_quota_bytes":{p.over_quota_bytes},"charge":"{p.charge}",'
        f'"currency":{_str(p.currency)},"rate_multiplier":"{p.rate_multiplier}",'
        f'"flags":[{flags}]}}')


def rated_kv(p: RatedPiece) -> tuple[bytes, bytes]:
    """A rated piece as a ``usage.rated`` message (key, value), keyed by subscriber."""
    return f"{p.tenant_id}/{p.username}".encode(), rated_body(p).encode()


def action_kv(a: QuotaAction) -> tuple[bytes, bytes]:
    """A quota action as an ``actions`` message (``ActionEvent``) keyed by subscriber."""
    ev = ActionEvent(intent_id=a.intent_id, tenant_id=a.tenant_id, username=a.username,
                     kind=a.kind, rate=a.rate, source=a.source, reason=a.reason,
                     threshold_pct=a.threshold_pct, cycle_start=a.cycle_start.isoformat(),
                     cycle_end=a.cycle_end.isoformat(), at=a.at)
    return f"{a.tenant_id}/{a.username}".encode(), ev.model_dump_json().encode()


# --- the dataflow ---------------------------------------------------------------------

def build_flow(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    db_sink: Sink | None = None,
    tail: bool = True,
) -> Dataflow:
    """Build the usage dataflow from settings (tests may pass their own catalog/sink)."""
    catalog = catalog or Catalog(settings.dsn(), settings.inventory_refresh_s)
    catalog.start()
    session_cfg = {"default_interim_interval": settings.default_interim_interval_s,
                   "stale_factor": settings.stale_factor}

    flow = Dataflow("usage")
    inp = kafka_input("acct_in", flow, settings, [settings.topic(topics.RADIUS_ACCT)], tail)
    # librdkafka Message
    parsed = op.map("parse", inp, parse_message)
    # (tenant/nas, AcctRecord) | DeadLetter
    valid = op.branch("valid", parsed, is_keyed)
    # trues: (tenant/nas, AcctRecord); falses: DeadLetter
    routed = op.stateful_flat_map("nas_clock", valid.trues,
                                  partial(route_to_shards, settings.session_shards))
    # (tenant/nas, (tenant/nas/shard, AcctRecord | ClockTick))
    by_shard = op.map("by_shard", routed, value_of)
    # (tenant/nas/shard, AcctRecord | ClockTick); On/Off and ticks go to every shard
    session_out = stateful_apply("sessions", by_shard, partial(NasState, **session_cfg),
                                 track_sessions)
    # (tenant/nas/shard, SessionDelta | SessionSnapshot)
    split = op.branch("is_delta", op.map("by_subscriber", session_out, by_subscriber),
                      is_keyed_delta)
    # trues: (tenant/username, SessionDelta); falses: (tenant/nas/shard, SessionSnapshot)
    rate_out = stateful_apply("rate", split.trues, SubscriberUsage, partial(rate_delta, catalog))
    # (tenant/username, RatedPiece | QuotaAction)
    is_action = op.branch("is_action", rate_out, is_keyed_action)
    # trues: (tenant/username, QuotaAction); falses: (tenant/username, RatedPiece)
    # rated pieces + session snapshots, one transaction per batch
    op.output("usage_db", op.merge("to_db", is_action.falses, split.falses),
              db_sink or UsageDbSink(settings.dsn(), partitions=settings.db_writers))
    kafka_output("usage_rated_out", is_action.falses, settings, topics.USAGE_RATED, rated_kv)
    # actions go to Kafka only: the enforcer records what it receives
    kafka_output("actions_out", is_action.trues, settings, topics.ACTIONS, action_kv)
    dead_letter_output(valid.falses, settings)
    return flow


def main(settings: Settings, workers: int = 1) -> int:
    """Run the usage flow in this process with recovery (resumes where it stopped)."""
    catalog = Catalog(settings.dsn(), settings.inventory_refresh_s)
    try:
        return run(build_flow(settings, catalog=catalog), settings, settings.recovery_dir,
                   workers)
    finally:
        catalog.stop()
