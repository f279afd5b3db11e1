"""The usage dataflow: accounting events -> session deltas -> rated usage -> database.

Run it with ``ispstream flow usage`` (recovery on), or build it in a test with
``build_flow(settings, ...)`` and run it with ``bytewax.testing.run_main``.

Shape of the stream, step by step (items are batches: a list per key per activation)::

    radius.acct (Kafka)                      librdkafka messages
    -> parse                                 (tenant/nas, [AcctRecord]) | DeadLetter
    -> nas_clock (per NAS: route to shards, event-time ticks)
    -> sessions (state per NAS shard)        ([SessionDelta], [SessionSnapshot])
    -> by_rating_shard / rating (per tenant/subscriber shard)  [RatedPiece] | [QuotaAction]
    -> usage_db (PostgreSQL)                 rated pieces + session snapshots, one txn/batch
    -> usage.rated (Kafka)                   RatedUsage JSON, keyed tenant/username
    -> actions (Kafka)                       ActionEvent JSON, keyed tenant/username
    -> deadletter (Kafka)                    DeadLetter JSON with the reason
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink
from confluent_kafka import Message
from pydantic import ValidationError

from ispstream import topics
from ispstream.codec import decoder, encoder
from ispstream.contracts import AcctEvent, ActionEvent, RatedUsage
from ispstream.settings import Settings
from pipelines.catalog import Catalog
from pipelines.runtime import (consumer_error_letter, dead_letter, dead_letter_output,
                               kafka_input, kafka_output, run, stateful_apply,
                               steps_with_state)
from pipelines.sinks import UsageDbSink
from rating._compiled import status as compiled_status
from rating.policies import QuotaAction
from rating.shards import SubscriberShard, shard_of
from rating.sessions import AcctRecord, NasState, SessionDelta, event_time, total
from rating.tariff import RatedPiece

log = logging.getLogger(__name__)
STAGE = "flow.usage"
_new = tuple.__new__  # a named tuple from all its fields, at half the cost (see rating.sessions)


# --- pure step functions (unit-testable without Bytewax) ----------------------------

def record_from_event(ev: AcctEvent) -> AcctRecord:
    """Translate the collector's event into rating's input (64-bit totals, event time).
    ``ev`` is what ``_decode_acct`` gives: the contract's fields as attributes."""
    return _new(AcctRecord, (
        ev.tenant_id, ev.nas_id, ev.session_id, ev.status, ev.username,
        event_time(ev.event_timestamp, ev.received_at, ev.delay_time),
        total(ev.input_octets, ev.input_gigawords),
        total(ev.output_octets, ev.output_gigawords),
        ev.interim_interval, ev.session_time, ev.framed_ip, ev.terminate_cause))


_decode_acct = decoder(AcctEvent)  # the contract's verdict at msgspec's cost (ispstream.codec)


def parse_batch(msgs: list[Message]) -> list:
    """A batch of ``radius.acct`` messages -> one ``(tenant/nas, [AcctRecord, ...])`` per
    NAS (in arrival order), and for each message that fails the contract (or consumer
    error) a dead letter carrying the reason.

    The flow moves batches, not events, through its keyed steps: the stream framework
    costs per item and per key, and a batch per NAS, shard and subscriber shard costs it
    a fraction of that (the steps get all that arrived since their last activation)."""
    by_nas: dict[str, list[AcctRecord]] = {}
    out: list = []
    for msg in msgs:
        if msg.error() is not None:
            out.append(consumer_error_letter(STAGE, msg))
            continue
        value = msg.value()
        try:
            if value is None:
                raise ValueError("empty message value")
            rec = record_from_event(_decode_acct(value))
        except (ValidationError, ValueError) as exc:
            reason = exc.errors(include_url=False) if isinstance(exc, ValidationError) \
                else str(exc)
            out.append(dead_letter(STAGE, msg, f"invalid radius.acct record: {reason}"))
            continue
        by_nas.setdefault(f"{rec.tenant_id}/{rec.nas_id}", []).append(rec)
    out.extend(by_nas.items())
    return out


def is_keyed(x) -> bool:
    return type(x) is tuple


NAS_WIDE = ("Accounting-On", "Accounting-Off")
TICK_EVERY = 60  # seconds of NAS event time between clock ticks to every shard


@dataclass(frozen=True, slots=True)
class ClockTick:
    """The NAS's event-time clock reached ``at``: shards sweep for stale sessions."""

    at: int


