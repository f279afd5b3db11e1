"""The enforce flow as a real process: Kafka in, FreeRADIUS NAS devices answering CoA and
Disconnect, PostgreSQL recording every intent before it is sent and every answer after.

Accounting and actions are produced to Kafka directly (the collector and the usage flow
have their own tests); the NAS side is FreeRADIUS 3.2 (``tests/integration/nas_coa.py``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from ispstream import topics
from ispstream.contracts import AcctEvent, ActionEvent
from ispstream.inventory import apply_file
from ispstream.kafka import producer_config
from tests.integration.nas_coa import (  # noqa: F401
    CountingNas,
    coa_nas,
    free_udp_port,
    silent_port,
)
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-nas"
INVENTORY = """
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - id: fiber
        monthly_fee: "39.00"
        quota_gb: 1
        after_quota: {{throttle: "2M/2M"}}
    nas:
      - {{ip: 127.0.0.1, name: bng-1, secret: "{secret}", vendor: mikrotik, coa_port: {port}}}
      - {{ip: 127.0.0.2, name: bng-2, secret: "{secret}", vendor: cisco, coa_port: {port}}}
      - {{ip: 127.0.0.3, name: bng-3, secret: "{secret}", vendor: huawei, coa_port: {port}}}
      - {{ip: 127.0.0.4, name: bng-4, secret: "{secret}", vendor: juniper,
          coa_port: {silent}}}
    subscribers:
      - {{username: alice, plan: fiber}}
      - {{username: bob, plan: fiber}}
      - {{username: carol, plan: fiber}}
  - id: beta
    timezone: UTC
    currency: EUR
    plans:
      - {{id: basic, monthly_fee: "10.00"}}
    nas:
      - {{ip: 127.0.0.9, name: beta-bng, secret: "{secret}", vendor: generic,
          coa_port: {port}}}
    subscribers:
      - {{username: mallory, plan: basic}}
