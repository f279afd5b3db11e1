"""Quota actions from the usage flow as a real process, fed through Kafka: thresholds fire
once per cycle on the ``actions`` topic with stable intent ids, also across a SIGKILL and
restart of the flow, and the first usage of a new cycle resumes a throttled subscriber."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from confluent_kafka import Consumer, Producer

from ispstream import topics
from ispstream.contracts import ActionEvent
from ispstream.inventory import apply_file
from ispstream.kafka import producer_config
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration

MB = 10**6
USERS = [f"u{i:02d}" for i in range(24)]
INVENTORY = """
tenants:
  - id: acme
    timezone: UTC
    currency: EUR
    plans:
      # fair use: the throttle at 100 % is implied by after_quota
      - id: fair-1
        monthly_fee: "10"
        quota_gb: 1
        after_quota: {throttle: "2M/2M"}
        rate_limit: "100M/100M"
        quota_policies:
          - {at: 80, action: notify}
    nas:
      - {ip: 127.0.0.1, name: bng-1, secret: "x"}
    subscribers:
      - {username: alice, plan: fair-1}
      - {username: bob, plan: fair-1}
""" + "".join(f"      - {{username: {u}, plan: fair-1}}\n" for u in USERS)


def intent(*parts) -> str:
    """The documented intent id: BLAKE2b-96 of the length-prefixed parts."""
    key = "|".join(f"{len(str(p))}:{p}" for p in parts)
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def this_cycle() -> tuple[date, date, int]:
    """Start and end of the current cycle (anchor 1, UTC) and a start time for usage in
    it that is at least a minute into the cycle."""
    now = datetime.now(timezone.utc)
    start = now.date().replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    first = int(datetime(start.year, start.month, 1, tzinfo=timezone.utc).timestamp())
    return start, end, max(first + 60, int(now.timestamp()) - 7200)


class ActionsTopic:
    """Everything on the actions topic from the beginning, validated as ActionEvent."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t{uuid.uuid4().hex}",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self._c.subscribe([topic])
        self.got: list[ActionEvent] = []

    def _poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self._c.poll(0.2)
            if m is None or m.error():
                continue
            ev = ActionEvent.model_validate_json(m.value())
            assert m.key() == f"{ev.tenant_id}/{ev.username}".encode()
            self.got.append(ev)

    def until(self, pred, timeout: float, what: str) -> list[ActionEvent]:
        deadline = time.monotonic() + timeout
        while not pred(self.got):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got "
                                     f"{[(a.username, a.kind, a.intent_id) for a in self.got]}")
            self._poll(0.5)
        return self.got

    def settle(self, seconds: float = 3.0) -> list[ActionEvent]:
        """Keep reading a while: anything further (a duplicate) shows up too."""
        self._poll(seconds)
        return self.got

    def ids(self) -> set[str]:
        return {a.intent_id for a in self.got}

    def close(self) -> None:
        self._c.close()


