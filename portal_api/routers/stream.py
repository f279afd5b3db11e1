"""Server-sent events: the tenant's alert changes as they happen (operators and admins).

Each connection gets its own Kafka consumer on the ``alerts`` topic, assigned to explicit
offsets of every partition (no consumer-group membership, nothing committed): the current
end, or just after the last event the client saw (``Last-Event-ID``). Records of other
tenants are read and dropped here; only the caller's tenant's ``AlertEvent``s are sent.
Polls run on a worker thread with a short timeout, so a change reaches the client within
a fraction of a second of reaching Kafka. When the client goes away the stream is
cancelled and the consumer closed (the log says so, with the number of streams still
open); an ``ispstream api`` process serves at most ``MAX_STREAMS`` at a time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from collections.abc import AsyncIterable, AsyncIterator
from typing import Annotated

import anyio
import confluent_kafka
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError

from ispstream import topics
from ispstream.apikeys import Principal, authenticate
from ispstream.contracts import AlertEvent
from ispstream.kafka import client_config
from ispstream.settings import Settings
from portal_api.db import api_role_transaction
from portal_api.deps import PoolDep, SettingsDep, bearer_key

log = logging.getLogger(__name__)

router = APIRouter(tags=["alerts"])

POLL_TIMEOUT_S = 0.1
POLL_BATCH = 500
SETUP_TIMEOUT_S = 5.0
RETRY_MS = 2000
MAX_STREAMS = 100
_ERROR_LOG_EVERY_S = 30.0

_POSITIONS = re.compile(r"^\d{1,6}:\d{1,19}(,\d{1,6}:\d{1,19})*$")


class FeedUnavailable(Exception):
    """Kafka cannot serve the stream (not configured, unreachable, no topic)."""


def parse_positions(last_event_id: str | None) -> dict[int, int] | None:
    """The positions in a ``Last-Event-ID`` (``partition:offset,...``); None when absent
    or not one of ours (the stream then starts at the end)."""
    if not last_event_id or not _POSITIONS.match(last_event_id.strip()):
        return None
    return {int(p): int(o) for p, o in
            (pair.split(":") for pair in last_event_id.strip().split(","))}


def format_positions(positions: dict[int, int]) -> str:
    """An event id: for every partition, the offset to read next."""
    return ",".join(f"{p}:{o}" for p, o in sorted(positions.items()))


class AlertFeed:
    """One stream's consumer of the alerts topic, filtered to one tenant.

    ``open``, ``poll`` and ``close`` block (run them on a worker thread); ``close`` may
    be called while a ``poll`` runs on another thread: it waits for that poll.
    """

    def __init__(self, settings: Settings, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.topic = settings.topic(topics.ALERTS)
        self.limiter = anyio.CapacityLimiter(1)  # this stream's polls, one at a time
        self.sent = 0
        self._settings = settings
        self._lock = threading.Lock()
        self._consumer: confluent_kafka.Consumer | None = None
        self._positions: dict[int, int] = {}
        self._last_error_log = 0.0

    def open(self, resume: dict[int, int] | None) -> None:
        """Assign every partition at its end, or at ``resume``'s offset where it has one.
        Raises ``FeedUnavailable``."""
        if not self._settings.kafka_bootstrap:
            raise FeedUnavailable("Kafka is not configured (ISPSTREAM_KAFKA_BOOTSTRAP)")
        consumer = confluent_kafka.Consumer(client_config(
            self._settings.kafka_bootstrap, self._settings.kafka_config, **{
                "client.id": "ispstream-api-alerts",
                # Required by the client; never joined (partitions are assigned here)
                # and nothing is committed, so the broker keeps no state for it.
                "group.id": f"ispstream-api-alerts-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "queued.max.messages.kbytes": 2048,
            }))
        try:
            meta = consumer.list_topics(self.topic, timeout=SETUP_TIMEOUT_S)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise FeedUnavailable(f"the alerts topic {self.topic} does not exist")
            positions = {}
            for p in sorted(topic.partitions):
                if resume is not None and p in resume:
                    positions[p] = resume[p]
                else:
                    _, high = consumer.get_watermark_offsets(
                        confluent_kafka.TopicPartition(self.topic, p),
                        timeout=SETUP_TIMEOUT_S)
                    positions[p] = high
            consumer.assign([confluent_kafka.TopicPartition(self.topic, p, o)
                             for p, o in positions.items()])
        except (confluent_kafka.KafkaException, FeedUnavailable) as exc:
            consumer.close()
            if isinstance(exc, FeedUnavailable):
                raise
            log.warning("alert stream: Kafka unavailable: %s", exc)
            raise FeedUnavailable("Kafka is unavailable") from None
        with self._lock:
            self._consumer = consumer
            self._positions = positions

    @property
    def partitions(self) -> int:
        return len(self._positions)

    def poll(self) -> list[tuple[str, AlertEvent]]:
        """The tenant's events that arrived within ``POLL_TIMEOUT_S``, each with its id
        (the positions just after it)."""
        with self._lock:
            if self._consumer is None:
                return []
            messages = self._consumer.consume(num_messages=POLL_BATCH, timeout=POLL_TIMEOUT_S)
        out = []
        for msg in messages:
            if msg.error() is not None:
                self._log_error(msg.error())
                continue
            self._positions[msg.partition()] = msg.offset() + 1
            try:
                event = AlertEvent.model_validate_json(msg.value() or b"")
            except ValidationError:
                # Not ours to repair (the producer dead-letters); and not necessarily
                # this tenant's: say nothing about its content.
                log.debug("alert stream: skipping a record that is not an AlertEvent "
                          "(partition %s, offset %s)", msg.partition(), msg.offset())
                continue
            if event.tenant_id == self.tenant_id:
                out.append((format_positions(self._positions), event))
        return out

    def _log_error(self, err: confluent_kafka.KafkaError) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("alert stream: consumer error: %s", err)

    def close(self) -> None:
        """Close the consumer (waits for a running poll)."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()


