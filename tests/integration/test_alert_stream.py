"""The alert stream (server-sent events) of a real ``ispstream api`` process on the
embedded broker: only the key's tenant's alert changes arrive, within 2 s of being
produced; heartbeats while idle; resuming with ``Last-Event-ID``; an acknowledgement made
through the API shows up on the stream; a closed connection closes its Kafka consumer.
"""

from __future__ import annotations

import json
import queue
import re
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone

import confluent_kafka
import httpx
import psycopg
import pytest

from ispstream.apikeys import create_key
from ispstream.contracts import AlertEvent
from ispstream.kafka import producer_config
from procs import Proc, wait_until
from tests.integration.api_world import (
    acme_home,
    apply_inventory,
    assert_clean_exit,
    auth,
    beta_basic,
    start_api,
    tenants,
    wait_healthy,
)

pytestmark = pytest.mark.integration

LATENCY_BUDGET_S = 2.0

INVENTORY = tenants(acme_home("alice"), beta_basic("zed"))


class SseClient:
    """Reads one event stream on a thread: every frame (events and comments) with the
    monotonic time it arrived. ``close()`` ends the connection at the next frame (ask
    for frequent heartbeats)."""

    def __init__(self, url: str, key: str | None, last_event_id: str | None = None) -> None:
        self.frames: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.status: int | None = None
        self.body = b""
        self.content_type = ""
        self.started = threading.Event()
        self.error: Exception | None = None
        self._stop = threading.Event()
        headers = auth(key)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0)) as client, \
                    client.stream("GET", url, headers=headers) as r:
                self.status = r.status_code
                self.content_type = r.headers.get("content-type", "")
                if r.status_code != 200:
                    self.body = r.read()
                    return
                self.started.set()
                frame: dict = {}
                for line in r.iter_lines():
                    if line == "":
                        if frame:
                            self.frames.put((time.monotonic(), frame))
                            frame = {}
                        if self._stop.is_set():
                            return
                        continue
                    if line.startswith(":"):
                        frame.setdefault("comments", []).append(line[1:].strip())
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    frame[name] = frame[name] + "\n" + value if name in frame else value
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.started.set()

    def wait_started(self, timeout: float = 30) -> None:
        assert self.started.wait(timeout), "the stream did not start"

    def next_frame(self, timeout: float) -> tuple[float, dict]:
        return self.frames.get(timeout=timeout)

    def wait_for(self, pred, timeout: float, what: str) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                at, frame = self.frames.get(timeout=left)
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {what}") from None
            if pred(frame):
                return at, frame

    def events(self, n: int, timeout: float) -> list[tuple[float, dict]]:
        """The next ``n`` alert events (comments skipped)."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(out)} of {n} events: {[f for _, f in out]}"
            try:
                at, frame = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            if frame.get("event") == "alert":
                out.append((at, frame))
        return out

    def close(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream reader did not stop"


def alert(tenant: str, n: int, state: str = "open") -> AlertEvent:
    now = time.time()
    return AlertEvent(
        tenant_id=tenant, alert_id=f"{tenant}-{n}", key=f"onu_low_rx:olt-1/gpon_0/1/1/{n}",
        kind="onu_low_rx", severity="major", state=state, device_id="olt-1",
        object=f"gpon_0/1/1/{n}", title=f"ONU {n} Rx low",
        explanation=f"ONU Rx -28.{n % 10} dBm is below -27 dBm",
        affected_subscribers=["alice"] if tenant == "acme" else ["zed"],
        opened_at=now, changed_at=now)


class AlertProducer:
    """Produces AlertEvents as the faults flow does (keyed tenant/alert key)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = confluent_kafka.Producer(producer_config(bootstrap, **{"linger.ms": 0}))
        self.sent_at: dict[str, float] = {}

    def send(self, event: AlertEvent) -> None:
        self.sent_at[event.alert_id] = time.monotonic()
        self.producer.produce(self.topic, key=f"{event.tenant_id}/{event.key}".encode(),
                              value=event.model_dump_json().encode())
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


@pytest.fixture
def world(pg_dsn, tmp_path):
    apply_inventory(pg_dsn, tmp_path, INVENTORY)
    keys = {"acme": create_key(pg_dsn, "acme", "operator"),
            "beta": create_key(pg_dsn, "beta", "admin"),
            "alice": create_key(pg_dsn, "acme", "customer", subscriber="alice")}
    return pg_dsn, keys


