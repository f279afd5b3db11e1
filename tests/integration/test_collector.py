"""The RADIUS accounting collector against real peers: radclient as the NAS, the
embedded Kafka-protocol broker, PostgreSQL for the NAS table, and the collector as a
real subprocess (``ispstream collect radius``)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pyrad.packet import AcctPacket

from collectors.radius import codec, dictionary
from collectors.radius.spool import Spool, SpoolError
from ispstream import topics
from ispstream.contracts import AcctEvent
from tests.procs import read_metrics

pytestmark = pytest.mark.integration

TENANT = "acme"
NAS_ID = "bng-1"
NAS_SECRET = "radius-test-secret"
SECRET = NAS_SECRET.encode()


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collector_command() -> list[str]:
    script = Path(sys.executable).with_name("ispstream")
    if script.exists():
        return [str(script), "collect", "radius"]
    return [sys.executable, "-m", "ispstream.cli", "collect", "radius"]


@dataclass
class CollectorProcess:
    """A running ``ispstream collect radius``."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    spool_dir: Path
    log_path: Path
    env: dict = field(repr=False)

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.metrics_port)

    def packets(self, result: str) -> int:
        return int(self.metrics()[f'ispstream_radius_packets_total{{result="{result}"}}'])

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"collector ignored SIGTERM; log:\n{self.log()}")
        return self.proc.returncode


@pytest.fixture
def nas_dsn(pg_dsn: str) -> str:
    """A test database with tenant ``acme`` and NAS ``bng-1`` at 127.0.0.1."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES (%s, %s, %s)",
                     (TENANT, "Europe/Vienna", "EUR"))
        conn.execute("INSERT INTO nas (tenant_id, id, ip, secret) VALUES (%s, %s, %s, %s)",
                     (TENANT, NAS_ID, "127.0.0.1", NAS_SECRET))
    return pg_dsn


@pytest.fixture
def acct_topic(broker, topic_prefix: str) -> str:
    name = f"{topic_prefix}{topics.RADIUS_ACCT}"
    broker.create_topic(name, 4)
    return name


@pytest.fixture
def start_collector(tmp_path: Path, broker, topic_prefix: str, nas_dsn: str,
                    require_binary):
    """Start ``ispstream collect radius`` against the test's database and broker
    (stopped before the database is dropped)."""
    require_binary("radclient")
    started: list[CollectorProcess] = []

    def _start(dsn: str, *, bootstrap: str | None = None, spool_dir: Path | None = None,
               delivery_timeout_ms: int = 3000, **extra: str) -> CollectorProcess:
        port, metrics_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        spool_dir = spool_dir or tmp_path / "spool"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISPSTREAM_")}
        env.update({
            "ISPSTREAM_DATABASE_URL": dsn,
            "ISPSTREAM_KAFKA_BOOTSTRAP": bootstrap or broker.bootstrap,
            "ISPSTREAM_TOPIC_PREFIX": topic_prefix,
            "ISPSTREAM_RADIUS_ACCT_ADDR": f"127.0.0.1:{port}",
            "ISPSTREAM_COLLECTOR_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "ISPSTREAM_SPOOL_DIR": str(spool_dir),
            "ISPSTREAM_KAFKA_DELIVERY_TIMEOUT_MS": str(delivery_timeout_ms),
            "ISPSTREAM_INVENTORY_REFRESH_S": "0.3",
        })
        env.update({f"ISPSTREAM_{k.upper()}": v for k, v in extra.items()})
        log_path = tmp_path / f"collector-{len(started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(collector_command(), env=env, cwd=tmp_path,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        handle = CollectorProcess(proc, port, metrics_port, spool_dir, log_path, env)
        started.append(handle)
        deadline = time.monotonic() + 30
        while "collector ready" not in handle.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                handle.stop()
                raise AssertionError(f"the collector did not start:\n{handle.log()}")
            time.sleep(0.05)
        return handle

    yield _start
    for handle in started:
        handle.stop()


def radclient(port: int, packets: list[dict], secret: str = NAS_SECRET, *,
              timeout: int = 2, retries: int = 1, parallel: int = 16,
              command: str = "acct") -> list[str]:
    """Send ``packets`` (attribute name -> value) with radclient as the NAS; return the
    header lines of the replies it received (and verified)."""
    text = "\n\n".join("\n".join(f"{k} = {_radclient_value(v)}" for k, v in p.items())
                       for p in packets) + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".radclient") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(
            ["radclient", "-x", "-c", "1", "-p", str(parallel), "-t", str(timeout),
             "-r", str(retries), "-f", f.name, f"127.0.0.1:{port}", command, secret],
            capture_output=True, text=True, timeout=60,
        )
    return re.findall(r"^Received \S+ Id .*$", out.stdout, re.M)


def _radclient_value(value) -> str:
    if isinstance(value, str) and not value.startswith("0x"):
        return f'"{value}"'
    return str(value)


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 15.0,
            settle: float = 0.5) -> list:
    """Every record of ``topic`` (4 partitions) once ``expected`` arrived, or at timeout;
    then waits ``settle`` seconds more so extra (duplicate) records would show."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{time.time_ns()}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    records = []
    deadline = time.monotonic() + timeout
    settle_until = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and not msg.error():
                records.append(msg)
            if len(records) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        consumer.close()
    return records


