"""The enforce dataflow: actions -> CoA / Disconnect requests to the subscriber's NAS.

Run it with ``ispstream flow enforce`` (recovery on), or build it in a test with
``build_flow(settings, ...)`` and run it with ``bytewax.testing.run_main``.

Shape of the stream, step by step::

    radius.acct + actions + actions.results (Kafka)     Message
    -> drop_inert_results                     minus answers that cannot close a session
    -> parse                                  AcctEvent | ActionEvent | ActionResult | DeadLetter
    -> by_nas_shard / nas_index (per NAS shard)  AcctEvent | NasReset (Accounting-On/Off)
    -> by_subscriber / enforce (per subscriber, timers for cycle ends)
                                              Dispatch (one per session) | ActionRecord
    -> enforce_out (sink: PostgreSQL intent, then the NAS, then the answer)
                                              action_attempts, actions, enforcement_state;
                                              ActionResult JSON on actions.results
    -> deadletter (Kafka)                     DeadLetter JSON with the reason

The answers come back through ``actions.results``: a NAK with Error-Cause 503 (the NAS
has no such session) and an ACKed Disconnect close the session in the subscriber's state.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink
from confluent_kafka import Message
from pydantic import BaseModel

from collectors.radius.vendors import load_profiles, parse_rate
from ispstream import topics
from ispstream.contracts import AcctEvent, ActionEvent, ActionResult, DeadLetter
from ispstream.settings import Settings
from pipelines.enforce_rules import (
    Enforced,
    NasReset,
    NasSessions,
    SubscriberConfig,
    SubscriberEnforcement,
    until_of,
    with_enforced,
)
from pipelines.enforce_sink import EnforceCatalog, EnforceSink, load_enforced
from pipelines.runtime import (dead_letter_output, kafka_input, parse_event, run,
                               stateful_apply)

log = logging.getLogger(__name__)
STAGE = "flow.enforce"


# --- pure step functions --------------------------------------------------------------------

def _check_action(a: ActionEvent) -> None:
    if a.kind == "throttle":
        if not a.rate:
            raise ValueError("a throttle action needs a rate")
        parse_rate(a.rate)


def _check(ev) -> None:
    if isinstance(ev, ActionEvent):
        _check_action(ev)


def parse_message(models: dict[str, type[BaseModel]], msg: Message):
    """Validate a message of any of the three input topics against its contract; bad
    ones become dead letters carrying the reason."""
    return parse_event(STAGE, models, _check, msg)


# Answers that change nothing in a subscriber's state, recognised without parsing (our
# own compact JSON): every CoA ACK, timeout and skip. A result written differently is
# simply parsed and ignored later.
_INERT_RESULTS = ((b'"request":"coa"', b'"outcome":"ack"'), (b'"outcome":"timeout"',),
                  (b'"outcome":"skipped"',))


def needs_parsing(results_topic: str, msg: Message) -> bool:
    """False for ``actions.results`` messages that cannot close a session (most of them):
    only a NAK (Error-Cause 503) or an ACKed Disconnect does."""
    v = msg.value()
    if not v or msg.topic() != results_topic:
        return True
    return not any(all(p in v for p in pattern) for pattern in _INERT_RESULTS)


def is_event(x) -> bool:
    return not isinstance(x, DeadLetter)


def is_acct(x) -> bool:
    return isinstance(x, AcctEvent)


NAS_SHARDS = 16
NAS_WIDE = ("Accounting-On", "Accounting-Off")


def shard_event(ev: AcctEvent) -> list[tuple[str, AcctEvent]]:
    """Key by ``tenant/nas/shard`` (shard = stable hash of the session id): small state
    snapshots, and a big NAS spreads over workers. Accounting-On/Off concern every
    session of the NAS, so they go to every shard."""
    base = f"{ev.tenant_id}/{ev.nas_id}/"
    if ev.status in NAS_WIDE:
        return [(f"{base}{i}", ev) for i in range(NAS_SHARDS)]
    return [(f"{base}{zlib.crc32(ev.session_id.encode()) % NAS_SHARDS}", ev)]


def subscriber_key(x: AcctEvent | NasReset | ActionEvent | ActionResult) -> str:
    return f"{x.tenant_id}/{x.username}"


def value_of(kv):
    return kv[1]


# --- the per-subscriber step -----------------------------------------------------------------

@dataclass
class EnforceEnv:
    """What the per-subscriber step needs besides its state (not snapshotted)."""

    cfg: SubscriberConfig = field(default_factory=SubscriberConfig)
    timezone_of: Callable[[str], str | None] = lambda tenant: None
    stored: dict[tuple[str, str], Enforced] = field(default_factory=dict)
    clock: Callable[[], float] = time.time


class EnforceLogic(StatefulLogic):
    """Bytewax wrapper around ``SubscriberEnforcement`` (the decisions are there)."""

    def __init__(self, env: EnforceEnv, resume_state) -> None:
        self.env = env
        self.state = (SubscriberEnforcement.restore(resume_state)
                      if resume_state is not None else None)

    def on_item(self, value):
        st = self.state
        if st is None:
            st = self.state = SubscriberEnforcement(value.tenant_id, value.username)
            stored = self.env.stored.get((value.tenant_id, value.username))
            if stored is not None:
                with_enforced(st, stored)
        if isinstance(value, AcctEvent):
            out = st.on_acct(value)
        elif isinstance(value, ActionEvent):
            out = st.on_action(value, until_of(value, self.env.timezone_of(value.tenant_id)),
                               self.env.cfg)
        elif isinstance(value, ActionResult):
            st.on_result(value)
            out = []
        elif isinstance(value, NasReset):
            st.on_nas_reset(value)
            out = []
        else:
            raise TypeError(f"unexpected item {type(value).__name__}")
        # Retained even when idle: the applied intents must outlive replays.
        return out, StatefulLogic.RETAIN

    def on_notify(self):
        if self.state is None:
            return [], StatefulLogic.RETAIN
        return self.state.on_time(self.env.clock(), self.env.cfg), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.state.due_at() if self.state is not None else None
        return None if due is None else datetime.fromtimestamp(due, timezone.utc)

    def snapshot(self):
        return self.state.snapshot() if self.state is not None else None


def build_enforce_logic(env: EnforceEnv, resume_state) -> EnforceLogic:
    return EnforceLogic(env, resume_state)


# --- the dataflow ----------------------------------------------------------------------------

def build_sink(settings: Settings, catalog: EnforceCatalog) -> EnforceSink:
    """The real sink: PostgreSQL, the CoA client and a producer of ``actions.results``."""
    from confluent_kafka import Producer

    from collectors.radius.coa import AttributeEncoder, CoaClient
    from collectors.radius.dictionary import load as load_dictionary
    from ispstream.kafka import producer_config

    dictionary = load_dictionary(settings.radius_dictionary)
    bootstrap = settings.require_kafka()
    kcfg = dict(settings.kafka_config)
    return EnforceSink(
        settings.dsn(),
        catalog=catalog,
        profiles=load_profiles(settings.coa_vendors_file, dictionary),
        encoder=AttributeEncoder(dictionary),
        client_factory=partial(CoaClient, timeout_s=settings.coa_timeout_s,
                               retries=settings.coa_retries, deadline_s=settings.coa_deadline_s,
                               max_inflight_per_nas=settings.coa_max_inflight_per_nas),
        producer_factory=lambda: Producer(producer_config(bootstrap, kcfg)),
        results_topic=settings.topic(topics.ACTION_RESULTS),
        partitions=settings.enforce_writers,
    )


def build_flow(
    settings: Settings,
    *,
    catalog: EnforceCatalog | None = None,
    sink: Sink | None = None,
    clock: Callable[[], float] = time.time,
    tail: bool = True,
) -> Dataflow:
    """Build the enforce dataflow from settings (tests may pass their own sink/clock)."""
    catalog = catalog or EnforceCatalog(settings.dsn(), settings.inventory_refresh_s)
    catalog.refresh()
    env = EnforceEnv(
        cfg=SubscriberConfig(default_interim_interval=settings.default_interim_interval_s,
                             stale_factor=settings.stale_factor),
        timezone_of=catalog.timezone,
        stored=load_enforced(settings.dsn()),
        clock=clock,
    )
    models = {settings.topic(topics.RADIUS_ACCT): AcctEvent,
              settings.topic(topics.ACTIONS): ActionEvent,
              settings.topic(topics.ACTION_RESULTS): ActionResult}

    flow = Dataflow("enforce")
    inp = kafka_input("enforce_in", flow, settings, list(models), tail)
    # librdkafka Message
    wanted = op.filter("drop_inert_results", inp,
                       partial(needs_parsing, settings.topic(topics.ACTION_RESULTS)))
    # Message, minus answers that change no state
    parsed = op.map("parse", wanted, partial(parse_message, models))
    # AcctEvent | ActionEvent | ActionResult | DeadLetter
    valid = op.branch("valid", parsed, is_event)
    # trues: events; falses: DeadLetter
    acct = op.branch("is_acct", valid.trues, is_acct)
    # trues: AcctEvent; falses: ActionEvent | ActionResult
    by_nas = op.flat_map("by_nas_shard", acct.trues, shard_event)
    # (tenant/nas/shard, AcctEvent); On/Off copied to every shard of the NAS
    nas_out = stateful_apply("nas_index", by_nas, NasSessions, NasSessions.apply)
    # (key, AcctEvent with a User-Name | NasReset per subscriber of a restarted NAS)
    events = op.merge("events", op.map("unkey_nas", nas_out, value_of), acct.falses)
    # AcctEvent | NasReset | ActionEvent | ActionResult
    by_sub = op.key_on("by_subscriber", events, subscriber_key)
    # (tenant/username, event)
    decided = op.stateful("enforce", by_sub, partial(build_enforce_logic, env))
    # (tenant/username, Dispatch | ActionRecord)
    op.output("enforce_out", decided, sink or build_sink(settings, catalog))
    dead_letter_output(valid.falses, settings)
    return flow


def main(settings: Settings, workers: int = 1) -> int:
    """Run the enforce flow in this process with recovery (resumes where it stopped)."""
    return run(build_flow(settings), settings, settings.enforce_recovery_dir, workers)
