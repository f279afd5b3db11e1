"""End to end: a NAS's accounting crosses a quota -> collector -> usage flow (quota
policies) -> ``actions`` -> enforce flow -> CoA / Disconnect to the NAS (FreeRADIUS) ->
recorded in PostgreSQL. Real processes, real packets both ways.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone

import psycopg
import pytest

from ispstream import topics
from ispstream.inventory import apply_file
from tests.integration.nas_coa import coa_nas, free_udp_port  # noqa: F401
from tests.procs import Proc, free_port, radclient, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-nas"
GB = 10**9
INVENTORY = """
tenants:
  - id: acme
    timezone: UTC
    currency: EUR
    plans:
      - id: capped
        monthly_fee: "20.00"
        quota_gb: 1
        after_quota: {{overage_per_gb: "0"}}
        rate_limit: "100M/100M"
        quota_policies:
          - {{at: 80, action: notify}}
          - {{at: 100, action: suspend}}
      - id: fair
        monthly_fee: "30.00"
        quota_gb: 1
        after_quota: {{throttle: "2M/2M"}}
        rate_limit: "100M/100M"
    nas:
      - {{ip: 127.0.0.1, name: bng-1, secret: "{secret}", vendor: mikrotik, coa_port: {p1}}}
      - {{ip: 127.0.0.2, name: bng-2, secret: "{secret}", vendor: huawei, coa_port: {p2}}}
    subscribers:
      - {{username: dave, plan: capped}}
      - {{username: erin, plan: fair}}
      - {{username: frank, plan: fair}}
