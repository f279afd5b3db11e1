"""End to end: radclient (a real NAS) -> collector -> broker -> usage flow -> PostgreSQL -> API.

Asserts exact bytes and money for a scenario with a gigawords wrap, an exact retransmit,
a resend with a bumped Acct-Delay-Time, reordered interims, Accounting-On mid-session, a
bad secret and an unknown source; and the same rows after killing the flow mid-stream.
"""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from ispstream import topics
from ispstream.inventory import apply_file
from ispstream.kafka import producer_config
from tests.procs import Proc, free_port, radclient, wait_until

pytestmark = pytest.mark.integration

SECRET = "s3cret-nas"
INVENTORY = """
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - id: fiber-1
        monthly_fee: "39.00"
        quota_gb: 1
        quota_counts: total
        after_quota: {overage_per_gb: "1.50"}
      - id: unlimited
        monthly_fee: "59.00"
    nas:
      - ip: 127.0.0.1
        name: bng-1
        secret: "s3cret-nas"
        vendor: mikrotik
    subscribers:
      - {username: alice, plan: fiber-1, cycle_anchor_day: 1}
      - {username: bob, plan: unlimited, cycle_anchor_day: 1}
"""


@pytest.fixture
def spine(pg_dsn, broker, topic_prefix, tmp_path, require_binary):
    """Collector + usage flow as real subprocesses against a fresh database and topics."""
    radclient_bin = require_binary("radclient")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    apply_file(pg_dsn, str(inv))
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    port = free_port(2)  # SOCK_DGRAM
    metrics = free_port()
    env = {
        "ISPSTREAM_DATABASE_URL": pg_dsn,
        "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
        "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{port}",
        "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{metrics}",
        "ISPSTREAM_SPOOL_DIR": str(tmp_path / "spool"),
        "ISPSTREAM_RECOVERY_DIR": str(tmp_path / "recovery"),
        "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5",
        "ISPSTREAM_INVENTORY_REFRESH_S": "1",
    }
    procs = {
        "collector": Proc("collector", ["collect", "radius"], env, tmp_path),
        "flow": Proc("flow", ["flow", "usage"], env, tmp_path),
    }

    class Spine:
        def send(self, attrs: dict, secret: str = SECRET) -> bool:
            return radclient(radclient_bin, port, secret, attrs)

        def metrics(self) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as r:
                return r.read().decode()

    s = Spine()
    s.env, s.procs, s.port, s.dsn, s.tmp = env, procs, port, pg_dsn, tmp_path
    wait_until(lambda: s.metrics(), 20, "the collector's metrics endpoint")
    yield s
    for p in procs.values():
        p.stop()


def _acct(status: str, session: str, user: str, **kw) -> dict:
    attrs = {"Acct-Status-Type": status, "Acct-Session-Id": session, "User-Name": user,
             "NAS-IP-Address": "127.0.0.1"}
    names = {"in_oct": "Acct-Input-Octets", "in_gw": "Acct-Input-Gigawords",
             "out_oct": "Acct-Output-Octets", "out_gw": "Acct-Output-Gigawords",
             "ts": "Event-Timestamp", "delay": "Acct-Delay-Time",
             "cause": "Acct-Terminate-Cause"}
    attrs.update({names[k]: v for k, v in kw.items()})
    return attrs


def _send_from(src_ip: str, port: int, secret: str, attrs: dict) -> bool:
    """Send one Accounting-Request from ``src_ip`` (built with pyrad); True if answered."""
    import socket

    from pyrad.packet import AccountingRequest, AcctPacket

    from collectors.radius.dictionary import load as load_dictionary

    pkt = AcctPacket(code=AccountingRequest, secret=secret.encode(), dict=load_dictionary())
    for name, value in attrs.items():
        pkt[name] = value
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src_ip, 0))
        sock.settimeout(2)
        sock.sendto(pkt.RequestPacket(), ("127.0.0.1", port))
        try:
            sock.recvfrom(4096)
            return True
        except socket.timeout:
            return False


