"""``ispstream collect onu`` as a real process: OLT rows in a fresh database, snmpsim
serving each profile's recording (or, where no recording has ONU optics, a recording
derived from the vendor MIB: see tests/data/snmprec/olts/README.md), OnuOpticalPoll and
DeviceStatus read back from the embedded broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from collectors.snmp.ber import GET_BULK, decode_message, encode_oid, encode_request
from conftest import missing_service
from ispstream import topics
from ispstream.contracts import DeviceStatus, OnuOpticalPoll
from tests.procs import Proc, free_port, metrics, wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data" / "snmprec" / "olts"
TENANT = "acme"
INTERVAL_S = 30          # the smallest interval the schema allows
FIRST_POLL_WITHIN_S = 150  # first poll falls inside the first interval; the box is slow
COMMUNITIES = {
    "ubiquiti-ufiber": "edgeosolt",
    "calix-axos": "axos_e7-2",
    "vsol-v1600": "vsolution_v1600d",
    "huawei-ma5800": "huawei-ma5800-derived",
    "zte-c300": "zte-c320-derived",
}


def _answers(port: int, community: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(encode_request(community.encode(), GET_BULK, 1, [encode_oid("1.3.6.1.2.1.1")],
                                0, 1), ("127.0.0.1", port))
        try:
            response = decode_message(s.recv(65535))
        except socket.timeout:
            return False
        return bool(response.varbinds)


@pytest.fixture(scope="module")
def snmpsim(tmp_path_factory) -> int:
    """snmpsim serving tests/data/snmprec/olts (community = file name); yields its UDP port."""
    exe = Path(sys.executable).with_name("snmpsim-command-responder")
    if not exe.exists():
        missing_service("snmpsim-command-responder (pip install snmpsim pysmi)")
    work = tmp_path_factory.mktemp("snmpsim")
    port = free_port(socket.SOCK_DGRAM)
    log = open(work / "snmpsim.log", "wb")
    proc = subprocess.Popen(
        [str(exe), f"--data-dir={DATA}", f"--cache-dir={work / 'cache'}",
         f"--agent-udpv4-endpoint=127.0.0.1:{port}"],
        env={**os.environ, "SNMPSIM_ALLOW_ROOT": "true"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        for community in COMMUNITIES.values():
            wait_until(lambda: proc.poll() is None and _answers(port, community), 180,
                       f"snmpsim serving {community} "
                       f"(log: {(work / 'snmpsim.log').read_text(errors='replace')[-2000:]})",
                       every=0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def onu_topics(broker, topic_prefix: str) -> dict[str, str]:
    names = {t: f"{topic_prefix}{t}" for t in (topics.ONU_OPTICAL, topics.DEVICE_STATUS)}
    for name in names.values():
        broker.create_topic(name, 4)
    return names


@pytest.fixture
def olt_db(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, 'UTC', 'EUR')",
                     (TENANT,))
    return pg_dsn


def add_olt(dsn: str, olt_id: str, profile: str | None, port: int, community: str,
            address: str = "127.0.0.1", timeout_s: float = 10, retries: int = 1) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (tenant_id, id, kind, address, snmp_port, snmp_version, "
            "community, vendor_profile, interval_optical_s, max_inflight, timeout_s, retries) "
            "VALUES (%s, %s, 'olt', %s, %s, '2c', %s, %s, %s, 2, %s, %s)",
            (TENANT, olt_id, address, port, community, profile, INTERVAL_S, timeout_s, retries))


@pytest.fixture
def collector(tmp_path: Path, broker, topic_prefix: str, olt_db: str):
    """Start ``ispstream collect onu``; stopped (and its exit code checked) afterwards."""
    started: list[Proc] = []

    def _start(**env_extra: str) -> tuple[Proc, int]:
        metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISPSTREAM_")}
        env.update({
            "ISPSTREAM_DATABASE_URL": olt_db,
            "ISPSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
            "ISPSTREAM_ONU_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "ISPSTREAM_INVENTORY_REFRESH_S": "1",
            **env_extra,
        })
        proc = Proc(f"collect-onu-{len(started)}", ["collect", "onu"], env, tmp_path)
        started.append(proc)
        wait_until(lambda: metrics(metrics_port) is not None or not proc.alive(), 60,
                   "the metrics endpoint")
        assert proc.alive(), proc.log()
        return proc, metrics_port

    yield _start
    for proc in started:
        code = proc.stop(timeout=30)
        assert code == 0, f"exit {code}; log:\n{proc.log()}"


class Reader:
    """Reads a topic (4 partitions) from the beginning, keeping everything read."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t{time.time_ns()}",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
        self.records: list[tuple[str, bytes]] = []

    def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.records.append((msg.key().decode(), msg.value()))
            found = predicate(self.records)
            if found:
                return found
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                             f"have {len(self.records)} record(s)")

    def close(self) -> None:
        self.consumer.close()


