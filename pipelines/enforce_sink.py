"""The enforcement sink: records each intent, sends it to the NAS, records the answer.

Per batch of the enforce flow's output (``Dispatch`` and ``ActionRecord`` items, keyed by
subscriber), in one transaction: the ``actions`` rows (insert once), the subscribers'
``enforcement_state``, and one ``action_attempts`` row per (intent, NAS, session) in state
``sending`` with the Event-Timestamp it will carry (``ON CONFLICT DO NOTHING``). Only then
are requests sent: a dispatch whose attempt is already final (ack, nak, timeout) is
skipped, so a replay or a restart never resends a completed action; one still
``sending`` (a crash mid-flight) is sent again with its stored Event-Timestamp.

Answers arrive on the CoA client's thread; each batch of them updates the attempt rows
(state, Error-Cause, transmissions, answered_at) and the actions' overall state in one
transaction, and is then published on ``actions.results``.

``snapshot`` (called by Bytewax before it records an epoch's state and input offsets)
waits until every queued intent is committed: the intent always precedes the offsets.
It does not wait for answers, so a silent NAS never stalls the flow; attempts left in
``sending`` by a crash are resumed from the database when the sink starts.

Requests go only to NAS rows of the subscriber's own tenant: a NAS is looked up by
(tenant, NAS id), and a dispatch naming an unknown NAS, or a NAS address registered to
another tenant, is refused (logged, counted, reported as ``skipped``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from collectors.radius.coa import (
    AttributeEncoder,
    CoaClient,
    CoaClientThread,
    Result,
    Target,
    event_timestamp_attribute,
)
from collectors.radius.vendors import Session, VendorProfile, request_for
from ispstream.contracts import ActionResult
from ispstream.db import connect
from pipelines.enforce_rules import ActionRecord, Dispatch, Enforced

log = logging.getLogger(__name__)

FINAL = ("ack", "nak", "timeout")


# --- the inventory the enforcer needs ---------------------------------------------------

@dataclass(frozen=True)
class NasRow:
    tenant_id: str
    nas_id: str
    ip: str
    secret: str
    vendor: str
    coa_port: int


class EnforceCatalog:
    """Tenants' time zones and NAS devices, re-read every ``refresh_s`` (both are small);
    plan rate limits are looked up when a resume needs them."""

    def __init__(self, dsn: str, refresh_s: float = 5.0) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._tz: dict[str, str] = {}
        self._nas: dict[tuple[str, str], NasRow] = {}
        self._by_ip: dict[str, NasRow] = {}
        self._next = 0.0

    def refresh(self) -> None:
        with connect(self._dsn, autocommit=True) as conn:
            tz = dict(conn.execute("SELECT id, timezone FROM tenants").fetchall())
            rows = [NasRow(t, i, str(ip), secret, vendor, port) for t, i, ip, secret, vendor, port
                    in conn.execute("SELECT tenant_id, id, host(ip), secret, vendor, coa_port "
                                    "FROM nas").fetchall()]
        with self._lock:
            self._tz = tz
            self._nas = {(r.tenant_id, r.nas_id): r for r in rows}
            self._by_ip = {r.ip: r for r in rows}
            self._next = time.monotonic() + self._refresh_s

    def maybe_refresh(self, force: bool = False) -> None:
        if force or time.monotonic() >= self._next:
            try:
                self.refresh()
            except psycopg.Error as exc:
                log.warning("could not refresh the inventory (keeping the last one): %s", exc)
                self._next = time.monotonic() + self._refresh_s

    def timezone(self, tenant_id: str) -> str | None:
        return self._tz.get(tenant_id)

    def nas(self, tenant_id: str, nas_id: str) -> NasRow | None:
        return self._nas.get((tenant_id, nas_id))

    def nas_at(self, ip: str) -> NasRow | None:
        return self._by_ip.get(ip)


def load_enforced(dsn: str) -> dict[tuple[str, str], Enforced]:
    """The stored enforced state of every subscriber not in ``normal`` (to start from
    when the flow has no recovered state for that subscriber)."""
    with connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tenant_id, username, state, rate, intent_id, reason, source, "
            "extract(epoch FROM since), extract(epoch FROM until) FROM enforcement_state "
            "WHERE state <> 'normal'").fetchall()
    return {(t, u): Enforced(st, rate, intent, reason, source, float(since),
                             None if until is None else float(until))
            for t, u, st, rate, intent, reason, source, since, until in rows}


# --- SQL ----------------------------------------------------------------------------------

_INSERT_ACTIONS = """
INSERT INTO actions (tenant_id, intent_id, username, kind, rate, source, reason,
                     threshold_pct, cycle_start, requested_by, at, state, completed_at)