@pytest.fixture
def flow(pg_dsn, broker, topic_prefix, tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text(INVENTORY)
    apply_file(pg_dsn, str(inv))
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    env = {"ISPSTREAM_DATABASE_URL": pg_dsn, "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
           "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
           "ISPSTREAM_RECOVERY_DIR": str(tmp_path / "rec"),
           "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5", "ISPSTREAM_INVENTORY_REFRESH_S": "0.5"}
    procs = [Proc("flow", ["flow", "usage"], env, tmp_path)]
    producer = Producer(producer_config(broker.bootstrap))
    actions = ActionsTopic(broker.bootstrap, topic_prefix + topics.ACTIONS)

    def send(status, session, user, t, down=None, flush=True):
        ev = {"v": 1, "tenant_id": "acme", "nas_id": "bng-1", "nas_ip": "127.0.0.1",
              "status": status, "session_id": session, "username": user,
              "received_at": t, "event_timestamp": t}
        if down is not None:
            ev.update(input_octets=0, input_gigawords=0, output_octets=down % 2**32,
                      output_gigawords=down >> 32)
        producer.produce(topic_prefix + topics.RADIUS_ACCT, key=f"acme/bng-1/{session}",
                         value=json.dumps(ev))
        if flush:
            assert producer.flush(10) == 0

    def restart():
        procs[0].kill()
        procs.append(Proc(f"flow{len(procs) + 1}", ["flow", "usage"], env, tmp_path))

    class Flow:
        pass

    f = Flow()
    f.send, f.actions, f.procs, f.restart, f.producer = send, actions, procs, restart, producer
    yield f
    actions.close()
    for p in procs:
        p.stop()


def test_thresholds_fire_once_with_stable_ids(flow):
    start, end, t0 = this_cycle()
    # alice downloads 500 MB, 850 MB (crosses 80 %), 950 MB, 1.2 GB (crosses 100 %),
    # 1.5 GB in total; a retransmit of the crossing record changes nothing.
    flow.send("Start", "a1", "alice", t0)
    for dt, total in [(300, 500), (600, 850), (600, 850), (900, 950), (1200, 1200),
                      (1500, 1500)]:
        flow.send("Interim-Update", "a1", "alice", t0 + dt, total * MB)
    got = flow.actions.until(lambda got: len(got) >= 2, 60, "the notify and the throttle")
    got = flow.actions.settle(3)
    assert [a.model_dump() for a in got] == [
        {"v": 1, "intent_id": intent("acme", "alice", start.isoformat(), 80, "notify"),
         "tenant_id": "acme", "username": "alice", "kind": "notify", "rate": None,
         "source": "quota", "reason": "quota 80% reached (850000000 of 1000000000 bytes)",
         "threshold_pct": 80, "cycle_start": start.isoformat(),
         "cycle_end": end.isoformat(), "requested_by": None, "at": float(t0 + 600)},
        {"v": 1, "intent_id": intent("acme", "alice", start.isoformat(), 100, "throttle"),
         "tenant_id": "acme", "username": "alice", "kind": "throttle", "rate": "2M/2M",
         "source": "quota", "reason": "quota 100% reached (1200000000 of 1000000000 bytes)",
         "threshold_pct": 100, "cycle_start": start.isoformat(),
         "cycle_end": end.isoformat(), "requested_by": None, "at": float(t0 + 1200)},
    ]


def test_kill_and_restart_mid_stream_fires_each_intent_once(flow):
    start, _, t0 = this_cycle()
    prev = (start - timedelta(days=1)).replace(day=1)
    cyc = start.isoformat()

    # bob reaches 110 % in the previous cycle ...
    tp = int(datetime(prev.year, prev.month, 10, tzinfo=timezone.utc).timestamp())
    flow.send("Start", "b-old", "bob", tp)
    flow.send("Interim-Update", "b-old", "bob", tp + 300, 1100 * MB)
    bob_prev = {intent("acme", "bob", prev.isoformat(), 80, "notify"),
                intent("acme", "bob", prev.isoformat(), 100, "throttle")}
    flow.actions.until(lambda got: {a.intent_id for a in got} >= bob_prev, 60,
                       "bob's actions of the previous cycle")
    time.sleep(2)  # several snapshots (every 0.5 s) now hold bob's fired thresholds

    # ... and uses 1 MB in this one (resume); 24 subscribers cross 80 % and 100 % at
    # different records, 100 MB per minute each.
    flow.send("Start", "b-new", "bob", t0)
    flow.send("Interim-Update", "b-new", "bob", t0 + 60, 1 * MB)
    steps = 16

    def produce(rng):
        for k in rng:
            for i, u in enumerate(USERS):
                status = "Start" if k == 0 else "Interim-Update"
                down = None if k == 0 else k * 100 * MB + i * 7 * MB
                flow.send(status, f"s-{u}", u, t0 + 60 * k, down, flush=False)
        assert flow.producer.flush(10) == 0

    half = steps // 2 + 1  # u00 is at 800 MB (80 %) at step 8: some have crossed
    produce(range(0, half))
    flow.actions.until(lambda got: any(a.username.startswith("u") for a in got), 60,
                       "the first subscriber's notify")
    flow.restart()  # SIGKILL mid-stream, then a new process resumes from its snapshot
    produce(range(half, steps))

    expected = bob_prev | {intent("acme", "bob", cyc, "resume")}
    for u in USERS:
        expected |= {intent("acme", u, cyc, 80, "notify"), intent("acme", u, cyc, 100,
                                                                  "throttle")}
    flow.actions.until(lambda got: {a.intent_id for a in got} >= expected, 120,
                       "every expected intent after the restart")
    got = flow.actions.settle(3)
    assert flow.actions.ids() == expected  # each expected one, nothing else
    # The restarted flow resumed from its snapshot: what fired before it is not fired
    # again ...
    assert sorted(a.intent_id for a in got if a.username == "bob" and
                  a.cycle_start == prev.isoformat()) == sorted(bob_prev)
    # ... except what the replayed last epoch repeats: the same id and the same intent.
    by_id: dict[str, list] = {}
    for a in got:
        by_id.setdefault(a.intent_id, []).append(
            (a.username, a.kind, a.threshold_pct, a.source, a.cycle_start, a.rate))
    assert all(len(v) <= 2 and len(set(v)) == 1 for v in by_id.values()), by_id
    resume = next(a for a in got if a.kind == "resume")
    assert (resume.username, resume.source, resume.cycle_start, resume.rate) == (
        "bob", "cycle", cyc, "100M/100M")
    assert flow.procs[-1].alive(), flow.procs[-1].log()
