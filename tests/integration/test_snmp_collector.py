"""``ispstream collect snmp`` as a real process against real peers: devices applied with
``ispstream.inventory``, snmpsim serving router recordings, snmpd (the test host, v2c and
v3 authPriv), a silent port as a dead OLT, net-snmp's snmptrap/snmpinform as trap
senders, and the embedded broker; records are read back from Kafka."""

from __future__ import annotations

import json
import math
import os
import socket
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from collectors.snmp.client import privacy_available
from ispstream import topics
from ispstream.contracts import DeviceStatus, IfStatsPoll, TrapEvent
from ispstream.inventory import apply_file
from tests.integration.snmp_peers import (  # noqa: F401
    recorded_interfaces,
    send_trap,
    silent_port,
    snmpd,
    snmpsim,
)
from tests.procs import Proc, free_port, metrics, wait_until

pytestmark = pytest.mark.integration

TENANT = "acme"
INTERVAL_S = 10  # the smallest interval the schema allows
UNREACHABLE_AFTER = 2
DEAD_TIMEOUT_S = 1
DEAD_RETRIES = 1
SLOW = 150  # seconds: generous, the machine is shared


def inventory(snmpd, snmpsim, dead, with_rb5009: bool) -> str:
    asr, mx, rb = snmpsim.addresses
    devices = f"""\
      - id: asr920
        kind: router
        address: {asr}
        port: {snmpsim.port}
        snmp: {{version: 2c, community: iosxe_asr920}}
        intervals: {{interfaces: {INTERVAL_S}}}
        timeout_s: 5
        retries: 2
      - id: mx5
        kind: router
        address: {mx}
        port: {snmpsim.port}
        snmp: {{version: 2c, community: junos_mx5t-isis}}
        intervals: {{interfaces: {INTERVAL_S}}}
        max_inflight: 1
        timeout_s: 5
        retries: 2
      - id: host-v3
        kind: nas
        address: 127.0.0.1
        port: {snmpd.port}
        intervals: {{interfaces: {INTERVAL_S}}}
        timeout_s: 5
        snmp:
          version: "3"
          user: {snmpd.user}
          auth_protocol: SHA
          auth_key: "{snmpd.auth_key}"
          priv_protocol: AES
          priv_key: "{snmpd.priv_key}"
          engine_id: "{snmpd.engine_id}"
      - id: host-v2c
        kind: switch
        address: 127.0.0.2
        port: {snmpd.port}
        snmp: {{version: 2c, community: {snmpd.community}}}
        intervals: {{interfaces: {INTERVAL_S}}}
        timeout_s: 5
      - id: olt-dead
        kind: olt
        address: {dead.host}
        port: {dead.port}
        vendor_profile: huawei-ma5800
        snmp: {{version: 2c, community: olt-community}}
        intervals: {{interfaces: {INTERVAL_S}}}
        timeout_s: {DEAD_TIMEOUT_S}
        retries: {DEAD_RETRIES}
"""
    if with_rb5009:
        devices += f"""\
      - id: rb5009
        kind: nas
        address: {rb}
        port: {snmpsim.port}
        snmp: {{version: 2c, community: "routeros_rb5009upr+s+"}}
        intervals: {{interfaces: {INTERVAL_S}}}
        timeout_s: 5
        retries: 2
"""
    return f"""\
tenants:
  - id: {TENANT}
    timezone: UTC
    currency: EUR
    devices:
{devices}"""


def collector_env(pg_dsn, broker, topic_prefix, trap_addr: str, metrics_port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISPSTREAM_")}
    env.update({"ISPSTREAM_DATABASE_URL": pg_dsn,
                "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
                "ISPSTREAM_SNMP_TRAP_ADDR": trap_addr,
                "ISPSTREAM_SNMP_METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
    return env


class Reader:
    """Reads topics (4 partitions each) from the beginning, keeping every record."""

    def __init__(self, bootstrap: str, names: list[str]) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"t{time.time_ns()}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(n, p, OFFSET_BEGINNING)
                              for n in names for p in range(4)])
        self.records: dict[str, list[tuple[str, dict]]] = {n: [] for n in names}

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.records[msg.topic()].append((msg.key().decode(),
                                                  json.loads(msg.value())))

    def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.5)
            found = predicate()
            if found:
                return found
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; have "
                             f"{ {k: len(v) for k, v in self.records.items()} }")

    def close(self) -> None:
        self.consumer.close()