def _rows(dsn: str, sql: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def test_scenario_exact_bytes_and_money(spine):
    t0 = int(time.time()) - 3600
    gw = 2**32
    sent = [
        _acct("Start", "s1", "alice", ts=t0),
        _acct("Interim-Update", "s1", "alice", ts=t0 + 300, in_oct=100_000_000, out_oct=5,
              out_gw=1),
        # exact retransmit: new RADIUS identifier, same content
        _acct("Interim-Update", "s1", "alice", ts=t0 + 300, in_oct=100_000_000, out_oct=5,
              out_gw=1),
        # reordered: the later interim arrives before the earlier one
        _acct("Interim-Update", "s1", "alice", ts=t0 + 900, in_oct=300_000_000,
              out_oct=400_000_005, out_gw=1),
        _acct("Interim-Update", "s1", "alice", ts=t0 + 600, in_oct=200_000_000,
              out_oct=200_000_005, out_gw=1),
    ]
    for attrs in sent:
        assert spine.send(attrs), f"no Accounting-Response for {attrs}"
    # Accounting-On mid-session: the NAS rebooted, every open session of it is closed.
    assert spine.send({"Acct-Status-Type": "Accounting-On", "Acct-Session-Id": "0",
                       "NAS-IP-Address": "127.0.0.1", "Event-Timestamp": t0 + 1000})
    # bob: Interim without Start (no Event-Timestamp: event time = arrival - delay), a
    # resend with a bumped Acct-Delay-Time, then a Stop.
    assert spine.send(_acct("Interim-Update", "s2", "bob", in_oct=1000, out_oct=2000))
    time.sleep(2)
    assert spine.send(_acct("Interim-Update", "s2", "bob", in_oct=1000, out_oct=2000, delay=2))
    assert spine.send(_acct("Stop", "s2", "bob", in_oct=1500, out_oct=5000))
    # A bad secret gets no answer and bills nothing.
    assert not spine.send(_acct("Interim-Update", "s1", "alice", ts=t0 + 950,
                                in_oct=9_000_000_000, out_oct=1), secret="wrong")
    assert 'result="bad_authenticator"} 1' in spine.metrics()
    # An unknown source (a NAS not in the inventory) gets no answer and bills nothing.
    assert not _send_from("127.0.0.2", spine.port, SECRET, _acct(
        "Interim-Update", "s1", "alice", ts=t0 + 960, in_oct=4_000_000_000, in_gw=2, out_oct=1))
    assert 'result="unknown_source"} 1' in spine.metrics()

    def totals():
        rows = _rows(spine.dsn, "SELECT username, sum(upload_bytes), sum(download_bytes), "
                     "sum(billable_bytes), sum(over_quota_bytes), sum(charge) FROM usage_rated "
                     "GROUP BY username ORDER BY username")
        return rows if len(rows) == 2 and rows[1][2] == 5000 and rows[0][1] == 300_000_000 \
            else None

    rows = wait_until(totals, 30, "rated usage in the database")
    alice, bob = rows
    billable = 300_000_000 + gw + 400_000_005
    over = billable - 10**9
    assert alice[1:] == (300_000_000, gw + 400_000_005, billable, over,
                         Decimal("1.50") * over / 10**9)
    assert bob[1:5] == (1500, 5000, 6500, 0) and bob[5] == 0

    sessions = dict((r[0], r[1:]) for r in _rows(
        spine.dsn, "SELECT session_id, state, close_reason, upload_bytes, download_bytes "
        "FROM sessions ORDER BY session_id"))
    assert sessions["s1"] == ("closed", "nas-reboot", 300_000_000, gw + 400_000_005)
    assert sessions["s2"] == ("closed", "stop", 1500, 5000)

    # The hourly rollup agrees with the rated rows to the byte and the cent.
    (hourly,) = _rows(spine.dsn, "SELECT sum(billable_bytes), sum(charge) FROM usage_hourly "
                      "WHERE username = 'alice'")
    assert hourly == (alice[3], alice[5])

    # usage.rated carries the same pieces for other systems.
    c = Consumer({"bootstrap.servers": spine.env["ISPSTREAM_KAFKA_BOOTSTRAP"],
                  "group.id": "t", "auto.offset.reset": "earliest"})
    c.subscribe([spine.env["ISPSTREAM_TOPIC_PREFIX"] + topics.USAGE_RATED])
    got = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(g["billable_bytes"] for g in got) < alice[3] + 6500:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(json.loads(m.value()))
    c.close()
    assert sum(g["billable_bytes"] for g in got) == alice[3] + 6500

    # And the API serves it (operator key, exact integers, money rounded once).
    from fastapi.testclient import TestClient

    from ispstream.apikeys import create_key
    from ispstream.settings import Settings
    from portal_api.app import create_app

    key = create_key(spine.dsn, "acme", "operator")
    app = create_app(Settings(database_url=spine.dsn, kafka_bootstrap=spine.env[
        "ISPSTREAM_KAFKA_BOOTSTRAP"]))
    with TestClient(app) as client:
        r = client.get("/v1/subscribers/alice/usage",
                       params={"from": _iso(t0 - 60), "to": _iso(int(time.time()) + 60)},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["upload_bytes"], body["download_bytes"], body["billable_bytes"]) == (
            300_000_000, gw + 400_000_005, alice[3])
        assert body["charge"] == "5.99" and body["currency"] == "EUR"
        r = client.get("/v1/sessions", params={"username": "alice"},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text


def _iso(epoch: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _dump(dsn: str):
    rated = _rows(dsn, "SELECT tenant_id, record_id, piece, ts, ts_start, username, nas_id, "
                  "session_id, plan_id, cycle_start, upload_bytes, download_bytes, "
                  "billable_bytes, zero_rated_bytes, over_quota_bytes, charge, flags "
                  "FROM usage_rated ORDER BY 1, 2, 3, 4")
    sessions = _rows(dsn, "SELECT tenant_id, nas_id, session_id, username, state, "
                     "close_reason, started_at, updated_at, stopped_at, upload_bytes, "
                     "download_bytes, resets, version FROM sessions ORDER BY 1, 2, 3")
    hourly = _rows(dsn, "SELECT * FROM usage_hourly ORDER BY 1, 2, 3")
    return rated, sessions, hourly


def test_kill_and_restart_flow_gives_identical_rows(spine, pg_template, tmp_path):
    """SIGKILL the flow mid-stream, restart it: the same rows and money as a clean run."""
    import uuid

    spine.procs["collector"].stop()
    producer = Producer(producer_config(spine.env["ISPSTREAM_KAFKA_BOOTSTRAP"]))
    topic = spine.env["ISPSTREAM_TOPIC_PREFIX"] + topics.RADIUS_ACCT
    t0 = int(time.time()) - 7200
    n_subs, n_interims = 40, 30
    users = ["alice", "bob"] + [f"ghost{i}" for i in range(n_subs - 2)]

    def produce(steps):
        for step in steps:
            for i, user in enumerate(users):
                status = "Start" if step == 0 else ("Stop" if step == n_interims + 1
                                                     else "Interim-Update")
                up = step * 7_654_321 * (i + 1)
                down = step * 123_456_789 * (i + 1)
                ev = {"v": 1, "tenant_id": "acme", "nas_id": "bng-1", "nas_ip": "127.0.0.1",
                      "status": status, "session_id": f"k{i}", "username": user,
                      "received_at": t0 + step * 60, "event_timestamp": t0 + step * 60,
                      "input_octets": up % 2**32, "input_gigawords": up >> 32,
                      "output_octets": down % 2**32, "output_gigawords": down >> 32}
                producer.produce(topic, key=f"acme/bng-1/k{i}", value=json.dumps(ev))
        assert producer.flush(10) == 0

    def rated_count():
        return _rows(spine.dsn, "SELECT count(*) FROM usage_rated")[0][0]

    flow = spine.procs["flow"]
    half = (n_interims + 2) // 2
    produce(range(half))
    producer.produce(topic, key="acme/bng-1/bad", value=b"{not json")
    # Kill as soon as the first rows land: mid-epoch, with state not yet snapshotted.
    wait_until(lambda: rated_count() > 0, 60, "the flow's first rows", every=0.02)
    flow.kill()
    produce(range(half, n_interims + 2))
    restarted = Proc("flow2", ["flow", "usage"], spine.env, tmp_path)
    spine.procs["flow2"] = restarted
    expected_rows = n_subs * (n_interims + 1)  # one positive delta per interim and stop
    wait_until(lambda: rated_count() >= expected_rows and
               _rows(spine.dsn, "SELECT count(*) FROM sessions WHERE state='closed'")[0][0]
               == n_subs, 90, "the restarted flow to catch up")
    time.sleep(1.5)  # let any replayed epoch settle

    # A clean run of the same input into a second database.
    ref_db = f"ispt_ref_{uuid.uuid4().hex[:8]}"
    base = spine.dsn.rpartition("/")[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{ref_db}" TEMPLATE "{pg_template}"')
    ref_dsn = f"{base}/{ref_db}"
    try:
        apply_file(ref_dsn, str(spine.tmp / "inventory.yaml"))
        ref = Proc("flow_ref", ["flow", "usage"], {
            **spine.env, "ISPSTREAM_DATABASE_URL": ref_dsn,
            "ISPSTREAM_RECOVERY_DIR": str(tmp_path / "recovery-ref")}, tmp_path)
        try:
            wait_until(lambda: _rows(ref_dsn, "SELECT count(*) FROM sessions WHERE "
                                     "state='closed'")[0][0] == n_subs and
                       _rows(ref_dsn, "SELECT count(*) FROM usage_rated")[0][0]
                       >= expected_rows, 90, "the reference run")
            time.sleep(1.5)
        finally:
            ref.stop()
        assert _dump(spine.dsn) == _dump(ref_dsn)
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{ref_db}" WITH (FORCE)')

    # The malformed record went to the dead-letter topic with its reason.
    c = Consumer({"bootstrap.servers": spine.env["ISPSTREAM_KAFKA_BOOTSTRAP"],
                  "group.id": "dlq", "auto.offset.reset": "earliest"})
    c.subscribe([spine.env["ISPSTREAM_TOPIC_PREFIX"] + topics.DEADLETTER])
    letters = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not letters:
        m = c.poll(0.5)
        if m is not None and not m.error():
            letters.append(json.loads(m.value()))
    c.close()
    assert letters and "invalid radius.acct record" in letters[0]["reason"]
    assert letters[0]["value"] == "{not json"