def route_to_shards(shards: int, clock: tuple[int, int] | None, recs: list[AcctRecord]
                    ) -> tuple[tuple[int, int], list[tuple[str, list]]]:
    """Per NAS: route its records to their session shards and keep the NAS's event-time
    clock. Returns the new clock and ``(tenant/nas/shard, [AcctRecord | ClockTick, ...])``
    per shard that got something, each in the records' order.

    Shard = stable hash of the session id, so one big NAS spreads over keys.
    Accounting-On/Off concern every session of the NAS and go to every shard. Every
    ``TICK_EVERY`` seconds of NAS event time, each shard gets a ``ClockTick`` (after the
    record that moved the clock), so stale sessions close even in a shard that is quiet
    itself. State: (watermark, time of the last tick).
    """
    first = recs[0]
    base = f"{first.tenant_id}/{first.nas_id}/"
    keys = [f"{base}{i}" for i in range(shards)]
    out: dict[str, list] = {}

    def to_all(item) -> None:
        for k in keys:
            out.setdefault(k, []).append(item)

    crc = zlib.crc32
    watermark, last_tick = clock or (first.event_time, first.event_time)
    for rec in recs:
        if rec.status in NAS_WIDE:
            to_all(rec)
        else:
            out.setdefault(keys[crc(rec.session_id.encode()) % shards], []).append(rec)
        if rec.event_time > watermark:
            watermark = rec.event_time
        if watermark - last_tick >= TICK_EVERY:
            last_tick = watermark
            to_all(ClockTick(watermark))
    return (watermark, last_tick), list(out.items())


def track_sessions(state: NasState, items: list) -> list[tuple[list, list]]:
    """Per NAS shard: the session state machine over a batch of records and ticks ->
    ``[(deltas, session snapshots)]``, each in order."""
    deltas: list[SessionDelta] = []
    snapshots: list = []
    apply, sweep = state.apply, state.sweep
    for item in items:
        for out in (sweep(item.at) if type(item) is ClockTick else apply(item)):
            if type(out) is SessionDelta:
                deltas.append(out)
            else:
                snapshots.append(out)
    return [(deltas, snapshots)]


def by_rating_shard(shards: int, outs: list) -> list:
    """Re-key what the session shards produced: their deltas as one list per rating shard
    (``tenant/N``, in order, so each subscriber's deltas stay in order) and their
    snapshots as one list per session shard (keys route them to database writers)."""
    res: list = []
    by_shard: dict[str, list[SessionDelta]] = {}
    for session_shard, (deltas, snapshots) in outs:
        if snapshots:
            res.append((session_shard, snapshots))
        for d in deltas:
            by_shard.setdefault(f"{d.tenant_id}/{shard_of(d.username, shards)}", []).append(d)
    res.extend(by_shard.items())
    return res


def is_delta_list(kv) -> bool:
    return type(kv[1][0]) is SessionDelta


def rate_deltas(catalog: Catalog, shard: SubscriberShard, deltas: list[SessionDelta]
                ) -> list[list]:
    """Per rating shard: rate each delta against its subscriber's current tariff ->
    ``[rated pieces]`` and, when they caused any, ``[quota actions]`` (thresholds
    reached, resumes)."""
    pieces: list[RatedPiece] = []
    actions: list[QuotaAction] = []
    rate, tariff = shard.rate, catalog.tariff
    for d in deltas:
        got, acts = rate(d, tariff(d.tenant_id, d.username))
        pieces.extend(got)
        if acts:
            for a in acts:
                log.info("quota action %s %s for %s/%s: %s (intent %s)", a.kind,
                         a.threshold_pct or "", a.tenant_id, a.username, a.reason,
                         a.intent_id)
            actions.extend(acts)
    out: list[list] = []
    if pieces:
        out.append(pieces)
    if actions:
        out.append(actions)
    return out


def is_action_list(kv) -> bool:
    return type(kv[1][0]) is QuotaAction


def value_of(kv):
    return kv[1]


_encode_rated = encoder(RatedUsage)
if tuple(RatedUsage.model_fields) != ("v", *RatedPiece._fields):  # encoded as (1, *piece)
    raise TypeError("RatedPiece's fields must be RatedUsage's after v, in the same order")


def rated_body(p: RatedPiece) -> bytes:
    """The ``usage.rated`` JSON of a piece: the compact JSON object ``json.dumps`` gives
    of the contract's fields (``charge`` and ``rate_multiplier`` as decimal strings)."""
    return _encode_rated(1, *p)