class StreamCount:
    """How many alert streams this app serves now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def enter(self) -> int:
        with self._lock:
            if self.open >= MAX_STREAMS:
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                    f"too many alert streams open ({MAX_STREAMS}); "
                                    "retry later")
            self.open += 1
            return self.open

    def leave(self) -> int:
        with self._lock:
            self.open -= 1
            return self.open


def stream_count(request: Request) -> StreamCount:
    """The app's stream counter (created with the first stream)."""
    state = request.app.state
    if getattr(state, "alert_streams", None) is None:
        state.alert_streams = StreamCount()
    return state.alert_streams


def stream_principal(key: Annotated[str, Depends(bearer_key)], pool: PoolDep) -> Principal:
    """An operator or admin behind the key (401 / 403 otherwise). Unlike the other
    endpoints' auth it gives its database connection back at once: a stream lasts long."""
    with pool.connection() as conn, api_role_transaction(conn):
        principal = authenticate(conn, key)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if principal.role not in ("operator", "admin"):
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"role {principal.role} may not use this endpoint")
    return principal


@dataclass(frozen=True)
class StreamOptions:
    """Where to start and how often to send heartbeats."""

    resume: dict[int, int] | None
    heartbeat_s: int


def stream_options(
    heartbeat: Annotated[int, Query(ge=1, le=15, description="seconds between heartbeat "
                                    "comments while nothing happens")] = 15,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", description="resume after this event (the `id` of an event "
        "of this stream); ignored when not one")] = None,
) -> StreamOptions:
    """The stream's parameters, validated before any Kafka work."""
    return StreamOptions(parse_positions(last_event_id), heartbeat)


async def alert_feed(
    principal: Annotated[Principal, Depends(stream_principal)],
    options: Annotated[StreamOptions, Depends(stream_options)],
    settings: SettingsDep,
    count: Annotated[StreamCount, Depends(stream_count)],
) -> AsyncIterator[AlertFeed]:
    """The stream's positioned consumer, closed when the response ends (503 before the
    stream starts when Kafka cannot serve it)."""
    open_now = count.enter()
    feed = AlertFeed(settings, principal.tenant_id)
    try:
        try:
            await anyio.to_thread.run_sync(feed.open, options.resume, limiter=feed.limiter)
        except FeedUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
        log.info("alert stream opened: tenant %s, key %s, %d partitions%s; %d open",
                 principal.tenant_id, principal.key_id, feed.partitions,
                 " (resumed)" if options.resume else "", open_now)
        yield feed
    finally:
        # Shielded: a cancelled request must still close its consumer.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(feed.close, limiter=feed.limiter)
        left = count.leave()
        log.info("alert stream closed: tenant %s, key %s, %d events sent; consumer "
                 "closed; %d open", principal.tenant_id, principal.key_id, feed.sent, left)


@router.get(
    "/v1/stream/alerts",
    response_class=EventSourceResponse,
    # Errors come before the stream starts, as JSON (not as events).
    responses={code: {"description": text, "content": {"application/json": {
                   "schema": {"$ref": "#/components/schemas/ErrorPublic"}}}}
               for code, text in ((401, "no or an invalid API key"),
                                  (403, "not an operator or admin key"),
                                  (503, "Kafka cannot serve the stream, or too many "
                                        "streams are open"))},
)
async def stream_alerts(
    options: Annotated[StreamOptions, Depends(stream_options)],
    feed: Annotated[AlertFeed, Depends(alert_feed)],
) -> AsyncIterable[AlertEvent]:
    """Server-sent events (`text/event-stream`) of the tenant's alert changes from now
    on: opened, updated, acknowledged, cleared.

    Each change is an `event: alert` whose `data` is the `AlertEvent` JSON (the `alerts`
    topic's contract) and whose `id` is the stream position after it. The stream opens
    with a `: ready` comment and `retry: 2000`; from then on no change is missed. While
    nothing happens a `: heartbeat` comment is sent every `heartbeat` seconds (default
    15). To resume after a disconnect, send the last `id` received as `Last-Event-ID`
    (browsers' `EventSource` does so by itself): the stream continues just after it, as
    far as Kafka still holds the events. Only the key's tenant's alerts are ever sent.
    """
    yield ServerSentEvent(comment="ready", retry=RETRY_MS)
    quiet_since = time.monotonic()
    while True:
        events = await anyio.to_thread.run_sync(feed.poll, limiter=feed.limiter)
        for event_id, event in events:
            yield ServerSentEvent(event="alert", raw_data=event.model_dump_json(),
                                  id=event_id)
            feed.sent += 1
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= options.heartbeat_s:
            yield ServerSentEvent(comment="heartbeat")
            quiet_since = time.monotonic()