"""


def _rows(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def _send_from(src_ip: str, port: int, attrs: dict) -> bool:
    """One Accounting-Request from ``src_ip`` (pyrad; radclient cannot choose its source)."""
    from pyrad.packet import AccountingRequest, AcctPacket

    from collectors.radius.dictionary import load as load_dictionary

    pkt = AcctPacket(code=AccountingRequest, secret=SECRET.encode(), dict=load_dictionary())
    for name, value in attrs.items():
        pkt[name] = value
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src_ip, 0))
        sock.settimeout(3)
        for _ in range(3):
            sock.sendto(pkt.RequestPacket(), ("127.0.0.1", port))
            try:
                sock.recvfrom(4096)
                return True
            except socket.timeout:
                continue
    return False


@pytest.fixture
def stack(pg_dsn, broker, topic_prefix, tmp_path, require_binary, coa_nas):
    radclient_bin = require_binary("radclient")
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    p1, p2 = free_udp_port("127.0.0.1"), free_udp_port("127.0.0.2")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY.format(secret=SECRET, p1=p1, p2=p2))
    apply_file(pg_dsn, str(inv))
    nas1 = coa_nas([("127.0.0.1", p1, "ack")], secret=SECRET)
    nas2 = coa_nas([("127.0.0.2", p2, "ack")], secret=SECRET)
    acct_port = free_port(socket.SOCK_DGRAM)
    metrics = free_port()
    env = {
        "ISPSTREAM_DATABASE_URL": pg_dsn,
        "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
        "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{acct_port}",
        "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{metrics}",
        "ISPSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "ISPSTREAM_RECOVERY_DIR": str(tmp_path / "recovery-usage"),
        "ISPSTREAM_ENFORCE_RECOVERY_DIR": str(tmp_path / "recovery-enforce"),
        "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5",
        "ISPSTREAM_INVENTORY_REFRESH_S": "1",
        "ISPSTREAM_COA_TIMEOUT_S": "0.5",
    }
    procs = {
        "collector": Proc("collector", ["collect", "radius"], env, tmp_path),
        "usage": Proc("usage", ["flow", "usage"], env, tmp_path),
        "enforce": Proc("enforce", ["flow", "enforce"], env, tmp_path),
    }

    def metrics_up():
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as r:
            return r.status == 200

    wait_until(metrics_up, 30, "the collector")
    # The enforce flow reads accounting and actions in parallel: after a cold start an
    # action can overtake the Start it follows. Wait until it consumes before sending.
    from confluent_kafka import Producer

    from ispstream.contracts import ActionEvent
    from ispstream.kafka import producer_config

    probe = ActionEvent(intent_id="probe", tenant_id="acme", username="probe", kind="notify",
                        source="operator", reason="probe", at=time.time())
    producer = Producer(producer_config(broker.bootstrap))
    producer.produce(topic_prefix + topics.ACTIONS, key="acme/probe",
                     value=probe.model_dump_json())
    producer.flush(10)
    wait_until(lambda: _rows(pg_dsn, "SELECT 1 FROM actions WHERE intent_id = 'probe'"), 60,
               "the enforce flow to consume")

    class Stack:
        def acct(self, nas_ip: str, status: str, session: str, user: str, ts: int,
                 down: int = 0, up: int = 0) -> bool:
            attrs = {"Acct-Status-Type": status, "Acct-Session-Id": session, "User-Name": user,
                     "NAS-IP-Address": nas_ip, "Event-Timestamp": ts,
                     "Acct-Input-Octets": up % 2**32, "Acct-Input-Gigawords": up >> 32,
                     "Acct-Output-Octets": down % 2**32, "Acct-Output-Gigawords": down >> 32,
                     "Acct-Interim-Interval": 300}
            if nas_ip == "127.0.0.1":  # a real NAS client: FreeRADIUS's radclient
                return radclient(radclient_bin, acct_port, SECRET, attrs, timeout=3, retries=3)
            return _send_from(nas_ip, acct_port, attrs)

        def attempts(self, user: str):
            return _rows(pg_dsn, "SELECT x.nas_id, x.session_id, x.request, x.state, "
                         "x.error_cause, a.kind, a.source, a.threshold_pct, x.answered_at "
                         "FROM action_attempts x JOIN actions a USING (tenant_id, intent_id) "
                         "WHERE a.username = %s ORDER BY x.answered_at NULLS LAST, 1, 2", user)

        def final(self, user: str, n: int, timeout: float = 90):
            return wait_until(lambda: (r := self.attempts(user)) and len(r) >= n
                              and all(x[3] != "sending" for x in r) and r, timeout,
                              f"{n} answered request(s) for {user}")

    s = Stack()
    s.dsn, s.env, s.procs, s.tmp, s.nas1, s.nas2 = pg_dsn, env, procs, tmp_path, nas1, nas2
    yield s
    for p in s.procs.values():
        p.stop()


def test_quota_crossing_to_nas_answer(stack):
    now = int(time.time())
    # dave: one session; 0.9 GB (a notify at 80 %), then past 1 GB: suspended -> the NAS
    # gets a Disconnect-Request and ACKs it.
    assert stack.acct("127.0.0.1", "Start", "d1", "dave", now - 120)
    time.sleep(2)
    assert stack.acct("127.0.0.1", "Interim-Update", "d1", "dave", now - 60, down=900_000_000)
    sent_at = time.time()
    assert stack.acct("127.0.0.1", "Interim-Update", "d1", "dave", int(sent_at),
                      down=GB + 5_000_000)
    (row,) = stack.final("dave", 1)
    assert row[:8] == ("bng-1", "d1", "disconnect", "ack", None, "suspend", "quota", 100)
    crossing_to_ack = row[8].timestamp() - sent_at
    print(f"\ncrossing accounting packet -> Disconnect-ACK recorded: {crossing_to_ack:.3f}s")
    assert crossing_to_ack < 20
    (req,) = stack.nas1.requests()
    assert (req.type, req.get("User-Name"), req.get("Acct-Session-Id")) == (
        "Disconnect-Request", "dave", "d1")
    wait_until(lambda: _rows(stack.dsn, "SELECT kind, state FROM actions WHERE username = "
                             "'dave' ORDER BY threshold_pct") == [("notify", "done"),
                                                                   ("suspend", "done")],
               30, "dave's actions recorded")
    assert _rows(stack.dsn, "SELECT state FROM enforcement_state WHERE username = 'dave'") == [
        ("suspended",)]

    # erin: two concurrent sessions on two NAS of different vendors; together past the
    # quota: both are throttled, each in its vendor's attributes.
    assert stack.acct("127.0.0.1", "Start", "e1", "erin", now - 100)
    assert stack.acct("127.0.0.2", "Start", "e2", "erin", now - 100)
    time.sleep(2)
    assert stack.acct("127.0.0.1", "Interim-Update", "e1", "erin", now - 10, down=600_000_000)
    assert stack.acct("127.0.0.2", "Interim-Update", "e2", "erin", now - 5, down=600_000_000)
    rows = stack.final("erin", 2)
    assert sorted(r[:8] for r in rows) == [
        ("bng-1", "e1", "coa", "ack", None, "throttle", "quota", 100),
        ("bng-2", "e2", "coa", "ack", None, "throttle", "quota", 100)]
    mk = [r for r in stack.nas1.requests() if r.get("User-Name") == "erin"]
    hw = stack.nas2.requests()
    assert [r.get("Mikrotik-Rate-Limit") for r in mk] == ["2M/2M"]
    assert [(r.get("Huawei-Input-Average-Rate"), r.get("Huawei-Output-Average-Rate"))
            for r in hw] == [("2000000", "2000000")]

    # Killing the enforce flow and starting it again resends nothing, and neither does
    # more accounting of the throttled sessions.
    stack.procs["enforce"].kill()
    stack.procs["enforce2"] = Proc("enforce2", ["flow", "enforce"], stack.env, stack.tmp)
    assert stack.acct("127.0.0.1", "Interim-Update", "e1", "erin", now, down=700_000_000)
    time.sleep(8)
    assert stack.procs["enforce2"].alive()
    assert len(stack.nas1.requests()) == 2 and len(stack.nas2.requests()) == 1
    # ... while a new session of the throttled subscriber is throttled at its Start.
    assert stack.acct("127.0.0.2", "Start", "e3", "erin", now + 1)
    rows = stack.final("erin", 3)
    assert ("bng-2", "e3", "coa", "ack") in [r[:4] for r in rows]
    assert Counter(r.get("Acct-Session-Id") for r in stack.nas2.requests()) == {"e2": 1,
                                                                                 "e3": 1}


def test_new_cycle_lifts_the_throttle(stack):
    now = datetime.now(timezone.utc)
    cycle_start = int(datetime(now.year, now.month, 1, tzinfo=timezone.utc).timestamp())
    last_cycle = cycle_start - 3600
    # frank crossed his fair-use quota in the previous cycle ...
    assert stack.acct("127.0.0.1", "Start", "f1", "frank", last_cycle - 600)
    time.sleep(2)  # the enforce flow knows the session before the usage flow acts on it
    assert stack.acct("127.0.0.1", "Interim-Update", "f1", "frank", last_cycle,
                      down=GB + 1)
    # ... and keeps using the line in the new one.
    assert stack.acct("127.0.0.1", "Interim-Update", "f1", "frank", int(time.time()),
                      down=GB + 50_000_000)
    rows = stack.final("frank", 2)
    assert [(r[1], r[2], r[3], r[5]) for r in rows] == [("f1", "coa", "ack", "throttle"),
                                                        ("f1", "coa", "ack", "resume")]
    # the throttle is lifted to the plan's rate, in that order at the NAS
    assert [r.get("Mikrotik-Rate-Limit") for r in stack.nas1.requests()] == ["2M/2M",
                                                                              "100M/100M"]
    wait_until(lambda: _rows(stack.dsn, "SELECT state FROM enforcement_state WHERE username "
                             "= 'frank'") == [("normal",)], 30, "frank back to normal")
    sources = {r[0] for r in _rows(stack.dsn, "SELECT source FROM actions WHERE username = "
                                   "'frank' AND kind = 'resume'")}
    assert sources == {"cycle"}