@pytest.fixture
def api_proc(world, broker, topic_prefix, tmp_path):
    dsn, keys = world
    broker.create_topic(f"{topic_prefix}alerts", 4)
    proc, base = start_api(dsn, tmp_path, broker.bootstrap, topic_prefix)
    try:
        wait_healthy(base, timeout=60)
        yield proc, base, keys
    finally:
        code = proc.stop(timeout=30)
    assert_clean_exit(proc, code)


@pytest.fixture
def sse(api_proc):
    """Opens streams on the API (1 s heartbeats); whatever a test leaves open is closed
    before the API stops (an open stream holds up a graceful shutdown)."""
    _, base, _ = api_proc
    clients: list[SseClient] = []

    def open_stream(key: str | None, last_event_id: str | None = None) -> SseClient:
        c = SseClient(f"{base}/v1/stream/alerts?heartbeat=1", key, last_event_id)
        clients.append(c)
        return c

    yield open_stream
    for c in clients:
        c.close()


def closed_lines(proc: Proc) -> list[str]:
    return re.findall(r"alert stream closed: .*", proc.log())


def test_only_the_own_tenants_alerts_arrive_within_2s(api_proc, sse, broker, topic_prefix):
    proc, base, keys = api_proc
    acme = sse(keys["acme"])
    beta = sse(keys["beta"])
    for c in (acme, beta):
        c.wait_started()
        assert c.status == 200 and c.content_type.startswith("text/event-stream")
        _, first = c.next_frame(timeout=10)
        assert first.get("comments") == ["ready"] and first.get("retry") == "2000"
    producer = AlertProducer(broker.bootstrap, f"{topic_prefix}alerts")
    # interleaved, spread over the partitions by key, at a steady pace
    n = 150
    for i in range(n):
        producer.send(alert("beta", i))
        producer.send(alert("acme", i))
        if i % 10 == 9:
            time.sleep(0.05)
    producer.flush()
    got = acme.events(n, timeout=60)
    got_beta = beta.events(n, timeout=60)
    # nothing else arrives for either
    time.sleep(1.5)
    leftovers = [f for _, f in list(acme.frames.queue) + list(beta.frames.queue)
                 if f.get("event") == "alert"]
    assert leftovers == []
    events = [AlertEvent.model_validate_json(f["data"]) for _, f in got]
    assert sorted(e.alert_id for e in events) == sorted(f"acme-{i}" for i in range(n))
    assert {e.tenant_id for e in events} == {"acme"}
    assert {AlertEvent.model_validate_json(f["data"]).tenant_id for _, f in got_beta} == \
        {"beta"}
    # every event has an id: the stream positions after it
    assert all(re.fullmatch(r"\d+:\d+(,\d+:\d+)*", f["id"]) for _, f in got)
    # latency: produced -> received by the SSE client
    latencies = sorted(at - producer.sent_at[json.loads(f["data"])["alert_id"]]
                       for at, f in got)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"SSE latency over {len(latencies)} events: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    assert p99 <= LATENCY_BUDGET_S, latencies
    # heartbeats while idle
    acme.wait_for(lambda f: f.get("comments") == ["heartbeat"], timeout=10,
                  what="a heartbeat")
    acme.close()
    beta.close()
    # both consumers are closed once the clients are gone
    wait_until(lambda: len(closed_lines(proc)) == 2 and any(
        l.endswith("; 0 open") for l in closed_lines(proc)), timeout=20,
        what="both streams to close their consumers")
    assert any(f"{n} events sent; consumer closed" in l for l in closed_lines(proc))