SELECT t, i, u, k, r, src, reason, pct, cs, rb, to_timestamp(at), st,
       CASE WHEN st = 'pending' THEN NULL ELSE now() END
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::text[], %s::int[], %s::date[], %s::text[], %s::float8[], %s::text[])
     AS x(t, i, u, k, r, src, reason, pct, cs, rb, at, st)
ON CONFLICT (tenant_id, intent_id) DO NOTHING
"""

# Applied in stream order: the batch holds at most one row per subscriber (the last).
_UPSERT_STATES = """
INSERT INTO enforcement_state (tenant_id, username, state, rate, reason, source, intent_id,
                               since, until, updated_at)
SELECT t, u, st, r, reason, src, i, to_timestamp(since), to_timestamp(until), now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::text[], %s::float8[], %s::float8[])
     AS x(t, u, st, r, reason, src, i, since, until)
ON CONFLICT (tenant_id, username) DO UPDATE
SET state = excluded.state, rate = excluded.rate, reason = excluded.reason,
    source = excluded.source, intent_id = excluded.intent_id, since = excluded.since,
    until = excluded.until, updated_at = now()
"""

_INSERT_ATTEMPTS = """
INSERT INTO action_attempts (tenant_id, intent_id, nas_id, session_id, request, state,
                             event_timestamp)
SELECT t, i, n, s, r, 'sending', e
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[])
     AS x(t, i, n, s, r, e)
ON CONFLICT DO NOTHING
"""

_SELECT_ATTEMPTS = """
SELECT a.tenant_id, a.intent_id, a.nas_id, a.session_id, a.state, a.event_timestamp,
       a.xmin = pg_current_xact_id()::xid AS fresh
FROM action_attempts a
JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS x(t, i, n, s)
  ON a.tenant_id = x.t AND a.intent_id = x.i AND a.nas_id = x.n AND a.session_id = x.s
"""

_UPDATE_ATTEMPTS = """
UPDATE action_attempts a
SET state = x.st, error_cause = x.ec, attempts = a.attempts + x.cnt, request = x.r,
    answered_at = now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[],
            %s::int[], %s::text[]) AS x(t, i, n, s, st, ec, cnt, r)
WHERE a.tenant_id = x.t AND a.intent_id = x.i AND a.nas_id = x.n AND a.session_id = x.s
  AND a.state = 'sending'