def first_poll(key: str):
    def find(records):
        for k, value in records:
            if k == key:
                return OnuOpticalPoll.model_validate_json(value)
        return None
    return find


def by_position(poll: OnuOpticalPoll) -> dict:
    return {(o.pon, o.onu_id): o for o in poll.onus}


def check_ufiber(poll):
    assert len(poll.onus) == 29
    assert sum(o.online is True for o in poll.onus) == 16
    onus = {o.onu_id: o for o in poll.onus}
    onu = onus["UBNT20731888"]
    assert (onu.pon, onu.serial, onu.onu_rx_dbm, onu.onu_tx_dbm) == ("pon2", "UBNT20731888",
                                                                      -24.81, 2.28)
    off = onus["UBNT2073be78"]
    assert (off.online, off.pon, off.onu_rx_dbm, off.onu_tx_dbm) == (False, "unknown", None,
                                                                   None)


def check_axos(poll):
    assert len(poll.onus) == 206 and all(o.online for o in poll.onus)
    onu = by_position(poll)[("unknown", "316")]
    assert (onu.onu_rx_dbm, onu.onu_tx_dbm, onu.olt_rx_dbm) == (-15.21, 6.34, -12.7)


def check_vsol(poll):
    assert len(poll.onus) == 16 and all(o.online for o in poll.onus)
    onu = by_position(poll)[("EPON0/1", "1")]
    assert (onu.onu_rx_dbm, onu.onu_tx_dbm, onu.temperature_c, onu.voltage_v, onu.bias_ma) == (
        -14.61, 3.77, 30.67, 3.27, 11.65)


def check_huawei(poll):
    assert len(poll.onus) == 14 and sum(o.online is True for o in poll.onus) == 12
    onus = by_position(poll)
    ont = onus[("GPON 0/0/15", "0")]
    assert (ont.serial, ont.onu_rx_dbm, ont.onu_tx_dbm, ont.olt_rx_dbm, ont.distance_m) == (
        "HWTCA1B23010", -17.9, 2.05, -21.3, 1180)
    off = onus[("GPON 0/0/15", "7")]
    assert off.online is False and off.onu_rx_dbm is None and off.olt_rx_dbm is None
    assert onus[("GPON 0/1/15", "2")].online is False


def check_zte(poll):
    assert len(poll.onus) == 125 and sum(o.online is True for o in poll.onus) == 123
    onus = by_position(poll)
    assert (onus[("gpon_1/1/1", "1")].distance_m, onus[("gpon_1/1/1", "1")].olt_rx_dbm) == (
        1235, -18.84)
    assert onus[("gpon_1/1/3", "12")].online is False
    assert len({o.pon for o in poll.onus}) == 7


CHECKS = {"ubiquiti-ufiber": check_ufiber, "calix-axos": check_axos, "vsol-v1600": check_vsol,
          "huawei-ma5800": check_huawei, "zte-c300": check_zte}


@pytest.mark.parametrize("profile", sorted(CHECKS))
def test_profile_against_its_recording(profile, snmpsim, olt_db, onu_topics, broker,
                                       collector):
    add_olt(olt_db, f"olt-{profile}", profile, snmpsim, COMMUNITIES[profile])
    reader = Reader(broker.bootstrap, onu_topics[topics.ONU_OPTICAL])
    try:
        proc, metrics_port = collector()
        poll = reader.until(first_poll(f"{TENANT}/olt-{profile}"), FIRST_POLL_WITHIN_S,
                            f"the first poll of {profile}")
    finally:
        reader.close()
    assert (poll.tenant_id, poll.olt_id, poll.profile) == (TENANT, f"olt-{profile}", profile)
    assert abs(poll.at - time.time()) < FIRST_POLL_WITHIN_S + 30
    CHECKS[profile](poll)
    m = metrics(metrics_port)
    assert m[f'ispstream_onu_polls_total{{profile="{profile}",result="ok"}}'] >= 1
    assert m[f'ispstream_onu_onus_total{{profile="{profile}"}}'] >= len(poll.onus)
    assert m["ispstream_onu_olts"] == 1