def rated_kv(p: RatedPiece) -> tuple[bytes, bytes]:
    """A rated piece as a ``usage.rated`` message (key, value), keyed by subscriber."""
    return f"{p.tenant_id}/{p.username}".encode(), rated_body(p)


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
    parsed = op.flat_map_batch("parse", inp, parse_batch)
    # (tenant/nas, [AcctRecord]) | DeadLetter
    valid = op.branch("valid", parsed, is_keyed)
    # trues: (tenant/nas, [AcctRecord]); falses: DeadLetter
    routed = op.stateful_flat_map("nas_clock", valid.trues,
                                  partial(route_to_shards, settings.session_shards))
    # (tenant/nas, (tenant/nas/shard, [AcctRecord | ClockTick]))
    by_shard = op.map("by_shard", routed, value_of)
    # (tenant/nas/shard, [AcctRecord | ClockTick]); On/Off and ticks go to every shard
    session_out = stateful_apply("sessions", by_shard, partial(NasState, **session_cfg),
                                 track_sessions)
    # (tenant/nas/shard, ([SessionDelta], [SessionSnapshot]))
    split = op.branch("is_delta", op.flat_map_batch(
        "by_rating_shard", session_out, partial(by_rating_shard, settings.rating_shards)),
        is_delta_list)
    # trues: (tenant/N, [SessionDelta]); falses: (tenant/nas/shard, [SessionSnapshot])
    rate_out = stateful_apply("rating", split.trues, SubscriberShard,
                              partial(rate_deltas, catalog))
    # (tenant/N, [RatedPiece] | [QuotaAction])
    is_action = op.branch("is_action", rate_out, is_action_list)
    # trues: (tenant/N, [QuotaAction]); falses: (tenant/N, [RatedPiece])
    # rated pieces + session snapshots, one transaction per batch
    op.output("usage_db", op.merge("to_db", is_action.falses, split.falses),
              db_sink or UsageDbSink(settings.dsn(), partitions=settings.db_writers))
    kafka_output("usage_rated_out", is_action.falses, settings, topics.USAGE_RATED, rated_kv,
                 lists=True)
    # actions go to Kafka only: the enforcer records what it receives
    kafka_output("actions_out", is_action.trues, settings, topics.ACTIONS, action_kv,
                 lists=True)
    dead_letter_output(valid.falses, settings)
    return flow


#: Rating state kept per subscriber (step ``rate``), before it was kept per shard.
RETIRED_RATING_STEP = "usage.rate.stateful.stateful_batch"
#: The shard counts a recovery store was written with, kept beside it.
LAYOUT_FILE = "ispstream-usage-layout.json"

_START_OVER = ("Keep running as before, or start on an empty recovery directory "
               "(ISPSTREAM_RECOVERY_DIR) and an empty database: re-reading only what Kafka "
               "still holds would bill sessions whose first records are gone twice.")


def check_recovery_store(directory: Path, session_shards: int, rating_shards: int) -> None:
    """Refuse a recovery store this flow cannot resume correctly, before it starts.

    Its state is keyed by shard, so a store written with other shard counts would leave
    sessions and subscribers under keys no record reaches any more (their counters would
    silently start again from zero); the counts are kept in ``LAYOUT_FILE`` beside the
    store (a store without one is taken to have the current counts). Rating state keyed
    per subscriber (step ``rate``, before it was keyed per shard) cannot be resumed
    either.
    """
    steps = steps_with_state(directory)
    if RETIRED_RATING_STEP in steps:
        raise SystemExit(
            f"the recovery store in {directory} holds rating state per subscriber, written "
            "by an earlier version of the usage flow; this version keeps it per subscriber "
            f"shard and cannot resume it (there is no migration). {_START_OVER}")
    layout = {"session_shards": session_shards, "rating_shards": rating_shards}
    path = directory / LAYOUT_FILE
    if steps and path.exists():
        kept = json.loads(path.read_text())
        if kept != layout:
            raise SystemExit(
                f"the recovery store in {directory} was written with {kept}, but the flow "
                f"is configured with {layout} (ISPSTREAM_SESSION_SHARDS, "
                "ISPSTREAM_RATING_SHARDS): its state would be left under keys no record "
                f"reaches. Set the counts back. {_START_OVER}")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(layout) + "\n")


def main(settings: Settings, workers: int = 1) -> int:
    """Run the usage flow in this process with recovery (resumes where it stopped)."""
    check_recovery_store(settings.recovery_dir, settings.session_shards,
                         settings.rating_shards)
    how = compiled_status()
    as_python = sorted(m for m, h in how.items() if h == "python")
    log.info("usage flow: hot path %s", "compiled" if not as_python else
             f"running as Python: {', '.join(as_python)} (see `ispstream compiled --check`)")
    catalog = Catalog(settings.dsn(), settings.inventory_refresh_s)
    try:
        return run(build_flow(settings, catalog=catalog), settings, settings.recovery_dir,
                   workers)
    finally:
        catalog.stop()