"""

# The overall state of an action from its attempts. A NAK with Error-Cause 503 (the NAS
# no longer has the session) counts as nothing to enforce, not as a failure.
_RECOMPUTE_ACTIONS = """
WITH t AS (
  SELECT DISTINCT * FROM unnest(%s::text[], %s::text[]) AS t(tenant_id, intent_id)
), s AS (
  SELECT a.tenant_id, a.intent_id,
         count(x.state) AS total,
         count(*) FILTER (WHERE x.state = 'sending') AS sending,
         count(*) FILTER (WHERE x.state = 'ack') AS acked,
         count(*) FILTER (WHERE x.state IN ('ack', 'timeout')
                          OR (x.state = 'nak' AND x.error_cause IS DISTINCT FROM 503))
           AS effective
  FROM t JOIN actions a USING (tenant_id, intent_id)
  LEFT JOIN action_attempts x USING (tenant_id, intent_id)
  GROUP BY a.tenant_id, a.intent_id
)
UPDATE actions a
SET state = CASE WHEN s.total = 0 THEN a.state
                 WHEN s.sending > 0 THEN 'pending'
                 WHEN s.effective = 0 THEN 'no_sessions'
                 WHEN s.acked = s.effective THEN 'done'
                 WHEN s.acked > 0 THEN 'partial'
                 ELSE 'failed' END,
    completed_at = CASE WHEN s.total = 0 THEN a.completed_at
                        WHEN s.sending > 0 THEN NULL
                        WHEN a.completed_at IS NULL THEN now()
                        ELSE a.completed_at END
FROM s
WHERE a.tenant_id = s.tenant_id AND a.intent_id = s.intent_id
"""

# Attempts a crash left in 'sending', with what is needed to send them again.
_LEFT_SENDING = """
SELECT a.tenant_id, a.intent_id, a.nas_id, a.session_id, a.request, ac.username, ac.kind,
       ac.rate, s.framed_ip, host(n.ip)
FROM action_attempts a
JOIN actions ac ON ac.tenant_id = a.tenant_id AND ac.intent_id = a.intent_id
LEFT JOIN nas n ON n.tenant_id = a.tenant_id AND n.id = a.nas_id
LEFT JOIN sessions s ON s.tenant_id = a.tenant_id AND s.nas_id = a.nas_id
                    AND s.session_id = a.session_id