def test_collect_snmp_end_to_end(tmp_path, pg_dsn, broker, topic_prefix, snmpd, snmpsim,
                                 silent_port):
    assert privacy_available(), ("SNMPv3 privacy needs the 'cryptography' package, which "
                                 "pysnmp uses but does not require")
    names = {t: f"{topic_prefix}{t}" for t in (topics.SNMP_IFSTATS, topics.DEVICE_STATUS,
                                               topics.SNMP_TRAPS)}
    for name in names.values():
        broker.create_topic(name, 4)
    inv = tmp_path / "inventory.yaml"
    inv.write_text(inventory(snmpd, snmpsim, silent_port, with_rb5009=False))
    apply_file(pg_dsn, inv)

    trap_port = free_port(socket.SOCK_DGRAM)
    metrics_port = free_port()
    env = collector_env(pg_dsn, broker, topic_prefix, f"127.0.0.1:{trap_port}", metrics_port)
    env.update({"ISPSTREAM_DEVICE_UNREACHABLE_AFTER": str(UNREACHABLE_AFTER),
                "ISPSTREAM_INVENTORY_REFRESH_S": "1"})
    proc = Proc("collect-snmp", ["collect", "snmp"], env, tmp_path)
    reader = Reader(broker.bootstrap, list(names.values()))
    try:
        wait_until(lambda: metrics(metrics_port) is not None or not proc.alive(), 90,
                   "the metrics endpoint")
        assert proc.alive(), proc.log()
        started = time.monotonic()

        # a device added to the inventory while the collector runs is picked up
        inv.write_text(inventory(snmpd, snmpsim, silent_port, with_rb5009=True))
        apply_file(pg_dsn, inv)

        # --- traps -----------------------------------------------------------------
        v2c = ["-v2c", "-c", snmpd.community]
        v3 = ["-v3", "-u", snmpd.user, "-l", "authPriv", "-a", "SHA", "-A", snmpd.auth_key,
              "-x", "AES", "-X", snmpd.priv_key, "-e", f"0x{snmpd.engine_id}"]
        link_down = ["", "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.2.1.2.2.1.1.1", "i", "1",
                     "1.3.6.1.2.1.2.2.1.7.1", "i", "1", "1.3.6.1.2.1.2.2.1.8.1", "i", "2"]
        link_up = ["", "1.3.6.1.6.3.1.1.5.4", "1.3.6.1.2.1.2.2.1.1.2", "i", "2"]
        dying_gasp = ["", "1.3.6.1.4.1.2011.6.128.1.1.2.0.99",
                      "1.3.6.1.4.1.2011.6.128.1.1.2.43.1.3.4194316032.7", "s", "HWTC1A2B3C4D",
                      "1.3.6.1.4.1.2011.2.15.1.7.1.3.0", "s", "The ONT dying gasp alarm"]
        sends = [
            (v2c, link_down, "127.0.0.2", False),  # host-v2c: accepted
            (v3, link_up, "127.0.0.1", False),  # host-v3, its engine id: accepted
            (["-v2c", "-c", "olt-community"], dying_gasp, silent_port.host, False),  # OLT
            (v2c, ["", "1.3.6.1.6.3.1.1.5.1"], "127.0.0.2", True),  # an inform: answered
            ([*v3[:8], "wrong-auth-key", *v3[9:]], link_up, "127.0.0.1", False),  # bad key
            (v2c, link_down, "127.0.0.3", False),  # unknown source
            (v2c, link_down, "127.0.0.1", False),  # v2c from the v3 device's address
            (["-v2c", "-c", "nobody-uses-this"], link_down, "127.0.0.2", False),
        ]
        senders = tmp_path / "senders"
        senders.mkdir()
        for options, trap, source, inform in sends:
            res = send_trap(senders, trap_port, options, trap, source=source, inform=inform)
            assert res.returncode == 0, (options, source, res.stderr)

        def trap_events():
            return [TrapEvent.model_validate(v) for _, v in reader.records[names["snmp.traps"]]]

        events = reader.until(lambda: len(trap_events()) >= 4 and trap_events(), SLOW,
                              "four accepted notifications")
        by_kind = {e.kind: e for e in events}
        assert sorted(by_kind) == ["cold_start", "link_down", "link_up", "onu_dying_gasp"]
        down = by_kind["link_down"]
        assert (down.device_id, down.source_ip, down.snmp_version, down.if_index) == (
            "host-v2c", "127.0.0.2", "v2c", 1)
        assert down.varbinds["1.3.6.1.2.1.2.2.1.8.1"] == "2"
        up = by_kind["link_up"]
        assert (up.device_id, up.snmp_version, up.if_index) == ("host-v3", "v3", 2)
        gasp = by_kind["onu_dying_gasp"]
        assert (gasp.device_id, gasp.pon, gasp.onu_id) == ("olt-dead", "4194316032", "7")
        assert by_kind["cold_start"].device_id == "host-v2c"
        key = {k for k, _ in reader.records[names["snmp.traps"]]}
        assert key == {f"{TENANT}/host-v2c", f"{TENANT}/host-v3", f"{TENANT}/olt-dead"}

        def trap_counts():
            m = metrics(metrics_port) or {}
            return {r: m.get(f'ispstream_snmp_traps_total{{result="{r}"}}') for r in (
                "accepted", "unknown_source", "wrong_credentials", "bad_community",
                "usm_wrong_digests")}

        wait_until(lambda: trap_counts() == {"accepted": 4, "unknown_source": 1,
                                             "wrong_credentials": 1, "bad_community": 1,
                                             "usm_wrong_digests": 1}, 30,
                   f"the drop counters ({trap_counts()})")

        # --- polls -------------------------------------------------------------------
        def polls_of(device: str) -> list[IfStatsPoll]:
            return [IfStatsPoll.model_validate(v) for k, v in
                    reader.records[names["snmp.ifstats"]] if k == f"{TENANT}/{device}"]

        live = ("asr920", "mx5", "rb5009", "host-v3", "host-v2c")
        reader.until(lambda: all(polls_of(d) for d in live), SLOW, "a poll of every device")
        recordings = {"asr920": "iosxe_asr920", "mx5": "junos_mx5t-isis",
                      "rb5009": "routeros_rb5009upr+s+"}
        for device, community in recordings.items():
            expected = recorded_interfaces(snmpsim.data_dir / f"{community}.snmprec")
            poll = polls_of(device)[0]
            got = {row.if_index: row for row in poll.interfaces}
            assert set(got) == set(expected), device
            for index, want in expected.items():
                assert got[index].name == (want.get("name") or want.get("descr"))
                assert got[index].in_octets == want.get("in_octets"), (device, index)
                assert got[index].out_octets == want.get("out_octets"), (device, index)
                assert got[index].high_speed_mbps == want.get("high_speed_mbps")
        rb = {r.if_index: r for r in polls_of("rb5009")[0].interfaces}
        assert (rb[2].name, rb[2].in_octets) == ("ether1", 5892696685)  # above 2^32
        assert polls_of("mx5")[0].sys_uptime_cs == 122429879
        for device in ("host-v3", "host-v2c"):
            poll = polls_of(device)[0]
            lo = next(r for r in poll.interfaces if r.name == "lo")
            assert type(lo.in_octets) is int and lo.oper_status == 1
            assert poll.sys_uptime_cs and poll.sys_uptime_cs > 0

        # --- an unreachable device: announced once, never hammered ------------------------
        def statuses(device: str) -> list[DeviceStatus]:
            return [DeviceStatus.model_validate(v) for k, v in
                    reader.records[names["device.status"]] if k == f"{TENANT}/{device}"]

        reader.until(lambda: statuses("olt-dead"), SLOW, "the dead OLT announced")
        reader.pump(INTERVAL_S * 1.5)  # at least one more failed poll
        (dead,) = statuses("olt-dead")
        assert (dead.reachable, dead.reason, dead.consecutive_failures) == (
            False, "timeout", UNREACHABLE_AFTER)
        for device in live:
            assert [(s.reachable, s.reason) for s in statuses(device)] == [
                (True, "responding")], device
        elapsed = time.monotonic() - started
        polls = math.ceil(elapsed / INTERVAL_S) + 1
        # the first poll tries both walks, later ones probe with one request; each
        # request is sent 1 + retries times
        bound = (DEAD_RETRIES + 1) * (2 + (polls - 1))
        assert 0 < silent_port.datagrams <= bound, (silent_port.datagrams, bound, elapsed)
        m = metrics(metrics_port)
        assert m["ispstream_snmp_devices"] == 6
        assert m["ispstream_snmp_devices_unreachable"] == 1
        assert m['ispstream_snmp_kafka_failures_total{reason="delivery"}'] == 0
        # no spinning: the whole process used a small fraction of one CPU
        assert m["process_cpu_seconds_total"] < 0.5 * (time.monotonic() - started) + 5
    finally:
        reader.close()
        code = proc.stop(timeout=30)
    log = proc.log_path.read_text(errors="replace")
    assert code == 0, log
    for secret in (snmpd.auth_key, snmpd.priv_key, snmpd.community, "olt-community"):
        assert secret not in log


