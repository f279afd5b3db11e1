"""The fault flow as a real ``ispstream flow faults`` process fed through the broker.

A simulated OLT (64 ONUs on one PON, 4 on another): one ONU degrades, one goes LOS, then
the whole PON goes dark -> exactly one PON alert naming the feeder fibre cut, the per-ONU
alerts on that PON suppressed by it, and only the unsuppressed ones delivered to a real
webhook receiver (signed, retried after a 500) and a real SMTP server; light returns ->
everything cleared. A router's interfaces: oper down, flapping, sustained utilization,
a sysUpTime reset without a traffic spike, unreachable and back; a bad record becomes a
dead letter with its reason.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from ispstream import topics
from ispstream.kafka import producer_config
from pipelines.alert_delivery import SIGNATURE_HEADER, verify
from tests.integration.test_faults_delivery import (
    SECRET,
    SmtpPeer,
    WebhookPeer,
    add_channels,
    seed_tenant,
)
from tests.procs import Proc, wait_until

pytestmark = pytest.mark.integration

PON_A, PON_B = "gpon_0/1/1", "gpon_0/1/2"
ONUS = [(PON_A, str(i)) for i in range(1, 65)] + [(PON_B, str(i)) for i in range(1, 5)]
WAIT = 90  # the machine may be busy: generous, the happy path takes seconds


def user_of(pon: str, onu: str) -> str:
    return f"{'a' if pon == PON_A else 'b'}{onu}"


@pytest.fixture
def faults(pg_dsn, broker, topic_prefix, tmp_path):
    seed_tenant(pg_dsn, [user_of(p, o) for p, o in ONUS])
    with psycopg.connect(pg_dsn) as conn:
        for dev, kind, ip in (("olt-1", "olt", "192.0.2.10"), ("router-1", "router",
                                                               "192.0.2.20")):
            conn.execute("INSERT INTO devices (tenant_id, id, kind, address, snmp_version, "
                         "community) VALUES ('acme', %s, %s, %s, '2c', 'public')",
                         (dev, kind, ip))
        for pon, onu in ONUS:
            conn.execute("INSERT INTO onu_links (tenant_id, username, olt_id, pon, onu_id) "
                         "VALUES ('acme', %s, 'olt-1', %s, %s)", (user_of(pon, onu), pon, onu))
    hook, smtp = WebhookPeer([500]), SmtpPeer()
    add_channels(pg_dsn, hook.url, smtp.port, hook_min="major", mail_min="critical", hold_s=1)
    for t in topics.ALL_TOPICS:
        broker.create_topic(topic_prefix + t, 4)
    env = {"ISPSTREAM_DATABASE_URL": pg_dsn, "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
           "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
           "ISPSTREAM_FAULTS_RECOVERY_DIR": str(tmp_path / "rec"),
           "ISPSTREAM_SNAPSHOT_INTERVAL_S": "0.5", "ISPSTREAM_INVENTORY_REFRESH_S": "0.5"}
    procs = [Proc("faults", ["flow", "faults"], env, tmp_path)]
    producer = Producer(producer_config(broker.bootstrap))

    def send(topic: str, key: str, body: dict | str) -> None:
        producer.produce(topic_prefix + topic, key=key,
                         value=body if isinstance(body, str) else json.dumps(body))
        assert producer.flush(10) == 0

    def restart() -> Proc:
        procs[-1].kill()
        procs.append(Proc(f"faults{len(procs)}", ["flow", "faults"], env, tmp_path))
        return procs[-1]

    yield send, pg_dsn, hook, smtp, (broker.bootstrap, topic_prefix), procs[0], restart
    procs[-1].stop()
    hook.close()
    smtp.close()


def rows(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def read_topic(bootstrap: str, topic: str, want: int, timeout: float = WAIT) -> list[dict]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time_ns()}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append((m.key().decode(), json.loads(m.value())))
        # anything beyond what was expected would be a bug: give it a moment to show up
        end = time.monotonic() + 2
        while time.monotonic() < end:
            m = c.poll(0.2)
            if m is not None and not m.error():
                out.append((m.key().decode(), json.loads(m.value())))
    finally:
        c.close()
    return out


def optical_poll(t: float, level) -> dict:
    """One OnuOpticalPoll of olt-1; ``level(pon, onu)`` is the ONU Rx, or None: offline."""
    onus = []
    for pon, onu in ONUS:
        rx = level(pon, onu)
        onus.append({"pon": pon, "onu_id": onu, "serial": f"HWTC{pon[-1]}{int(onu):04d}",
                     "online": rx is not None, "onu_rx_dbm": rx,
                     "onu_tx_dbm": 2.1 if rx is not None else None,
                     "olt_rx_dbm": -22.0 if rx is not None else None,
                     "temperature_c": 45.0})
    return {"v": 1, "tenant_id": "acme", "olt_id": "olt-1", "profile": "huawei", "at": t,
            "onus": onus}


def live_alerts(dsn: str) -> list[tuple]:
    return rows(dsn, "SELECT kind, object, severity, suppressed_by, probable_cause, alert_id "
                     "FROM alerts WHERE state <> 'cleared' ORDER BY kind, object")


def test_simulated_olt_degrade_los_pon_dark_and_back(faults):
    send, dsn, hook, smtp, (bootstrap, prefix), proc, _ = faults
    t0 = float(int(time.time()) - 3600)
    ok = -20.0

    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0, lambda p, o: ok))
    wait_until(lambda: rows(dsn, "SELECT count(*) FROM onus")[0][0] == 68, WAIT,
               "68 ONUs stored" + (f"; flow log: {proc.log()[-3000:]}" if not proc.alive()
                                   else ""))
    assert live_alerts(dsn) == []

    # 1. one ONU degrades below the class B+ limit
    degraded = lambda p, o: -28.5 if (p, o) == (PON_A, "5") else ok  # noqa: E731
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0 + 300, degraded))
    wait_until(lambda: [a[:4] for a in live_alerts(dsn)] ==
               [("onu_low_rx", f"{PON_A}/5", "major", None)], WAIT, "onu_low_rx")

    # 2. another ONU goes LOS: the OLT's trap, then the next poll shows it offline
    send(topics.SNMP_TRAPS, "acme/olt-1", {
        "v": 1, "tenant_id": "acme", "device_id": "olt-1", "source_ip": "192.0.2.10",
        "received_at": t0 + 400, "snmp_version": "v2c", "trap_oid": "1.3.6.1.4.1.2011.1",
        "kind": "onu_los", "pon": PON_A, "onu_id": "9"})
    wait_until(lambda: [a[0] for a in live_alerts(dsn)] == ["onu_los", "onu_low_rx"], WAIT,
               "onu_los")
    los = lambda p, o: None if (p, o) == (PON_A, "9") else degraded(p, o)  # noqa: E731
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0 + 600, los))
    wait_until(lambda: rows(dsn, "SELECT count(*) FROM onu_optical_samples")[0][0] == 3 * 68,
               WAIT, "the third poll stored")
    assert [a[:4] for a in live_alerts(dsn)] == [
        ("onu_los", f"{PON_A}/9", "major", None),
        ("onu_low_rx", f"{PON_A}/5", "major", None)]
    # both are major: delivered once their hold (1 s) is over, the first after a 500
    wait_until(lambda: len(hook.requests) >= 3, WAIT, "two webhook deliveries and a retry")

    # 3. the whole PON goes dark (PON B stays up)
    dark = lambda p, o: None if p == PON_A else ok  # noqa: E731
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0 + 900, dark))
    pon = wait_until(lambda: [a for a in live_alerts(dsn) if a[0] == "pon_down"], WAIT,
                     "the PON alert")
    assert len(pon) == 1
    _, obj, severity, suppressed, cause, pon_id = pon[0]
    assert (obj, severity, suppressed, cause) == (PON_A, "critical", None, "feeder fibre cut")
    live = live_alerts(dsn)
    assert [a[0] for a in live if a[3] is None] == ["pon_down"]  # one alert, not 64
    per_onu = [a for a in live if a[0] != "pon_down"]
    assert len(per_onu) == 64 + 1  # 62 offline + LOS on 9 + offline and low Rx on 5
    assert {a[3] for a in per_onu} == {pon_id}
    assert sorted(a[1] for a in per_onu if a[0] == "onu_offline") == \
        sorted(f"{PON_A}/{i}" for i in range(1, 65) if i != 9)
    (subs,) = rows(dsn, "SELECT affected_subscribers FROM alerts WHERE alert_id = %s",
                   pon_id)[0]
    assert sorted(subs) == sorted(f"a{i}" for i in range(1, 65) if i != 9)  # went down now

    # 4. light returns: everything clears
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0 + 1200, lambda p, o: ok))
    wait_until(lambda: live_alerts(dsn) == [], WAIT, "every alert cleared")
    assert rows(dsn, "SELECT count(DISTINCT alert_id) FILTER (WHERE kind = 'pon_down'), "
                     "count(*) FROM alerts") == [(1, 66)]
    assert rows(dsn, "SELECT state, note FROM alert_history WHERE alert_id = %s ORDER BY at",
                pon_id) == [("open", "opened"), ("cleared", "63 of 63 ONUs back online")]
    assert rows(dsn, "SELECT count(*), sum(samples), sum(offline_samples) "
                     "FROM onu_optical_hourly") in ([(68, 5 * 68, 65)], [(136, 5 * 68, 65)])
    assert rows(dsn, "SELECT online, baseline_rx_dbm IS NOT NULL FROM onus "
                     "WHERE pon = %s AND onu_id = '9'", PON_A) == [(True, True)]

    # The alerts topic: every change, keyed tenant/key; the PON alert opened and cleared.
    # low Rx, LOS; 63 offline (suppressed), the PON alert and 2 suppressions; 66 clearings
    events = read_topic(bootstrap, prefix + topics.ALERTS, want=1 + 1 + 66 + 66)
    assert len(events) == 134
    for key, ev in events:
        assert key == f"acme/{ev['key']}"
    pon_events = [(e["state"], e["suppressed_by"]) for _, e in events if e["kind"] == "pon_down"]
    assert pon_events == [("open", None), ("cleared", None)]
    opened_unsuppressed = {e["key"] for _, e in events
                           if e["state"] == "open" and e["suppressed_by"] is None}
    assert opened_unsuppressed == {f"onu_low_rx:olt-1/{PON_A}/5", f"onu_los:olt-1/{PON_A}/9",
                                   f"pon_down:olt-1/{PON_A}"}
    assert {e["key"] for _, e in events if e["state"] == "cleared"} == \
        {e["key"] for _, e in events}

    # Delivery: the webhook saw exactly the unsuppressed alerts open and clear (signed;
    # the first request got a 500 and was retried); e-mail only the critical PON alert.
    expected = {(k, s) for k in opened_unsuppressed for s in ("open", "cleared")}
    wait_until(lambda: {(e["key"], e["state"]) for e in hook.events()} == expected
               and len(smtp.messages) == 2, WAIT, "deliveries of the cleared states")
    time.sleep(2)  # nothing else may arrive
    assert len(hook.requests) == len(expected) + 1
    for headers, body in hook.requests:
        assert verify(body, SECRET, headers[SIGNATURE_HEADER.lower()])
    assert rows(dsn, "SELECT count(*) FROM alert_deliveries WHERE channel_id = 'noc-hook' "
                     "AND status = 'delivered' AND attempts = 2") == [(1,)]
    subjects = sorted(m["Subject"] for _, _, m in smtp.messages)
    assert subjects == [f"[CRITICAL] CLEARED: PON {PON_A} on olt-1 down (feeder fibre cut)",
                        f"[CRITICAL] OPEN: PON {PON_A} on olt-1 down (feeder fibre cut)"]
    assert proc.alive()


def if_poll(t: float, uptime_cs: int, ifs: list[tuple]) -> dict:
    """IfStatsPoll of router-1; ifs: (index, oper, in_octets, out_octets)."""
    return {"v": 1, "tenant_id": "acme", "device_id": "router-1", "at": t,
            "sys_uptime_cs": uptime_cs, "interfaces": [
                {"if_index": i, "name": f"ge-0/0/{i}", "oper_status": oper, "admin_status": 1,
                 "high_speed_mbps": 1000, "in_octets": inn, "out_octets": out}
                for i, oper, inn, out in ifs]}


def test_interfaces_down_flapping_utilization_reset_and_reachability(faults):
    send, dsn, _, _, (bootstrap, prefix), proc, _ = faults
    t0 = float(int(time.time()) - 7200)
    line = 125_000_000 * 60  # bytes a 1 Gbit/s line moves in 60 s
    up = 360_000  # sysUpTime at the first poll (cs)
    counters = {1: 0, 2: 0, 3: 0}
    flaps = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1]
    for n in range(11):
        counters[1] += int(0.10 * line)
        counters[3] += int(0.95 * line)
        oper1 = 2 if n in (6, 7) else 1
        send(topics.SNMP_IFSTATS, "acme/router-1", if_poll(t0 + 60 * n, up + 6000 * n, [
            (1, oper1, counters[1], counters[1] // 2), (2, flaps[n], 0, 0),
            (3, 1, counters[3], 1000 * n)]))
    wait_until(lambda: rows(dsn, "SELECT count(*) FROM if_samples")[0][0] == 33, WAIT,
               "33 interface samples")
    history = {k: v for k, v in rows(dsn, "SELECT a.key, array_agg(h.state || ':' || h.note "
                                          "ORDER BY h.at) FROM alert_history h JOIN alerts a "
                                          "USING (tenant_id, alert_id) GROUP BY a.key")}
    assert history["if_down:router-1/1"] == ["open:opened", "cleared:interface up"]
    assert history["if_flapping:router-1/2"] == ["open:opened"]
    assert history["if_high_util:router-1/3"] == ["open:opened"]
    # if 2 went down three times; the third time it was known to flap, which explains it
    flap_id = rows(dsn, "SELECT alert_id FROM alerts WHERE kind = 'if_flapping'")[0][0]
    assert rows(dsn, "SELECT suppressed_by, state FROM alerts WHERE kind = 'if_down' "
                     "AND object = 'ge-0/0/2' ORDER BY opened_at") == \
        [(None, "cleared"), (None, "cleared"), (flap_id, "cleared")]
    util_opened = rows(dsn, "SELECT extract(epoch FROM opened_at) FROM alerts "
                            "WHERE kind = 'if_high_util'")[0][0]
    assert float(util_opened) == t0 + 300  # 5 min at 95 % (samples 1..5)
    in_bps = rows(dsn, "SELECT in_bps FROM if_samples WHERE if_index = 1 AND ts = "
                       "to_timestamp(%s)", t0 + 60)[0][0]
    assert in_bps == pytest.approx(0.10 * 1e9)

    # The router reboots: sysUpTime and counters restart -> flagged, no rate, no spike.
    send(topics.SNMP_IFSTATS, "acme/router-1", if_poll(t0 + 660, 3000, [
        (1, 1, 1000, 1000), (2, 1, 0, 0), (3, 1, 10, 10)]))
    send(topics.SNMP_IFSTATS, "acme/router-1", if_poll(t0 + 720, 9000, [
        (1, 1, 1000 + int(0.2 * line), 1000), (2, 1, 0, 0), (3, 1, 10, 10)]))
    wait_until(lambda: rows(dsn, "SELECT count(*) FROM if_samples")[0][0] == 39, WAIT,
               "samples across the reboot")
    assert rows(dsn, "SELECT discontinuity, in_bps FROM if_samples WHERE if_index = 1 "
                     "AND ts >= to_timestamp(%s) ORDER BY ts", t0 + 660) == \
        [(True, None), (False, pytest.approx(0.2 * 1e9))]
    assert rows(dsn, "SELECT max(in_bps) <= 1e9 FROM if_samples") == [(True,)]
    # utilization fell to ~0 %: cleared
    assert rows(dsn, "SELECT state FROM alerts WHERE kind = 'if_high_util'") == [("cleared",)]
    (hourly,) = rows(dsn, "SELECT sum(samples) FROM if_hourly WHERE if_index = 1")
    assert hourly == (13,)

    # Unreachable, then back.
    status = {"v": 1, "tenant_id": "acme", "device_id": "router-1", "at": t0 + 800,
              "reachable": False, "reason": "timeout", "consecutive_failures": 3}
    send(topics.DEVICE_STATUS, "acme/router-1", status)
    wait_until(lambda: rows(dsn, "SELECT severity, state FROM alerts "
                                 "WHERE kind = 'device_unreachable'") == [("critical", "open")],
               WAIT, "device unreachable")
    assert rows(dsn, "SELECT reachable, reason FROM device_status") == [(False, "timeout")]
    send(topics.DEVICE_STATUS, "acme/router-1",
         {**status, "at": t0 + 900, "reachable": True, "reason": "recovered",
          "consecutive_failures": 0})
    wait_until(lambda: rows(dsn, "SELECT state FROM alerts WHERE kind = "
                                 "'device_unreachable'") == [("cleared",)], WAIT, "reachable")

    # A record that breaks the contract goes to the dead-letter topic with the reason.
    send(topics.SNMP_IFSTATS, "acme/router-1", '{"v": 1, "tenant_id": "acme"}')
    send(topics.SNMP_TRAPS, "acme/router-1", {
        "v": 1, "tenant_id": "acme", "device_id": "router-1", "source_ip": "192.0.2.20",
        "received_at": t0 + 901, "snmp_version": "v2c", "trap_oid": "1.3.6.1.6.3.1.1.5.3",
        "kind": "link_down"})
    letters = read_topic(bootstrap, prefix + topics.DEADLETTER, want=2)
    reasons = sorted(d["reason"] for _, d in letters)
    assert len(reasons) == 2
    assert reasons[0].startswith("invalid IfStatsPoll: ") and "device_id" in reasons[0]
    assert reasons[1] == "invalid TrapEvent: link_down trap without an ifIndex"
    assert proc.alive()


def test_killed_and_restarted_flow_gives_the_same_alerts(faults):
    send, dsn, _, _, (bootstrap, prefix), _, restart = faults
    t0 = float(int(time.time()) - 1800)
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0, lambda p, o: -20.0))
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(
        t0 + 300, lambda p, o: -28.5 if (p, o) == (PON_A, "5") else -20.0))
    (low,) = wait_until(lambda: live_alerts(dsn), WAIT, "onu_low_rx")
    proc = restart()  # SIGKILL, then the same command again: it resumes from its snapshot
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(
        t0 + 600, lambda p, o: None if p == PON_A else -20.0))
    wait_until(lambda: [a for a in live_alerts(dsn) if a[0] == "pon_down"], WAIT,
               "the PON alert after the restart")
    assert [a[5] for a in live_alerts(dsn) if a[0] == "onu_low_rx"] == [low[5]]
    send(topics.ONU_OPTICAL, "acme/olt-1", optical_poll(t0 + 900, lambda p, o: -20.0))
    wait_until(lambda: live_alerts(dsn) == [], WAIT, "every alert cleared")
    # one episode per condition, whatever was replayed
    assert rows(dsn, "SELECT kind, count(*) FROM alerts GROUP BY kind ORDER BY kind") == [
        ("onu_low_rx", 1), ("onu_offline", 64), ("pon_down", 1)]
    assert rows(dsn, "SELECT count(*) FROM onu_optical_samples") == [(4 * 68,)]
    assert rows(dsn, "SELECT count(*) FROM alert_history WHERE alert_id = %s", low[5]) == \
        [(3,)]  # opened, suppressed by the PON alert, cleared
    assert proc.alive()


def test_olt_ifindex_above_2_31_is_stored_exactly(faults):
    """Huawei PON ports have ifIndex 0xFA000000 + ...: above a signed 32-bit integer."""
    send, dsn, *_ = faults
    t0 = float(int(time.time()) - 600)
    pon = 0xFA000000 + 1 * 0x2000 + 15 * 0x100  # GPON 0/1/15 = 4194316032
    for n in range(2):
        send(topics.SNMP_IFSTATS, "acme/router-1", if_poll(t0 + 60 * n, 6000 * (n + 1), [
            (pon, 1, 1_000_000 * n, 0)]))
    wait_until(lambda: rows(dsn, "SELECT count(*) FROM if_samples WHERE if_index = %s",
                            pon)[0][0] == 2, WAIT, "both samples of the PON port")
    assert rows(dsn, "SELECT if_index FROM interfaces WHERE if_index = %s", pon) == [(pon,)]