def test_unreachable_olt_is_announced_once_then_recovers(snmpsim, olt_db, onu_topics, broker,
                                                        collector):
    dead_port = free_port(socket.SOCK_DGRAM)
    add_olt(olt_db, "olt-dead", "vsol-v1600", dead_port, COMMUNITIES["vsol-v1600"],
            timeout_s=1, retries=0)
    status = Reader(broker.bootstrap, onu_topics[topics.DEVICE_STATUS])
    optical = Reader(broker.bootstrap, onu_topics[topics.ONU_OPTICAL])
    try:
        proc, metrics_port = collector(ISPSTREAM_DEVICE_UNREACHABLE_AFTER="2")
        down = status.until(
            lambda rs: [DeviceStatus.model_validate_json(v) for _, v in rs] or None,
            FIRST_POLL_WITHIN_S + INTERVAL_S * 1.5, "the unreachable DeviceStatus")
        assert [(s.device_id, s.reachable, s.consecutive_failures) for s in down] == [
            ("olt-dead", False, 2)]
        assert down[0].reason == "onu optics poll: timeout"
        # no tight loop: failed polls are retried no sooner than the interval (30 s here)
        failed = metrics(metrics_port)['ispstream_onu_polls_total{profile="vsol-v1600",'
                                       'result="failed"}']
        assert 2 <= failed <= 3
        # the OLT comes back (its row now points at a live agent)
        with psycopg.connect(olt_db, autocommit=True) as conn:
            conn.execute("UPDATE devices SET snmp_port = %s, updated_at = now() "
                         "WHERE id = 'olt-dead'", (snmpsim,))
        up = status.until(
            lambda rs: [s for s in (DeviceStatus.model_validate_json(v) for _, v in rs)
                        if s.reachable] or None,
            INTERVAL_S * 1.5 + 60, "the recovered DeviceStatus")
        assert [(s.reachable, s.reason) for s in up] == [(True, "onu optics poll: recovered")]
        poll = optical.until(first_poll(f"{TENANT}/olt-dead"), 30, "a poll after recovery")
        assert len(poll.onus) == 16
        assert len(status.records) == 2
    finally:
        status.close()
        optical.close()
    assert proc.alive()


def test_inventory_changes_apply_without_restart(snmpsim, olt_db, onu_topics, broker,
                                                 collector):
    proc, metrics_port = collector()
    assert metrics(metrics_port)["ispstream_onu_olts"] == 0
    add_olt(olt_db, "olt-new", "no-such-profile", snmpsim, COMMUNITIES["vsol-v1600"])
    wait_until(lambda: metrics(metrics_port).get('ispstream_onu_errors_total{kind="config"}'),
               30, "the unknown profile to be reported")
    assert "vendor_profile 'no-such-profile' is not one of" in proc.log()
    with psycopg.connect(olt_db, autocommit=True) as conn:
        conn.execute("UPDATE devices SET vendor_profile = 'vsol-v1600', updated_at = now() "
                     "WHERE id = 'olt-new'")
    reader = Reader(broker.bootstrap, onu_topics[topics.ONU_OPTICAL])
    try:
        poll = reader.until(first_poll(f"{TENANT}/olt-new"), FIRST_POLL_WITHIN_S,
                            "the first poll of the added OLT")
    finally:
        reader.close()
    assert len(poll.onus) == 16
    with psycopg.connect(olt_db, autocommit=True) as conn:
        conn.execute("DELETE FROM devices WHERE id = 'olt-new'")
    wait_until(lambda: metrics(metrics_port)["ispstream_onu_olts"] == 0, 30,
               "the removed OLT to stop being polled")