def test_trap_port_in_use_fails_clearly_and_no_traps_does_not_bind(tmp_path, pg_dsn, broker,
                                                                    topic_prefix):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    trap_addr = f"127.0.0.1:{busy.getsockname()[1]}"
    try:
        proc = Proc("collect-snmp-busy", ["collect", "snmp"],
                    collector_env(pg_dsn, broker, topic_prefix, trap_addr, free_port()),
                    tmp_path)
        proc.popen.wait(90)
        log = proc.log_path.read_text(errors="replace")
        assert proc.popen.returncode == 1, log
        assert f"cannot receive traps on udp {trap_addr}" in log
        proc.stop()

        metrics_port = free_port()
        proc = Proc("collect-snmp-no-traps", ["collect", "snmp", "--no-traps"],
                    collector_env(pg_dsn, broker, topic_prefix, trap_addr, metrics_port),
                    tmp_path)
        try:
            m = wait_until(lambda: metrics(metrics_port) or not proc.alive(), 90,
                           "the metrics endpoint")
            assert proc.alive(), proc.log()
            assert m["ispstream_snmp_devices"] == 0
            assert not any(k.startswith("ispstream_snmp_traps") for k in m)
        finally:
            assert proc.stop(timeout=30) == 0
    finally:
        busy.close()