@pytest.fixture(scope="module")
def radius_dict():
    return dictionary.load()


def acct(session: str, status: str, **attrs) -> dict:
    packet = {"User-Name": "alice", "Acct-Session-Id": session, "Acct-Status-Type": status,
              "NAS-IP-Address": "127.0.0.1", "NAS-Identifier": "bng-1.lab"}
    packet.update({k.replace("_", "-"): v for k, v in attrs.items()})
    return packet


def pyrad_packet(radius_dict, *, secret: bytes = SECRET, ident: int = 1,
                 message_authenticator: bool = False, **attrs) -> bytes:
    pkt = AcctPacket(dict=radius_dict, secret=secret, id=ident)
    for name, value in attrs.items():
        pkt.AddAttribute(name.replace("_", "-"), value)
    if message_authenticator:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def send_raw(port: int, datagrams: list[bytes], *, source: str = "127.0.0.1",
             wait: float = 1.0, expect: int | None = None, gap: float = 0.0,
             sock: socket.socket | None = None) -> list[bytes]:
    """Send from ``source``; collect replies for ``wait`` s, or until ``expect`` replies
    arrived and then 0.2 s more (so an extra reply would show)."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
    try:
        for data in datagrams:
            sock.sendto(data, ("127.0.0.1", port))
            if gap:
                time.sleep(gap)
        replies: list[bytes] = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                replies.append(sock.recv(4096))
            except socket.timeout:
                break
            if expect is not None and len(replies) >= expect:
                deadline = min(deadline, time.monotonic() + 0.2)
        return replies
    finally:
        if own:
            sock.close()


def events(records) -> list[AcctEvent]:
    out = []
    for msg in records:
        event = AcctEvent.model_validate_json(msg.value())
        assert msg.key().decode() == event.key()
        out.append(event)
    return out


def by_session(records) -> dict[str, list[AcctEvent]]:
    """Events per session in partition order (one session is one key, one partition)."""
    out: dict[str, list[AcctEvent]] = {}
    for msg in sorted(records, key=lambda m: (m.partition(), m.offset())):
        event = AcctEvent.model_validate_json(msg.value())
        out.setdefault(event.session_id, []).append(event)
    return out


# -- the happy path ------------------------------------------------------------------

def test_start_interim_stop_reach_kafka(start_collector, nas_dsn, broker, acct_topic):
    collector = start_collector(nas_dsn)
    sent = [
        acct("s-1", "Start", Event_Timestamp=1795226400, Framed_IP_Address="100.64.0.7",
             Acct_Interim_Interval=300, Calling_Station_Id="f0:9f:c2:00:00:01"),
        acct("s-1", "Interim-Update", Acct_Input_Octets=10, Acct_Input_Gigawords=1,
             Acct_Output_Octets=4294967295, Acct_Output_Gigawords=5, Acct_Session_Time=300,
             Acct_Delay_Time=2, NAS_Port_Id="ge-0/0/1.100", Mikrotik_Rate_Limit="1M/1M"),
        acct("s-1", "Stop", Acct_Input_Octets=20, Acct_Input_Gigawords=1,
             Acct_Output_Octets=7, Acct_Output_Gigawords=6, Acct_Session_Time=420,
             Acct_Terminate_Cause="Lost-Carrier"),
        acct("s-2", "Start", User_Name="bob"),
    ]
    # one radclient run per status keeps each session's packets in order on the wire
    replies = []
    for packet in sent:
        replies += radclient(collector.port, [packet])
    assert len(replies) == 4

    records = consume(broker.bootstrap, acct_topic, expected=4)
    got = by_session(records)
    assert len(events(records)) == 4
    assert [e.status for e in got["s-1"]] == ["Start", "Interim-Update", "Stop"]
    start, interim, stop = got["s-1"]
    assert (start.event_timestamp, start.framed_ip, start.interim_interval) == (
        1795226400, "100.64.0.7", 300)
    assert start.calling_station_id == "f0:9f:c2:00:00:01"
    assert (interim.input_octets, interim.input_gigawords, interim.output_octets,
            interim.output_gigawords) == (10, 1, 4294967295, 5)
    assert (interim.delay_time, interim.session_time, interim.nas_port_id) == (
        2, 300, "ge-0/0/1.100")
    assert (stop.terminate_cause, stop.output_gigawords) == ("Lost-Carrier", 6)
    assert got["s-2"][0].username == "bob"
    for event in events(records):
        assert (event.tenant_id, event.nas_id, event.nas_ip) == (TENANT, NAS_ID,
                                                                 "127.0.0.1")
        assert event.nas_identifier == "bng-1.lab"
        assert abs(event.received_at - time.time()) < 60
    assert {m.key().decode() for m in records} == {f"{TENANT}/{NAS_ID}/s-1",
                                                  f"{TENANT}/{NAS_ID}/s-2"}
    assert collector.packets("acked") == 4
    assert collector.stop() == 0
    assert "stopping" in collector.log() and NAS_SECRET not in collector.log()


# -- what is dropped -----------------------------------------------------------------

def test_drops_are_unanswered_and_counted(start_collector, nas_dsn, broker, acct_topic,
                                          radius_dict):
    collector = start_collector(nas_dsn)
    results = {}

    def run(name, packets, **kwargs):
        results[name] = radclient(collector.port, packets, timeout=1, **kwargs)

    # radclient runs in parallel: every case waits for its timeout at the same time
    cases = [
        ("bad_secret", [acct("x-1", "Start")], {"secret": "not-the-secret"}),
        ("no_session", [{"User-Name": "a", "Acct-Status-Type": "Start",
                         "NAS-IP-Address": "127.0.0.1"}], {}),
        ("no_identity", [{"User-Name": "a", "Acct-Status-Type": "Start",
                          "Acct-Session-Id": "x-2"}], {}),
        ("failed_status", [acct("x-3", "Failed")], {}),
        ("accepted", [acct("ok-1", "Start")], {}),
        # an Access-Request to the accounting port is not accounting
        ("access_request", [{"User-Name": "a", "User-Password": "b"}], {"command": "auth"}),
    ]
    threads = [threading.Thread(target=run, args=(name, packets), kwargs=kwargs)
               for name, packets, kwargs in cases]
    for t in threads:
        t.start()
    header, attrs = b"\x04\x02\x00\x17", b"\x01\x01x"  # attribute length 1, signed
    signed = header + hashlib.md5(header + bytes(16) + attrs + SECRET).digest() + attrs
    malformed = [b"\x04\x01\x00", b"\x04\x01\x00\x30" + bytes(16), signed]
    unknown = pyrad_packet(radius_dict, Acct_Status_Type="Start", Acct_Session_Id="u-1",
                           NAS_IP_Address="127.0.0.2")
    assert send_raw(collector.port, malformed, wait=0.2) == []
    assert send_raw(collector.port, [unknown], source="127.0.0.2", wait=0.5) == []
    for t in threads:
        t.join()

    assert len(results.pop("accepted")) == 1
    assert results == {"bad_secret": [], "no_session": [], "no_identity": [],
                       "failed_status": [], "access_request": []}
    m = collector.metrics()
    count = {k[k.index('"') + 1:-2]: v for k, v in m.items()
             if k.startswith("ispstream_radius_packets_total")}
    assert count == {"acked": 1, "spooled": 0, "duplicate": 0, "unknown_source": 1,
                     "malformed": 3, "unsupported_code": 1, "bad_authenticator": 1,
                     "bad_message_authenticator": 0, "missing_message_authenticator": 0,
                     "missing_session_id": 1, "missing_nas_identity": 1,
                     "unsupported_status_type": 1, "failed": 0}

    # a NAS added to the inventory is accepted without a restart
    with psycopg.connect(nas_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO nas (tenant_id, id, ip, secret) VALUES (%s, %s, %s, %s)",
                     (TENANT, "bng-2", "127.0.0.2", "second-secret"))
    collector.wait_for(lambda: collector.metrics()["ispstream_radius_nas"] == 2,
                       what="the NAS table refresh")
    second = pyrad_packet(radius_dict, secret=b"second-secret", Acct_Status_Type="Start",
                          Acct_Session_Id="u-2", NAS_IP_Address="127.0.0.2")
    assert len(send_raw(collector.port, [second], source="127.0.0.2", wait=5,
                        expect=1)) == 1

    records = consume(broker.bootstrap, acct_topic, expected=2)
    assert sorted(m.key().decode() for m in records) == [f"{TENANT}/bng-1/ok-1",
                                                         f"{TENANT}/bng-2/u-2"]
    assert collector.stop() == 0


def test_message_authenticator(start_collector, nas_dsn, broker, acct_topic, radius_dict):
    with psycopg.connect(nas_dsn, autocommit=True) as conn:
        conn.execute("UPDATE nas SET require_message_authenticator = true")
        conn.execute("INSERT INTO nas (tenant_id, id, ip, secret) VALUES (%s, %s, %s, %s)",
                     (TENANT, "bng-3", "127.0.0.3", NAS_SECRET))
    collector = start_collector(nas_dsn)

    # required and missing: dropped (radclient waits for its timeout meanwhile)
    unsigned: list = []
    waiting = threading.Thread(target=lambda: unsigned.extend(
        radclient(collector.port, [acct("m-1", "Start")], timeout=1)))
    waiting.start()
    # required and valid (radclient computes it for "0x00"); radclient verifies the
    # Message-Authenticator of our reply and would ignore a wrong one
    replies = radclient(collector.port,
                        [acct("m-2", "Start", Message_Authenticator="0x00")])
    assert len(replies) == 1
    # present but wrong, on a NAS that does not require it: dropped
    good = pyrad_packet(radius_dict, message_authenticator=True, Acct_Status_Type="Start",
                        Acct_Session_Id="m-3", NAS_IP_Address="127.0.0.3")
    at = codec.decode_accounting_request(good).message_authenticator_at
    forged = bytearray(good)
    forged[at + 2] ^= 0xFF
    forged[4:20] = hashlib.md5(bytes(forged[:4]) + bytes(16) + bytes(forged[20:])
                                     + SECRET).digest()
    assert codec.request_authenticator_ok(bytes(forged), SECRET)
    assert send_raw(collector.port, [bytes(forged)], source="127.0.0.3", wait=0.5) == []
    assert collector.packets("bad_message_authenticator") == 1
    # and the genuine one from that NAS is accepted, its reply signed
    replies = send_raw(collector.port, [good], source="127.0.0.3", wait=5, expect=1)
    assert len(replies) == 1
    sent = AcctPacket(dict=radius_dict, secret=SECRET, packet=good)
    assert sent.VerifyReply(sent.CreateReply(packet=replies[0]), replies[0],
                            enforce_ma=True)

    waiting.join()
    assert unsigned == []
    assert collector.packets("missing_message_authenticator") == 1

    records = consume(broker.bootstrap, acct_topic, expected=2)
    assert sorted(e.session_id for e in events(records)) == ["m-2", "m-3"]
    assert collector.packets("acked") == 2


def test_retransmit_is_produced_once(start_collector, nas_dsn, broker, acct_topic,
                                     radius_dict):
    collector = start_collector(nas_dsn)
    packet = pyrad_packet(radius_dict, ident=42, Acct_Status_Type="Interim-Update",
                          Acct_Session_Id="r-1", NAS_IP_Address="127.0.0.1",
                          Acct_Input_Octets=1000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        replies = send_raw(collector.port, [packet, packet, packet], sock=sock, wait=5,
                           expect=1)
        # a retransmit after the reply gets the same reply again
        replies += send_raw(collector.port, [packet], sock=sock, wait=5, expect=1)
    assert len(replies) >= 2 and len(set(replies)) == 1
    records = consume(broker.bootstrap, acct_topic, expected=1)
    assert len(records) == 1
    assert collector.packets("acked") == 1
    assert collector.packets("duplicate") == 3


# -- Kafka unreachable: spool, then drain ---------------------------------------------

def test_kafka_down_spools_then_drains_in_order(start_collector, nas_dsn, broker,
                                                 acct_topic, radius_dict, tmp_path):
    spool_dir = tmp_path / "spool"
    closed = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    sessions = ["k-1", "k-2", "k-3"]
    flow = ["Start", "Interim-Update", "Interim-Update", "Stop"]

    def packets(step: int) -> list[dict]:
        return [acct(s, flow[step], Acct_Input_Octets=step * 1000, Acct_Session_Time=step)
                for s in sessions]

    # 1. Kafka unreachable: a record is answered once it is in the fsynced spool, after
    #    the delivery timeout; a retransmit meanwhile is not spooled twice
    down = start_collector(nas_dsn, bootstrap=closed, spool_dir=spool_dir,
                           delivery_timeout_ms=800)
    retransmitted = pyrad_packet(radius_dict, ident=9, Acct_Status_Type="Start",
                                 Acct_Session_Id="k-4", NAS_IP_Address="127.0.0.1")
    began = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        echo = send_raw(down.port, [retransmitted, retransmitted], sock=sock, gap=0.3,
                        wait=5, expect=1)
    assert len(echo) == 1
    assert time.monotonic() - began > 0.8
    # now spooling: the next records are answered without waiting for Kafka
    got = radclient(down.port, packets(0), timeout=5)
    assert len(got) == 3
    got = radclient(down.port, packets(1), timeout=5)
    assert len(got) == 3
    m = down.metrics()
    assert m['ispstream_radius_packets_total{result="spooled"}'] == 7
    assert m['ispstream_radius_packets_total{result="duplicate"}'] == 1
    assert m["ispstream_radius_spool_depth"] == 7
    assert m["ispstream_radius_spooling"] == 1
    assert down.stop() == 0

    # 2. restarted, Kafka still down: the spool is not empty, so new records are spooled
    #    at once (no delivery timeout to wait for), after the old ones
    still_down = start_collector(nas_dsn, bootstrap=closed, spool_dir=spool_dir,
                                 delivery_timeout_ms=8000)
    began = time.monotonic()
    assert len(radclient(still_down.port, packets(2), timeout=5)) == 3
    assert time.monotonic() - began < 4  # well under the delivery timeout
    assert still_down.metrics()["ispstream_radius_spool_depth"] == 10
    assert still_down.stop() == 0

    # 3. restarted with Kafka: the spool drains in order, then records go direct again
    up = start_collector(nas_dsn, spool_dir=spool_dir)
    up.wait_for(lambda: up.metrics()["ispstream_radius_spooling"] == 0,
                what="the spool to drain")
    assert len(radclient(up.port, packets(3))) == 3
    records = consume(broker.bootstrap, acct_topic, expected=13)
    assert len(records) == 13  # nothing lost, nothing twice
    got_sessions = by_session(records)
    for s in sessions:
        assert [e.status for e in got_sessions[s]] == flow
        assert [e.input_octets for e in got_sessions[s]] == [0, 1000, 2000, 3000]
    assert [e.status for e in got_sessions["k-4"]] == ["Start"]
    m = up.metrics()
    assert m["ispstream_radius_spool_drained_total"] == 10
    assert m["ispstream_radius_spool_depth"] == 0
    assert m['ispstream_radius_packets_total{result="acked"}'] == 3
    assert up.stop() == 0
    assert sum(p.stat().st_size for p in spool_dir.glob("*.seg")) == 0


def test_sigterm_makes_queued_records_durable_then_exits(start_collector, nas_dsn,
                                                         radius_dict, tmp_path):
    closed = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    collector = start_collector(nas_dsn, bootstrap=closed, spool_dir=tmp_path / "sp",
                                delivery_timeout_ms=60_000)
    packet = pyrad_packet(radius_dict, Acct_Status_Type="Start", Acct_Session_Id="t-1",
                          NAS_IP_Address="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(packet, ("127.0.0.1", collector.port))
        collector.wait_for(lambda: collector.metrics()["ispstream_radius_inflight"] == 1,
                           what="the request to wait for Kafka")
        collector.proc.send_signal(signal.SIGTERM)  # long before the delivery timeout
        sock.settimeout(10)
        reply = sock.recv(100)
    assert reply[0] == 5 and reply[1] == packet[1]
    assert collector.stop() == 0
    spool = Spool(tmp_path / "sp")
    assert [AcctEvent.model_validate_json(v).session_id for _, v, _ in spool.read(10)] \
        == ["t-1"]
    spool.close()


# -- the shipped dictionary against FreeRADIUS's, through radclient ---------------------

def test_shipped_dictionary_matches_radclient(radius_dict, require_binary):
    """Reply to radclient with every attribute (and every named value) of the shipped
    dictionary, encoded by pyrad with it; radclient decodes them with FreeRADIUS's own
    dictionaries and must print the same names and values."""
    require_binary("radclient")
    samples = {"string": "text-1", "integer": 70000, "ipaddr": "192.0.2.9",
               "ipv6addr": "2001:db8::9", "ipv6prefix": "2001:db8:1::/48",
               "octets": b"\x01\x02", "date": 1795226400, "ifid": "0000:0000:0000:0001"}
    shown = {"string": "text-1", "integer": "70000", "ipaddr": "192.0.2.9",
             "ipv6addr": "2001:db8::9", "ipv6prefix": "2001:db8:1::/48",
             "octets": "0x0102", "ifid": "0:0:0:1"}
    skip = {"Message-Authenticator", "Proxy-State", "User-Password", "CHAP-Password"}
    sent: list[tuple[str, object]] = []
    expected: dict[str, list[str]] = {}
    for name, attr in radius_dict.attributes.items():
        if name in skip:
            continue
        assert attr.type in samples, (name, attr.type)
        values = [(v, int.from_bytes(raw, "big")) for v, raw in attr.values.forward.items()]
        for label, number in values or [(shown.get(attr.type), samples[attr.type])]:
            sent.append((f"{name}:1" if attr.has_tag else name, number))
            expected.setdefault(name, []).append(label)
    port = free_port(socket.SOCK_DGRAM)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", port))
    server.settimeout(10)

    def answer() -> None:
        data, addr = server.recvfrom(4096)
        request = AcctPacket(dict=radius_dict, secret=SECRET, packet=data)
        reply = request.CreateReply()
        for name, value in sent:
            reply.AddAttribute(name, value)
        server.sendto(reply.ReplyPacket(), addr)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        out = subprocess.run(
            ["radclient", "-x", "-t", "3", "-r", "1", f"127.0.0.1:{port}", "acct",
             NAS_SECRET], input="Acct-Session-Id=d\n", capture_output=True, text=True,
            timeout=30).stdout
    finally:
        thread.join()
        server.close()
    assert "Received Accounting-Response" in out, out
    printed: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s+([\w.-]+)(?::\d+)? = (.*)$",
                                  out.split("Received Accounting-Response", 1)[1], re.M):
        printed.setdefault(name, []).append(value.strip('"'))
    assert set(printed) == set(expected), set(expected) ^ set(printed)
    for name, labels in expected.items():
        if radius_dict.attributes[name].type == "date":
            assert len(printed[name]) == 1 and "2026" in printed[name][0], name
        else:
            assert printed[name] == labels, name


# -- the spool on its own ------------------------------------------------------------

def test_spool_is_crash_safe(tmp_path: Path):
    spool = Spool(tmp_path, segment_max_bytes=200)
    for i in range(10):
        spool.append(b"k%d" % i, b"v" * 40 + b"%d" % i)
    assert spool.sync() == 10 and spool.depth == 10
    assert len(list(tmp_path.glob("*.seg"))) > 1  # rolled over segments
    first = spool.read(4)
    assert [k for k, _, _ in first] == [b"k0", b"k1", b"k2", b"k3"]
    spool.commit(first[-1][2], 4)
    spool.read(3)  # read but never committed: delivered again after a crash
    spool.close()

    # a crash mid-write leaves a torn record at the end: it was never acknowledged
    newest = sorted(tmp_path.glob("*.seg"))[-1]
    with open(newest, "ab") as f:
        f.write(b"\x00\x00\x00\x01\x00\x02")
    spool = Spool(tmp_path, segment_max_bytes=200)
    assert spool.depth == 6
    assert [k for k, _, _ in spool.read(100)] == [b"k%d" % i for i in range(4, 10)]
    spool.append(b"k10", b"after restart")
    spool.sync()
    rest = spool.read(100)
    assert [(k, v) for k, v, _ in rest] == [(b"k10", b"after restart")]
    spool.commit(rest[-1][2], 7)
    assert spool.empty
    spool.reset()
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)  # one process per spool
    spool.close()
    reopened = Spool(tmp_path)
    assert reopened.empty
    reopened.close()

    # damage before the newest segment is not silently skipped
    spool = Spool(tmp_path, segment_max_bytes=50)
    for i in range(4):
        spool.append(b"k", b"x" * 60)
    spool.sync()
    spool.close()
    oldest = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(oldest.read_bytes())
    data[-1] ^= 0xFF
    oldest.write_bytes(bytes(data))
    with pytest.raises(SpoolError):
        Spool(tmp_path)


# -- the spool state machine, in process ------------------------------------------------

class _FlakyProducer:
    """Delivers on poll(): fails everything while ``down``; records what got through."""

    def __init__(self) -> None:
        self.down = True
        self.delivered: list[tuple[bytes, bytes]] = []
        self._queue: list = []

    def produce(self, topic, value, key, on_delivery):
        self._queue.append((key, value, on_delivery))

    def poll(self, timeout=0):
        queue, self._queue = self._queue, []
        for key, value, report in queue:
            if self.down:
                report("broker down", None)
            else:
                self.delivered.append((key, value))
                report(None, None)
        return len(queue)

    def flush(self, timeout=0):
        self.poll()
        return 0

    def purge(self, in_queue=True, in_flight=True):
        pass


def test_spool_mode_keeps_order_and_returns_to_kafka(radius_dict, tmp_path, monkeypatch):
    from collectors.radius import server
    from collectors.radius.inventory import Nas, NasEntry

    monkeypatch.setattr(server, "DRAIN_RETRY_S", 0.0)
    entry = NasEntry(Nas(TENANT, NAS_ID, "127.0.0.1", SECRET))

    class Inventory:
        by_ip = {"127.0.0.1": entry}

        def lookup(self, ip):
            return self.by_ip.get(ip)

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    nas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nas.bind(("127.0.0.1", 0))
    nas.settimeout(0.5)
    producer = _FlakyProducer()
    collector = server.Collector(rx, producer, "t", Spool(tmp_path), Inventory())

    def send(session: str, n: int) -> None:
        nas.sendto(pyrad_packet(radius_dict, ident=n, Acct_Status_Type="Interim-Update",
                                Acct_Session_Id=session, NAS_IP_Address="127.0.0.1",
                                Acct_Input_Octets=n), rx.getsockname())
        time.sleep(0.01)
        collector._receive()
        deadline = time.monotonic() + 5
        while collector._inflight and time.monotonic() < deadline:
            collector._settle()  # the spool's syncer works in the background
            time.sleep(0.001)
        assert nas.recv(100)[0] == 5  # answered: durable in Kafka or in the spool

    send("A", 1)  # Kafka fails it: spooled, answered
    assert collector.spooling and collector.counts["spooled"] == 1
    send("B", 2)
    send("A", 3)  # spooled directly, after A/1
    assert collector.counts["spooled"] == 3 and collector.spool.depth == 3
    producer.down = False
    deadline = time.monotonic() + 5
    while (collector.spooling or collector.spool.depth) and time.monotonic() < deadline:
        collector._settle()
        time.sleep(0.001)
    assert not collector.spooling and collector.spool.depth == 0
    send("A", 4)  # straight to Kafka again
    assert collector.counts["acked"] == 1 and collector.spool.clean
    order = [(k.decode().rsplit("/", 1)[1], AcctEvent.model_validate_json(v).input_octets)
             for k, v in producer.delivered]
    assert order == [("A", 1), ("B", 2), ("A", 3), ("A", 4)]
    rx.close()
    nas.close()


# -- the NAS simulator against the collector -------------------------------------------

def test_nas_simulator_against_the_collector(start_collector, nas_dsn, broker, acct_topic):
    from ispstream.nas_simulator import NasSimulator

    collector = start_collector(nas_dsn)
    sim = NasSimulator(("127.0.0.1", collector.port), SECRET, subscribers=20,
                       interim_s=0.3, duration_s=3.0, seed=5, rate_scale=200.0)
    stats = sim.run()
    assert stats.lost == 0 and stats.bad_replies == 0
    assert stats.acked == stats.sent and stats.stops >= 20  # a Stop for every session
    records = consume(broker.bootstrap, acct_topic, expected=stats.acked)
    assert len(records) == stats.acked
    got = by_session(records)
    statuses = [e.status for e in events(records)]
    assert statuses.count("Accounting-On") == 1
    for session, evs in got.items():
        if evs[0].status == "Accounting-On":
            continue
        assert evs[0].status == "Start" and evs[-1].status == "Stop", session
        assert all(e.status == "Interim-Update" for e in evs[1:-1]), session
        totals = [(e.output_gigawords or 0) << 32 | (e.output_octets or 0) for e in evs]
        assert totals == sorted(totals), session
    assert any((e.output_gigawords or 0) > 0 for e in events(records))
    assert collector.packets("acked") == stats.acked

    # the command line runs it too, and exits 0 when every request was answered
    out = subprocess.run(
        [*collector_command()[:-2], "simulate", "nas", "--target",
         f"127.0.0.1:{collector.port}", "--secret", NAS_SECRET, "--subscribers", "5",
         "--interim", "0.5", "--duration", "1.5"],
        capture_output=True, text=True, timeout=60, env=collector.env)
    assert out.returncode == 0, out.stderr
    assert "lost=0" in out.stderr