def test_resume_with_last_event_id(api_proc, sse, broker, topic_prefix):
    proc, base, keys = api_proc
    producer = AlertProducer(broker.bootstrap, f"{topic_prefix}alerts")
    # events from before the stream opened are not sent
    producer.send(alert("acme", 900))
    producer.flush()
    first = sse(keys["acme"])
    first.wait_started()
    first.next_frame(timeout=10)  # ready
    for i in range(3):
        producer.send(alert("acme", i))
    producer.flush()
    got = first.events(3, timeout=30)
    last_id = got[-1][1]["id"]
    seen = {json.loads(f["data"])["alert_id"] for _, f in got}
    assert seen == {"acme-0", "acme-1", "acme-2"}
    first.close()
    wait_until(lambda: closed_lines(proc), timeout=20, what="the stream to close")
    # produced while disconnected
    for i in range(3, 6):
        producer.send(alert("beta", i))
        producer.send(alert("acme", i))
    producer.flush()
    again = sse(keys["acme"], last_event_id=last_id)
    again.wait_started()
    resumed = again.events(3, timeout=30)
    assert sorted(json.loads(f["data"])["alert_id"] for _, f in resumed) == [
        "acme-3", "acme-4", "acme-5"]
    time.sleep(1.5)
    assert [f for _, f in list(again.frames.queue) if f.get("event") == "alert"] == []
    again.close()
    # an id that is not ours starts at the end
    third = sse(keys["acme"], last_event_id="garbage")
    third.wait_started()
    third.next_frame(timeout=10)
    producer.send(alert("acme", 7))
    producer.flush()
    [(_, frame)] = third.events(1, timeout=30)
    assert json.loads(frame["data"])["alert_id"] == "acme-7"
    third.close()
    wait_until(lambda: len(closed_lines(proc)) == 3 and closed_lines(proc)[-1].endswith(
        "; 0 open"), timeout=20, what="all streams to close")


def test_an_api_acknowledgement_reaches_the_stream(api_proc, sse, world):
    proc, base, keys = api_proc
    dsn, _ = world
    opened = datetime.now(timezone.utc)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO alerts (tenant_id, alert_id, key, kind, severity, state, device_id, "
            "object, title, explanation, affected_subscribers, opened_at, last_seen_at) "
            "VALUES ('acme', 'x1', 'onu_los:olt-1/gpon_0/1/1/1', 'onu_los', 'minor', 'open', "
            "'olt-1', 'gpon_0/1/1/1', 'ONU LOS', 'lost signal', '{alice}', %s, %s)",
            (opened, opened))
    acme = sse(keys["acme"])
    beta = sse(keys["beta"])
    for c in (acme, beta):
        c.wait_started()
        c.next_frame(timeout=10)
    r = httpx.post(f"{base}/v1/alerts/x1/ack", json={"note": "on it"}, timeout=30,
                   headers={"Authorization": f"Bearer {keys['acme']}"})
    assert r.status_code == 200, r.text
    [(_, frame)] = acme.events(1, timeout=30)
    event = AlertEvent.model_validate_json(frame["data"])
    assert (event.alert_id, event.state, event.tenant_id) == ("x1", "acknowledged", "acme")
    time.sleep(1.5)
    assert [f for _, f in list(beta.frames.queue) if f.get("event") == "alert"] == []
    acme.close()
    beta.close()
    wait_until(lambda: len(closed_lines(proc)) == 2 and any(
        l.endswith("; 0 open") for l in closed_lines(proc)), timeout=20,
        what="both streams to close")


def test_stream_refuses_before_streaming(api_proc, sse):
    proc, base, keys = api_proc
    for key, code in ((None, 401), ("isk_nope", 401), (keys["alice"], 403)):
        c = sse(key)
        c.wait_started()
        c.close()
        assert c.status == code, c.body
        assert json.loads(c.body)["detail"]
    assert closed_lines(proc) == [] and "alert stream opened" not in proc.log()


def test_a_missing_topic_is_503(world, broker, tmp_path):
    dsn, keys = world
    # a prefix no topic has; the embedded broker auto-creates topics on produce only, so
    # the stream finds none
    proc, base = start_api(dsn, tmp_path, broker.bootstrap,
                           topic_prefix=f"missing{uuid.uuid4().hex[:8]}.")
    try:
        wait_healthy(base, timeout=60)
        c = SseClient(f"{base}/v1/stream/alerts?heartbeat=1", keys["acme"])
        c.wait_started()
        c.close()
        assert c.status == 503, c.body
        assert "does not exist" in json.loads(c.body)["detail"]
        wait_until(lambda: closed_lines(proc), timeout=20, what="the consumer to close")
        assert closed_lines(proc)[-1].endswith("0 events sent; consumer closed; 0 open")
    finally:
        assert proc.stop(timeout=30) in (0, -15), proc.log()