"""


def _rows(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


class Env:
    """Topics, database, NAS devices and the flow process of one test."""

    def __init__(self, pg_dsn, broker, topic_prefix, tmp_path, nas, silent):
        self.dsn, self.tmp, self.prefix, self.nas, self.silent = (pg_dsn, tmp_path,
                                                                  topic_prefix, nas, silent)
        self.env = {
            "ISPSTREAM_DATABASE_URL": pg_dsn,
            "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
            "ISPSTREAM_ENFORCE_RECOVERY_DIR": str(tmp_path / "recovery"),
            "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5",
            "ISPSTREAM_INVENTORY_REFRESH_S": "1",
            "ISPSTREAM_COA_TIMEOUT_S": "0.3",
            "ISPSTREAM_COA_RETRIES": "2",
            "ISPSTREAM_COA_DEADLINE_S": "5",
        }
        self.producer = Producer(producer_config(broker.bootstrap))
        self.procs: list[Proc] = []
        self.t0 = int(time.time()) - 60

    def start(self, name: str = "enforce", ready: bool = True) -> Proc:
        """Start the flow; with ``ready``, return once it consumes (a probe is recorded).

        Topics are read in parallel, so an action can overtake accounting produced just
        before it; the tests start the flow first and give accounting a moment.
        """
        p = Proc(name, ["flow", "enforce"], self.env, self.tmp)
        self.procs.append(p)
        if ready:
            probe = f"probe-{name}"
            self.produce(self.action("notify", probe, user="probe"))
            wait_until(lambda: self.action_state(probe) == "done", 60, "the flow to consume")
        return p

    def settle(self) -> None:
        """Let the running flow read what was just produced (it reads in well under 1 s
        on an idle machine). Topics are read in parallel, so nothing orders accounting
        before an action produced after it; the flow leaves no trace of having read a
        Start, so this waits rather than polls, with room for a loaded test machine."""
        time.sleep(5)

    def produce(self, *events) -> None:
        for ev in events:
            if isinstance(ev, AcctEvent):
                topic, key = topics.RADIUS_ACCT, ev.key()
            else:
                topic, key = topics.ACTIONS, f"{ev.tenant_id}/{ev.username}"
            self.producer.produce(self.prefix + topic, key=key, value=ev.model_dump_json())
        assert self.producer.flush(10) == 0

    def acct(self, status, sid, user="alice", nas="bng-1", ip="127.0.0.1", tenant="acme",
             t=None, **kw) -> AcctEvent:
        t = t if t is not None else int(time.time())
        return AcctEvent(tenant_id=tenant, nas_id=nas, nas_ip=ip, status=status, session_id=sid,
                         username=user, received_at=t, event_timestamp=t, **kw)

    def action(self, kind, intent, user="alice", tenant="acme", **kw) -> ActionEvent:
        kw.setdefault("source", "operator")
        kw.setdefault("reason", f"test {kind}")
        kw.setdefault("at", time.time())
        if kind == "throttle":
            kw.setdefault("rate", "2M/2M")
        return ActionEvent(intent_id=intent, tenant_id=tenant, username=user, kind=kind, **kw)

    def attempts(self, intent=None):
        sql = ("SELECT intent_id, nas_id, session_id, request, state, error_cause, attempts, "
               "event_timestamp FROM action_attempts")
        args = ()
        if intent:
            sql += " WHERE intent_id = %s"
            args = (intent,)
        return _rows(self.dsn, sql + " ORDER BY 1, 2, 3", *args)

    def wait_final(self, n: int, intent=None, timeout: float = 60):
        return wait_until(lambda: (rows := self.attempts(intent)) and len(rows) >= n
                          and all(r[4] != "sending" for r in rows) and rows, timeout,
                          f"{n} final attempt(s)" + (f" of {intent}" if intent else ""))

    def action_state(self, intent):
        rows = _rows(self.dsn, "SELECT state FROM actions WHERE intent_id = %s", intent)
        return rows[0][0] if rows else None

    def results(self, n: int, timeout: float = 30) -> list[dict]:
        c = Consumer({"bootstrap.servers": self.env["ISPSTREAM_KAFKA_BOOTSTRAP"],
                      "group.id": "results", "auto.offset.reset": "earliest"})
        c.subscribe([self.prefix + topics.ACTION_RESULTS])
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(got) < n:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(json.loads(m.value()))
        c.close()
        return got

    def seen(self):
        return [r for n in self.nas for r in n.requests()]


@pytest.fixture
def enforce_env(pg_dsn, broker, topic_prefix, tmp_path, coa_nas, silent_port):
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    port = free_udp_port()
    silent = silent_port("127.0.0.4")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY.format(secret=SECRET, port=port, silent=silent.port))
    apply_file(pg_dsn, str(inv))
    nas = coa_nas([("127.0.0.1", port, "ack"), ("127.0.0.2", port, "ack"),
                   ("127.0.0.3", port, "nak503"), ("127.0.0.9", port, "ack")], secret=SECRET)
    e = Env(pg_dsn, broker, topic_prefix, tmp_path, [nas], silent)
    e.port = port
    yield e
    for p in e.procs:
        p.stop()


def test_throttle_reaches_every_session_and_new_sessions_are_reconciled(enforce_env):
    e = enforce_env
    e.start()
    e.produce(e.acct("Start", "s1", framed_ip="100.64.0.1"),
              e.acct("Start", "s2", nas="bng-2", ip="127.0.0.2"),
              e.acct("Start", "s3", user="bob"))
    # the action travels on another topic: give the sessions a head start
    e.settle()
    e.produce(e.action("throttle", "t-1"))
    rows = e.wait_final(2, "t-1")
    assert [(r[1], r[2], r[3], r[4], r[6]) for r in rows] == [
        ("bng-1", "s1", "coa", "ack", 1), ("bng-2", "s2", "coa", "ack", 1)]
    seen = {r.get("Acct-Session-Id"): r for r in e.seen()}
    assert set(seen) == {"s1", "s2"}  # bob's session was not touched
    # MikroTik: rate limit + framed address; Cisco: ISG service activation
    assert seen["s1"].get("Mikrotik-Rate-Limit") == "2M/2M"
    assert seen["s1"].get("Framed-IP-Address") == "100.64.0.1"
    assert seen["s1"].get("NAS-IP-Address") == "127.0.0.1"
    assert "subscriber:service-name=rate-2M_2M" in seen["s2"].all("Cisco-AVPair")
    # the Event-Timestamp sent is the one recorded with the attempt
    assert {r[2]: r[7] for r in rows} == {k: v.event_timestamp for k, v in seen.items()}
    wait_until(lambda: e.action_state("t-1") == "done", 20, "the action to be done")
    (state,) = _rows(e.dsn, "SELECT state, rate, intent_id FROM enforcement_state "
                     "WHERE username = 'alice'")
    assert state == ("throttled", "2M/2M", "t-1")

    # A new session of the throttled subscriber is throttled as soon as its Start arrives.
    e.produce(e.acct("Start", "s4", framed_ip="100.64.0.4"))
    rows = e.wait_final(3, "t-1")
    assert [(r[2], r[4]) for r in rows] == [("s1", "ack"), ("s4", "ack"), ("s2", "ack")] or \
        sorted((r[2], r[4]) for r in rows) == [("s1", "ack"), ("s2", "ack"), ("s4", "ack")]
    # ... and an interim of an already throttled session sends nothing more.
    e.produce(e.acct("Interim-Update", "s1"), e.action("notify", "n-1", source="quota",
                                                       threshold_pct=80))
    wait_until(lambda: e.action_state("n-1") == "done", 20, "the notify to be recorded")
    time.sleep(1)
    assert Counter(r.get("Acct-Session-Id") for r in e.seen()) == {"s1": 1, "s2": 1, "s4": 1}

    # A replayed (duplicated) action changes nothing.
    e.produce(e.action("throttle", "t-1"))
    time.sleep(2)
    assert len(e.seen()) == 3

    # Resume without a plan rate: the sessions are disconnected to re-authenticate.
    e.produce(e.action("resume", "r-1"))
    rows = e.wait_final(3, "r-1")
    assert sorted((r[2], r[3], r[4]) for r in rows) == [
        ("s1", "disconnect", "ack"), ("s2", "disconnect", "ack"), ("s4", "disconnect", "ack")]
    wait_until(lambda: _rows(e.dsn, "SELECT state FROM enforcement_state WHERE username = "
                             "'alice'") == [("normal",)], 20, "the state to be normal")
    results = e.results(6)
    assert Counter((r["intent_id"], r["outcome"]) for r in results) == {
        ("t-1", "ack"): 3, ("r-1", "ack"): 3}


def test_nak_503_closes_the_session_and_silence_is_a_recorded_timeout(enforce_env):
    e = enforce_env
    e.start()
    e.produce(e.acct("Start", "gone", user="carol", nas="bng-3", ip="127.0.0.3"),
              e.acct("Start", "down", user="carol", nas="bng-4", ip="127.0.0.4"),
              e.acct("Start", "live", user="carol", nas="bng-1", ip="127.0.0.1"))
    e.settle()
    e.produce(e.action("suspend", "s-1", user="carol"))
    rows = e.wait_final(3, "s-1", timeout=60)
    by_session = {r[2]: r for r in rows}
    assert by_session["gone"][3:6] == ("disconnect", "nak", 503)
    assert by_session["live"][3:5] == ("disconnect", "ack")
    down = by_session["down"]
    assert down[3:5] == ("disconnect", "timeout") and down[6] == 3  # 1 + 2 retransmissions
    assert e.silent.received() == 3
    wait_until(lambda: e.action_state("s-1") == "partial", 20, "the action to be partial")

    # The 503 and the ACKed Disconnect closed those sessions in the flow's state: the next
    # action goes only to the session the NAS did not answer for.
    time.sleep(2)
    e.produce(e.action("disconnect", "d-1", user="carol"))
    rows = e.wait_final(1, "d-1", timeout=60)
    assert [(r[2], r[4]) for r in rows] == [("down", "timeout")]
    assert e.action_state("d-1") == "failed"
    # A NAK 503 alone means there was nothing to enforce.
    e.produce(e.acct("Start", "gone2", user="carol", nas="bng-3", ip="127.0.0.3"))
    rows = e.wait_final(4, "s-1", timeout=30)
    assert ("gone2", "nak") in [(r[2], r[4]) for r in rows]


def test_actions_only_reach_the_subscribers_own_tenant(enforce_env):
    e = enforce_env
    e.start()
    # A session claiming a NAS name that exists only in another tenant, and one at an
    # address that belongs to another tenant's NAS.
    e.produce(e.acct("Start", "x1", user="mallory", tenant="beta", nas="bng-1", ip="127.0.0.1"),
              e.acct("Start", "x2", user="mallory", tenant="beta", nas="beta-bng",
                     ip="127.0.0.9"),
              e.acct("Start", "x3", user="alice", tenant="acme", nas="bng-1", ip="127.0.0.9"))
    e.settle()
    e.produce(e.action("disconnect", "m-1", user="mallory", tenant="beta"),
              e.action("disconnect", "a-1", user="alice", tenant="acme"))
    rows = e.wait_final(1, "m-1")
    assert [(r[1], r[2], r[4]) for r in rows] == [("beta-bng", "x2", "ack")]
    wait_until(lambda: e.action_state("a-1") == "failed", 30, "the refused action")
    assert e.attempts("a-1") == []
    seen = e.seen()
    assert [(r.get("Acct-Session-Id"), r.address) for r in seen] == [("x2",
                                                                      f"127.0.0.9:{e.port}")]
    results = e.results(3)
    assert sorted((r["session_id"], r["outcome"]) for r in results) == [
        ("x1", "skipped"), ("x2", "ack"), ("x3", "skipped")]


def test_accounting_on_closes_the_nas_sessions(enforce_env):
    e = enforce_env
    e.start()
    t = int(time.time())
    e.produce(e.acct("Start", "b1", user="bob", t=t - 5),
              e.acct("Start", "b2", user="bob", nas="bng-2", ip="127.0.0.2", t=t - 5),
              AcctEvent(tenant_id="acme", nas_id="bng-1", nas_ip="127.0.0.1",
                        status="Accounting-On", session_id="0", received_at=t,
                        event_timestamp=t))
    e.settle()
    e.produce(e.action("throttle", "t-b", user="bob"))
    rows = e.wait_final(1, "t-b")
    assert [(r[1], r[2], r[4]) for r in rows] == [("bng-2", "b2", "ack")]


def test_a_cycle_bound_throttle_lifts_at_the_cycle_end(enforce_env):
    e = enforce_env
    with psycopg.connect(e.dsn) as conn:
        conn.execute("UPDATE plans SET rate_limit = '100M/100M' WHERE id = 'fiber'")
    e.start()
    e.produce(e.acct("Start", "c1", user="bob"))
    e.settle()
    # a quota throttle of a cycle that is already over (the flow was behind): it is
    # applied, then lifted by the cycle's end, restoring the plan's rate
    e.produce(e.action("throttle", "q-1", user="bob", source="quota", threshold_pct=100,
                       cycle_start="2020-01-01", cycle_end="2020-02-01", at=time.time()))
    e.wait_final(1, "q-1")
    rows = wait_until(lambda: (r := _rows(e.dsn, "SELECT intent_id, source, kind, state "
                                          "FROM actions WHERE kind = 'resume'")) and r, 30,
                      "the cycle resume")
    (intent, source, kind, _state), = rows
    assert source == "cycle"
    (a,) = e.wait_final(1, intent)
    assert a[3:5] == ("coa", "ack")
    rates = [r.get("Mikrotik-Rate-Limit") for r in e.seen()]
    assert rates == ["2M/2M", "100M/100M"]
    assert _rows(e.dsn, "SELECT state, until FROM enforcement_state WHERE username = 'bob'") \
        == [("normal", None)]


def test_bad_actions_go_to_the_dead_letter_topic(enforce_env):
    e = enforce_env
    e.start()
    e.producer.produce(e.prefix + topics.ACTIONS, key="acme/alice", value=b"{nope")
    e.producer.produce(e.prefix + topics.ACTIONS, key="acme/alice", value=json.dumps({
        "v": 1, "intent_id": "x", "tenant_id": "acme", "username": "alice",
        "kind": "throttle", "source": "operator", "reason": "no rate", "at": 1}).encode())
    e.producer.flush(10)
    c = Consumer({"bootstrap.servers": e.env["ISPSTREAM_KAFKA_BOOTSTRAP"], "group.id": "dlq",
                  "auto.offset.reset": "earliest"})
    c.subscribe([e.prefix + topics.DEADLETTER])
    letters = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(letters) < 2:
        m = c.poll(0.5)
        if m is not None and not m.error():
            letters.append(json.loads(m.value()))
    c.close()
    reasons = sorted(d["reason"] for d in letters)
    assert len(reasons) == 2
    assert "throttle action needs a rate" in reasons[0] + reasons[1]
    assert all(d["stage"] == "flow.enforce" for d in letters)


def test_restart_mid_way_never_resends_a_completed_action(enforce_env):
    """SIGKILL the flow while it is sending, restart it, then replay everything from the
    beginning with an empty recovery store: no completed attempt is sent twice."""
    e = enforce_env
    slow = CountingNas("127.0.0.5", SECRET, delay=0.05)
    try:
        with psycopg.connect(e.dsn) as conn:
            conn.execute("INSERT INTO nas (tenant_id, id, ip, secret, vendor, coa_port) "
                         "VALUES ('acme', 'bng-5', '127.0.0.5', %s, 'mikrotik', %s)",
                         (SECRET, slow.port))
        e.env["ISPSTREAM_COA_MAX_INFLIGHT_PER_NAS"] = "4"  # ~80 answers/s from this NAS
        e.env["ISPSTREAM_COA_TIMEOUT_S"] = "2"
        n = 300
        users = [f"u{i:03d}" for i in range(n)]
        e.produce(*[e.acct("Start", f"k{i}", user=u, nas="bng-5", ip="127.0.0.5")
                    for i, u in enumerate(users)])
        flow = e.start()
        e.settle()
        e.produce(*[e.action("throttle", f"i-{u}", user=u) for u in users])

        def acked():
            return _rows(e.dsn, "SELECT session_id FROM action_attempts WHERE state = 'ack'")

        wait_until(lambda: len(acked()) >= 40, 90, "the first answers", every=0.05)
        flow.kill()
        done_before = {r[0] for r in acked()}
        assert len(done_before) < n, "killed too late to test anything"
        e.start("enforce2")
        e.wait_final(n, timeout=120)
        # Requests per session: a retransmission (same Identifier and Request
        # Authenticator, RFC 5080) is the same request, so a request answered late on a
        # loaded machine does not count twice; a new send would be a new request.
        counts = Counter(sid for sid, _, _ in set(slow.seen))
        # every session throttled once; none answered before the kill was sent again
        assert set(counts) == {f"k{i}" for i in range(n)}
        assert all(counts[sid] == 1 for sid in done_before)
        # only requests in flight at the kill, or answered but not yet recorded, went out
        # twice: at-least-once towards the NAS, never for an answer already recorded
        twice = {sid for sid, c in counts.items() if c > 1}
        assert not twice & done_before
        assert max(counts.values()) <= 2 and len(twice) <= n - len(done_before)
        assert all(r[4] == "ack" for r in e.attempts())

        # A full replay from the beginning of the topics with no recovered state: nothing
        # is sent again, because every attempt is final in the database.
        for p in e.procs:
            p.stop()
        total = len(slow.seen)
        shutil.rmtree(e.tmp / "recovery")
        replay = e.start("enforce3")
        wait_until(lambda: "enforce" in replay.log(), 30, "the replaying flow")
        time.sleep(10)
        assert replay.alive()
        assert len(slow.seen) == total
    finally:
        slow.close()
