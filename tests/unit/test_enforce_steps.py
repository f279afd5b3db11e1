"""The enforce flow's step functions (pipelines.enforce) without Bytewax or Kafka."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from confluent_kafka import Message

from ispstream.contracts import AcctEvent, ActionEvent, ActionResult, DeadLetter
from pipelines.enforce import (
    NAS_SHARDS,
    EnforceEnv,
    EnforceLogic,
    needs_parsing,
    parse_message,
    shard_event,
)
from pipelines.enforce_rules import ActionRecord, Dispatch, Enforced

MODELS = {"p.radius.acct": AcctEvent, "p.actions": ActionEvent, "p.actions.results": ActionResult}
T0 = 1_700_000_000


def msg(topic: str, value) -> Message:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Message(key=b"k", value=raw, topic=topic, partition=1, offset=7)


def result(**kw) -> bytes:
    body = {"v": 1, "intent_id": "i", "tenant_id": "acme", "username": "alice",
            "nas_id": "bng-1", "session_id": "s1", "request": "coa", "outcome": "ack",
            "attempts": 1, "at": T0, **kw}
    return ActionResult(**body).model_dump_json().encode()


def test_parse_each_topic_and_dead_letters_with_reasons():
    ev = parse_message(MODELS, msg("p.actions", {
        "v": 1, "intent_id": "i", "tenant_id": "acme", "username": "alice", "kind": "suspend",
        "source": "operator", "reason": "r", "at": T0}))
    assert isinstance(ev, ActionEvent) and ev.kind == "suspend"
    bad = parse_message(MODELS, msg("p.actions", {
        "v": 1, "intent_id": "i", "tenant_id": "acme", "username": "alice", "kind": "throttle",
        "rate": "fast", "source": "operator", "reason": "r", "at": T0}))
    assert isinstance(bad, DeadLetter) and "bad rate" in bad.reason
    assert (bad.source_topic, bad.partition, bad.offset) == ("p.actions", 1, 7)
    junk = parse_message(MODELS, msg("p.radius.acct", b"{nope"))
    assert isinstance(junk, DeadLetter) and "invalid AcctEvent" in junk.reason
    assert junk.stage == "flow.enforce" and junk.value == "{nope"
    other = parse_message(MODELS, msg("elsewhere", {"x": 1}))
    assert isinstance(other, DeadLetter) and "unexpected topic" in other.reason


def test_only_answers_that_can_close_a_session_are_parsed():
    topic = "p.actions.results"
    assert not needs_parsing(topic, msg(topic, result()))
    assert not needs_parsing(topic, msg(topic, result(outcome="timeout", attempts=3)))
    assert not needs_parsing(topic, msg(topic, result(outcome="skipped", attempts=0)))
    assert needs_parsing(topic, msg(topic, result(outcome="nak", error_cause=503)))
    assert needs_parsing(topic, msg(topic, result(request="disconnect")))
    assert needs_parsing("p.actions", msg("p.actions", b"{}"))
    # written by someone else with spaces: parsed (and ignored later), never lost
    spaced = json.dumps(json.loads(result()), indent=1).encode()
    assert needs_parsing(topic, msg(topic, spaced))


def test_shards_keep_a_session_together_and_copy_on_off_everywhere():
    def ev(status, sid):
        return AcctEvent(tenant_id="acme", nas_id="bng-1", nas_ip="10.0.0.1", status=status,
                         session_id=sid, username="alice", received_at=T0)

    (k1, _), = shard_event(ev("Start", "s1"))
    (k2, _), = shard_event(ev("Stop", "s1"))
    assert k1 == k2 and k1.startswith("acme/bng-1/")
    keys = [k for k, _ in shard_event(ev("Accounting-On", "0"))]
    assert len(set(keys)) == NAS_SHARDS


def test_logic_seeds_from_stored_state_and_schedules_the_cycle_end():
    until = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()
    env = EnforceEnv(stored={("acme", "alice"): Enforced("throttled", "1M/1M", "q0", "quota",
                                                         "quota", T0, until)},
                     clock=lambda: until + 1)
    logic = EnforceLogic(env, None)
    start = AcctEvent(tenant_id="acme", nas_id="bng-1", nas_ip="10.0.0.1", status="Start",
                      session_id="s1", username="alice", received_at=T0, event_timestamp=T0)
    out, _ = logic.on_item(start)
    assert [(d.op, d.rate, d.intent_id) for d in out] == [("throttle", "1M/1M", "q0")]
    assert logic.notify_at() == datetime(2030, 1, 1, tzinfo=timezone.utc)
    out, _ = logic.on_notify()
    kinds = [(type(x).__name__, getattr(x, "op", None)) for x in out]
    assert kinds == [("Dispatch", "resume"), ("ActionRecord", None)]
    assert isinstance(out[0], Dispatch) and isinstance(out[1], ActionRecord)
    assert logic.notify_at() is None
    again = EnforceLogic(env, logic.snapshot())
    assert again.state.enforced.state == "normal"