WHERE a.state = 'sending'
"""

_PLAN_RATES = """
SELECT s.username, p.rate_limit FROM subscribers s
JOIN plans p ON p.tenant_id = s.tenant_id AND p.id = s.plan_id
WHERE s.tenant_id = %s AND s.username = ANY(%s)
"""


def _initial_state(rec: ActionRecord, refused: int) -> str:
    """The ``actions`` state when the record is first written (attempts update it)."""
    if rec.dispatched > refused:
        return "pending"
    if rec.dispatched:
        return "failed"  # every session's NAS was refused
    kind = rec.action.kind
    if kind == "notify" or rec.note:
        return "done"
    return "no_sessions"


@dataclass
class _Send:
    """A dispatch ready to go: its request and the attempt row it belongs to."""

    dispatch: Dispatch
    request: str
    attributes: bytes  # encoded, without Event-Timestamp
    target: Target
    queued_at: float

    @property
    def session_key(self) -> tuple[str, str, str]:
        d = self.dispatch
        return (d.tenant_id, d.nas_id, d.session_id)


# --- the sink -----------------------------------------------------------------------------

class _EnforcePartition(StatefulSinkPartition):
    def __init__(self, sink: "EnforceSink", name: str) -> None:
        self._sink = sink
        self._name = name
        self._cv = threading.Condition()
        self._intake: list = []
        self._answers: list[tuple[_Send, Result | BaseException]] = []
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._refused: Counter = Counter()  # intent -> dispatches refused, until its record
        # session -> requests waiting behind the one in flight to it
        self._session_queue: dict[tuple[str, str, str], collections.deque] = {}
        self.stats: Counter = Counter()
        self._latencies: list[float] = []
        self._next_log = time.monotonic() + 10
        self._conn = connect(sink.dsn)
        self._thread = threading.Thread(target=self._run, name=f"enforce-{name}", daemon=True)
        self._thread.start()
        with self._cv:
            self._intake.append(_Resume())
            self._cv.notify_all()

    # --- called by Bytewax on the worker thread ---

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("the enforcement sink failed") from self._error

    def write_batch(self, values: list) -> None:
        with self._cv:
            self._raise_if_failed()
            self._cv.wait_for(lambda: len(self._intake) < self._sink.max_queued
                              or self._error is not None)
            self._raise_if_failed()
            now = time.monotonic()
            self._intake.extend((v, now) for v in values)
            self._cv.notify_all()

    def snapshot(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: (not self._intake and not self._busy)
                              or self._error is not None)
            self._raise_if_failed()
        return None

    def close(self) -> None:
        try:
            # Bytewax also closes partitions while unwinding from a failure: raising
            # again here would abort the process, so a failure is only reported.
            self.snapshot()
            # give requests in flight a chance to be answered and recorded
            deadline = time.monotonic() + self._sink.client_deadline_s + 1
            with self._cv:
                self._cv.wait_for(lambda: not self._mine_inflight() or self._error is not None,
                                  timeout=max(0.0, deadline - time.monotonic()))
        except RuntimeError:
            log.error("closing the enforcement sink after it failed")
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            self._thread.join(10)
            self._conn.close()
            self._sink.release()

    # --- the partition's own thread ---

    def _mine_inflight(self) -> bool:
        return self.stats["submitted"] > self.stats["answered"]

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._intake or self._answers or self._closing)
                if self._closing and not self._intake and not self._answers:
                    return
                intake, self._intake = self._intake, []
                answers, self._answers = self._answers, []
                self._busy = bool(intake)
            try:
                if answers:
                    t = time.perf_counter()
                    self._with_reconnect(self._record_answers, answers)
                    self.stats["answer_batches"] += 1
                    self.stats["answers_ms"] += int((time.perf_counter() - t) * 1000)
                if intake:
                    t = time.perf_counter()
                    self._with_reconnect(self._take, intake)
                    self.stats["intake_batches"] += 1
                    self.stats["intake_ms"] += int((time.perf_counter() - t) * 1000)
                self._maybe_log()
            except BaseException as exc:  # noqa: BLE001 - surfaced to the flow thread
                log.exception("enforcement sink partition %s failed", self._name)
                with self._cv:
                    self._error = exc
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _with_reconnect(self, fn, arg) -> None:
        try:
            fn(arg)
        except psycopg.OperationalError:
            log.warning("database connection lost; reconnecting")
            self._conn.close()
            self._conn = connect(self._sink.dsn)
            fn(arg)  # every statement is idempotent

    # --- intents ---

    def _take(self, intake: list) -> None:
        records: list[ActionRecord] = []
        dispatches: list[tuple[Dispatch, float]] = []
        for entry in intake:
            if isinstance(entry, _Resume):
                now = time.monotonic()
                dispatches.extend((d, now) for d in self._left_sending())
                continue
            value, queued_at = entry  # the sink receives values without their keys
            if isinstance(value, Dispatch):
                dispatches.append((value, queued_at))
            elif isinstance(value, ActionRecord):
                records.append(value)
        self._sink.catalog.maybe_refresh()
        sends = self._prepare(dispatches)
        self._record_intents(records, sends)

    def _prepare(self, dispatches: list[tuple[Dispatch, float]]) -> list[_Send]:
        """Vendor mapping and tenant check for each dispatch; refused ones are reported."""
        catalog = self._sink.catalog
        plan_rates = self._plan_rates([d for d, _ in dispatches
                                       if d.op == "resume" and not d.rate])
        sends = []
        refreshed = False
        for d, queued_at in dispatches:
            nas = catalog.nas(d.tenant_id, d.nas_id)
            if nas is None and not refreshed:
                catalog.maybe_refresh(force=True)  # a NAS added since the last refresh
                refreshed = True
                nas = catalog.nas(d.tenant_id, d.nas_id)
            owner = catalog.nas_at(d.nas_ip) if d.nas_ip else None
            reason = None
            if nas is None:
                reason = f"no NAS {d.nas_id!r} in tenant {d.tenant_id!r}"
            elif owner is not None and owner.tenant_id != d.tenant_id:
                reason = (f"session address {d.nas_ip} belongs to a NAS of tenant "
                          f"{owner.tenant_id!r}, not {d.tenant_id!r}")
            profile = self._sink.profiles.get(nas.vendor) if nas else None
            if nas is not None and profile is None:
                reason = f"no vendor profile {nas.vendor!r}"
            if reason is not None:
                self._refuse(d, reason)
                continue
            try:
                req = request_for(profile, d.op,
                                  Session(nas.ip, d.session_id, d.username, d.framed_ip),
                                  rate=d.rate, plan_rate=d.rate if d.op == "resume" and d.rate
                                  else plan_rates.get((d.tenant_id, d.username)),
                                  prev_state=d.prev_state)
                attrs = self._sink.encoder.encode_all(req.attributes)
            except ValueError as exc:
                self._refuse(d, f"cannot build the request: {exc}")
                continue
            sends.append(_Send(d, req.request, attrs,
                               Target(nas.ip, nas.coa_port, nas.secret.encode()), queued_at))
        return sends

    def _refuse(self, d: Dispatch, reason: str) -> None:
        log.error("refused %s for %s/%s session %s on NAS %s: %s", d.op, d.tenant_id,
                  d.username, d.session_id, d.nas_id, reason)
        self.stats["refused"] += 1
        if len(self._refused) > 10_000:  # refusals of re-applied intents have no record
            self._refused.clear()
        self._refused[(d.tenant_id, d.intent_id)] += 1
        self._publish([ActionResult(
            intent_id=d.intent_id, tenant_id=d.tenant_id, username=d.username,
            nas_id=d.nas_id, session_id=d.session_id,
            request="disconnect" if d.op in ("suspend", "disconnect") else "coa",
            outcome="skipped", attempts=0, at=time.time())])

    def _plan_rates(self, resumes: list[Dispatch]) -> dict[tuple[str, str], str | None]:
        by_tenant: dict[str, set[str]] = {}
        for d in resumes:
            by_tenant.setdefault(d.tenant_id, set()).add(d.username)
        out: dict[tuple[str, str], str | None] = {}
        if not by_tenant:
            return out
        with self._conn.transaction():
            for tenant, users in by_tenant.items():
                for user, rate in self._conn.execute(_PLAN_RATES, (tenant, sorted(users))):
                    out[(tenant, user)] = rate
        return out

    def _record_intents(self, records: list[ActionRecord], sends: list[_Send]) -> None:
        now = int(time.time())
        touched: set[tuple[str, str]] = set()
        expected: dict[tuple[str, str], int] = {}  # intent -> attempts its record announced
        new: Counter = Counter()  # intent -> attempts first recorded in this transaction
        with self._conn.transaction():
            cur = self._conn.cursor()
            if records:
                rows = []
                for r in records:
                    a = r.action
                    refused = self._refused.pop((a.tenant_id, a.intent_id), 0)
                    st = _initial_state(r, refused)
                    expected[(a.tenant_id, a.intent_id)] = r.dispatched - refused
                    rows.append((a.tenant_id, a.intent_id, a.username, a.kind, a.rate, a.source,
                                 a.reason + (f" ({r.note})" if r.note else ""),
                                 a.threshold_pct, a.cycle_start, a.requested_by, a.at, st))
                cur.execute(_INSERT_ACTIONS, [list(c) for c in zip(*rows)])
                states = {(r.action.tenant_id, r.action.username): (
                    r.action.tenant_id, r.action.username, e.state, e.rate, e.reason, e.source,
                    e.intent_id, e.since, e.until)
                    for r in records if (e := r.enforced) is not None}
                if states:
                    cur.execute(_UPSERT_STATES, [list(c) for c in zip(*states.values())])
            stored: dict[tuple, tuple[str, int]] = {}
            if sends:
                keys = {s.dispatch.attempt_key for s in sends}
                cols = list(zip(*((*key, req, now) for key, req in
                                  {s.dispatch.attempt_key: s.request for s in sends}.items())))
                cur.execute(_INSERT_ATTEMPTS, [list(c) for c in cols])
                if cur.rowcount != len(keys):
                    # some were recorded before (a replay, a restart): read their state
                    cur.execute(_SELECT_ATTEMPTS, [list(c) for c in cols[:4]])
                    for t, i, n, sid, state, ts, fresh in cur.fetchall():
                        if not fresh:
                            stored[(t, i, n, sid)] = (state, ts)
                new.update(key[:2] for key in keys if key not in stored)
                touched.update(key[:2] for key in keys
                               if key[:2] not in expected or key in stored)
            # An action whose record and every attempt were written just now is 'pending'
            # as inserted (or final without attempts); any other needs its state recomputed.
            touched.update(i for i, n in expected.items() if n and new[i] != n)
            if touched:
                t_ids, i_ids = zip(*touched)
                cur.execute(_RECOMPUTE_ACTIONS, (list(t_ids), list(i_ids)))
        # committed: the intents are durable, now they may be sent
        jobs = []
        for s in sends:
            key = s.dispatch.attempt_key
            state, ts = stored.get(key, ("sending", now))
            if state in FINAL:
                self.stats["skipped_final"] += 1
                log.debug("attempt %s already %s; not sent again", key, state)
                continue
            if not self._sink.claim(key):
                self.stats["skipped_inflight"] += 1
                continue
            jobs.append((s, s.target, s.request, s.attributes + event_timestamp_attribute(ts)))
        self.stats["submitted"] += len(jobs)
        ready = []
        for job in jobs:
            # one request at a time per session, in order: a resume must not overtake the
            # throttle it lifts
            waiting = self._session_queue.get(job[0].session_key)
            if waiting is None:
                self._session_queue[job[0].session_key] = collections.deque()
                ready.append(job)
            else:
                waiting.append(job)
        if ready:
            self._sink.coa.submit_many(ready, self._on_answer)

    def _on_answer(self, send: _Send, result: Result | BaseException) -> None:
        # on the CoA client's thread: hand over to the partition's thread
        with self._cv:
            self._answers.append((send, result))
            self._cv.notify_all()

    # --- answers ---

    def _record_answers(self, answers: list[tuple[_Send, Result | BaseException]]) -> None:
        rows = []
        results = []
        now = time.time()
        mono = time.monotonic()
        for send, res in answers:
            d = send.dispatch
            if isinstance(res, BaseException):
                log.error("sending to %s:%d failed: %s", send.target.host, send.target.port, res)
                res = Result("timeout", None, 0)
            rows.append((d.tenant_id, d.intent_id, d.nas_id, d.session_id, res.outcome,
                         res.error_cause, res.attempts, send.request))
            results.append(ActionResult(
                intent_id=d.intent_id, tenant_id=d.tenant_id, username=d.username,
                nas_id=d.nas_id, session_id=d.session_id, request=send.request,
                outcome=res.outcome, error_cause=res.error_cause, attempts=res.attempts,
                at=now))
            self.stats[res.outcome] += 1
            if res.outcome == "ack":
                self._latencies.append(mono - send.queued_at)
        cols = [list(c) for c in zip(*rows)]
        with self._conn.transaction():
            cur = self._conn.cursor()
            cur.execute(_UPDATE_ATTEMPTS, cols)
            cur.execute(_RECOMPUTE_ACTIONS, (cols[0], cols[1]))
        ready = []
        for send, _ in answers:
            self._sink.release_key(send.dispatch.attempt_key)
            waiting = self._session_queue.get(send.session_key)
            if waiting:
                ready.append(waiting.popleft())
            else:
                self._session_queue.pop(send.session_key, None)
        if ready:
            self._sink.coa.submit_many(ready, self._on_answer)
        self.stats["answered"] += len(answers)
        self._publish(results)
        with self._cv:
            self._cv.notify_all()

    def _publish(self, results: list[ActionResult]) -> None:
        producer = self._sink.producer
        if producer is None:
            return
        for r in results:
            producer.produce(self._sink.results_topic, key=f"{r.tenant_id}/{r.username}",
                             value=r.model_dump_json())
        producer.poll(0)

    # --- restart ---

    def _left_sending(self) -> list[Dispatch]:
        """Attempts a crash left in 'sending' that belong to this partition."""
        out = []
        with self._conn.transaction():
            rows = self._conn.execute(_LEFT_SENDING).fetchall()
        for t, i, n, s, request, user, kind, rate, framed_ip, nas_ip in rows:
            if self._sink.partition_of(f"{t}/{user}") != self._name:
                continue
            op = kind if kind in ("throttle", "suspend", "disconnect", "resume") else "disconnect"
            prev = "suspended" if (op == "resume" and request == "disconnect") else "throttled"
            out.append(Dispatch(t, user, i, op, rate, prev, n, nas_ip or "", s, framed_ip))
        if out:
            log.info("partition %s: resuming %d attempt(s) left in 'sending'", self._name,
                     len(out))
        return out

    def _maybe_log(self) -> None:
        if time.monotonic() < self._next_log:
            return
        self._next_log = time.monotonic() + 10
        lat = sorted(self._latencies)
        self._latencies = []
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
        log.info("enforce %s: %s; queue->ack p50 %.3fs p99 %.3fs", self._name,
                 dict(self.stats), p(0.5), p(0.99))


class _Resume:
    """Marker queued first in every partition: resume attempts left in 'sending'."""


class EnforceSink(FixedPartitionedSink):
    """Bytewax sink sending the enforce flow's dispatches; items ``(subscriber, Dispatch |
    ActionRecord)``. ``partitions`` partitions (each with its own connection and thread)
    share one CoA client: one UDP socket, one identifier space and one concurrency limit
    per NAS in the process."""

    def __init__(self, dsn: str, *, catalog: EnforceCatalog, profiles: dict[str, VendorProfile],
                 client_factory=CoaClient, encoder: AttributeEncoder | None = None,
                 producer_factory=None, results_topic: str = "", partitions: int = 1,
                 max_queued: int = 100_000) -> None:
        self.dsn = dsn
        self.catalog = catalog
        self.profiles = profiles
        self.encoder = encoder or AttributeEncoder()
        self.results_topic = results_topic
        self.max_queued = max_queued
        self._client_factory = client_factory
        self._producer_factory = producer_factory
        self._partitions = partitions
        self._lock = threading.Lock()
        self._users = 0
        self.coa: CoaClientThread | None = None
        self.producer = None
        self._inflight: set[tuple] = set()

    @property
    def client_deadline_s(self) -> float:
        return self.coa.client.deadline_s if self.coa else 0.0

    def list_parts(self) -> list[str]:
        return [f"enforce-{i}" for i in range(self._partitions)]

    def partition_of(self, key: str) -> str:
        parts = self.list_parts()
        return parts[zlib.adler32(key.encode()) % len(parts)]

    def build_part(self, step_id: str, for_part: str, resume_state) -> _EnforcePartition:
        with self._lock:
            if self.coa is None:
                self.coa = CoaClientThread(self._client_factory())
                self.producer = self._producer_factory() if self._producer_factory else None
            self._users += 1
        return _EnforcePartition(self, for_part)

    def claim(self, key: tuple) -> bool:
        """Mark an attempt in flight in this process; False if it already is."""
        with self._lock:
            if key in self._inflight:
                return False
            self._inflight.add(key)
            return True

    def release_key(self, key: tuple) -> None:
        with self._lock:
            self._inflight.discard(key)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            if self.producer is not None:
                self.producer.flush(10)
            if self.coa is not None:
                self.coa.close()
                self.coa = None
