"""Alert delivery: announcements queued in ``alert_deliveries``, sent to each channel.

The fault flow's database sink queues one row per (alert, channel, announced state) in
the same transaction that stores the alert (see ``pipelines.faults``); the Alertmanager
receiver of the API queues its own the same way. ``AlertDelivery`` is a worker thread
(run inside ``ispstream flow faults``) that sends the rows that are due and records the
outcome, so detection never waits for a channel:

- webhook: POST of the ``AlertEvent`` JSON, signed with
  ``X-Ispstream-Signature: sha256=<hex HMAC-SHA256 of the body with the channel secret>``;
- email: a plain-text message over SMTP (STARTTLS / implicit TLS and login optional).

A failed attempt that may succeed later (network error, timeout, HTTP 5xx / 408 / 429,
SMTP 4xx) is retried with exponential backoff and jitter, at most ``max_attempts``
times; anything else fails at once. Rows are claimed with a lease, so several processes
may run workers; a crash mid-send means that row is sent again after the lease (at least
once: receivers deduplicate by ``X-Ispstream-Delivery``).

Rules at send time: an opening is skipped when the alert is suppressed by then, or when
a per-ONU alert (held for the channel's ``hold_s``) cleared within the hold; a clearing
is sent only where the opening was delivered, and never before it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Callable

import psycopg
from pydantic import ValidationError

from ispstream.contracts import AlertEvent
from ispstream.db import connect
from pipelines.fault_rules import ONU_KINDS

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Ispstream-Signature"
DELIVERY_HEADER = "X-Ispstream-Delivery"
USER_AGENT = "ispstream-alerts/1"


# --- pure pieces ----------------------------------------------------------------------

def sign(body: bytes, secret: str) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` (constant-time comparison)."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def backoff_s(attempt: int, base_s: float, cap_s: float, rnd: float) -> float:
    """Delay before retry ``attempt`` (1 = the first retry): ``base_s`` doubling per
    attempt up to ``cap_s``, with equal jitter (half fixed, half ``rnd`` in [0, 1))."""
    d = min(cap_s, base_s * 2 ** (attempt - 1))
    return d / 2 + rnd * d / 2


class DeliveryError(Exception):
    """An attempt failed; ``retryable`` when a later attempt may succeed."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Claimed:
    """A due delivery with what deciding and sending it needs."""

    tenant_id: str
    alert_id: str
    channel_id: str
    state: str
    attempts: int
    payload: dict
    channel_kind: str | None
    channel_config: dict | None
    channel_enabled: bool | None
    alert_state: str | None
    alert_suppressed_by: str | None
    open_status: str | None


def skip_reason(c: Claimed) -> str | None:
    """Why a due delivery is not to be sent any more (None: send it)."""
    if c.channel_kind is None or not c.channel_enabled:
        return "channel disabled or removed"
    if c.state == "open":
        if c.alert_state is None:
            return "alert no longer exists"
        if c.alert_suppressed_by is not None:
            return f"suppressed by {c.alert_suppressed_by}"
        if c.alert_state == "cleared" and c.payload.get("kind") in ONU_KINDS:
            return "cleared within the hold"
        return None
    if c.open_status != "delivered":
        return "the opening was not delivered"
    return None


def event_body(payload: dict) -> bytes:
    """The JSON body sent: the ``AlertEvent`` in its canonical field order."""
    try:
        return AlertEvent.model_validate(payload).model_dump_json().encode()
    except ValidationError:
        return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def render_email(payload: dict, sender: str, to: list[str]) -> EmailMessage:
    """A plain-text e-mail announcing one alert state."""
    state = payload.get("state", "open")
    msg = EmailMessage()
    msg["Subject"] = (f"[{str(payload.get('severity', '')).upper()}] "
                      f"{'CLEARED' if state == 'cleared' else 'OPEN'}: {payload.get('title')}")
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="ispstream")
    msg[DELIVERY_HEADER] = f"{payload.get('alert_id')}/{state}"
    subs = payload.get("affected_subscribers") or []
    lines = [
        str(payload.get("title")),
        "",
        str(payload.get("explanation")),
        "",
        f"State:           {state}",
        f"Severity:        {payload.get('severity')}",
        f"Kind:            {payload.get('kind')}",
        f"Device:          {payload.get('device_id') or '-'}",
        f"Object:          {payload.get('object') or '-'}",
        f"Probable cause:  {payload.get('probable_cause') or '-'}",
        f"Opened:          {_when(payload.get('opened_at'))}",
        f"Changed:         {_when(payload.get('changed_at'))}",
        f"Key:             {payload.get('key')}",
        f"Alert id:        {payload.get('alert_id')}",
        f"Subscribers:     {len(subs)}" + (f" ({', '.join(subs[:50])}"
                                            f"{', ...' if len(subs) > 50 else ''})"
                                            if subs else ""),
        "",
        "-- ",
        "ispstream",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg


# --- senders --------------------------------------------------------------------------

def send_webhook(config: dict, payload: dict, delivery_id: str, timeout_s: float) -> None:
    """POST the signed event; raises ``DeliveryError``."""
    url = config.get("url")
    secret = config.get("secret")
    if not url or not str(url).startswith(("http://", "https://")):
        raise DeliveryError("webhook channel has no http(s) url", retryable=False)
    if not secret:
        raise DeliveryError("webhook channel has no secret to sign with", retryable=False)
    body = event_body(payload)
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, str(secret)), DELIVERY_HEADER: delivery_id})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read(1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} {exc.reason}",
                            retryable=exc.code >= 500 or exc.code in (408, 429)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{type(exc).__name__}: {reason}", retryable=True) from None


def _smtp_config(config: dict) -> dict:
    smtp = config.get("smtp") or {}
    if isinstance(smtp, str):
        host, _, port = smtp.rpartition(":")
        smtp = {"host": host or smtp, "port": int(port) if host and port else 25}
    return smtp


def send_email(config: dict, payload: dict, delivery_id: str, timeout_s: float) -> None:
    """Send the e-mail over SMTP; raises ``DeliveryError``.

    config: ``to`` (address or list), ``from``, ``smtp``: "host:port" or {host, port,
    starttls, ssl, username, password}."""
    to = config.get("to")
    to = [to] if isinstance(to, str) else list(to or [])
    sender = config.get("from")
    smtp = _smtp_config(config)
    if not to or not sender or not smtp.get("host"):
        raise DeliveryError("email channel needs to, from and smtp host", retryable=False)
    msg = render_email(payload, sender, to)
    try:
        cls = smtplib.SMTP_SSL if smtp.get("ssl") else smtplib.SMTP
        kwargs = {"context": ssl.create_default_context()} if smtp.get("ssl") else {}
        with cls(smtp["host"], int(smtp.get("port", 465 if smtp.get("ssl") else 25)),
                 timeout=timeout_s, **kwargs) as s:
            if smtp.get("starttls"):
                s.starttls(context=ssl.create_default_context())
            if smtp.get("username"):
                s.login(smtp["username"], smtp.get("password", ""))
            refused = s.send_message(msg, from_addr=sender, to_addrs=to)
            if refused:
                log.warning("alert e-mail %s refused for %s", delivery_id, sorted(refused))
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"all recipients refused: {exc.recipients}",
                            retryable=False) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"SMTP {exc.smtp_code} {exc.smtp_error!r}",
                            retryable=400 <= exc.smtp_code < 500) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None


SENDERS: dict[str, Callable[[dict, dict, str, float], None]] = {
    "webhook": send_webhook,
    "email": send_email,
}


# --- the worker -----------------------------------------------------------------------

_CLAIM = """
WITH due AS (
  SELECT d.tenant_id, d.alert_id, d.channel_id, d.state
  FROM alert_deliveries d
  WHERE d.status = 'pending' AND d.next_attempt_at <= now()
    AND NOT (d.state <> 'open' AND EXISTS (
      SELECT 1 FROM alert_deliveries o
      WHERE o.tenant_id = d.tenant_id AND o.alert_id = d.alert_id
        AND o.channel_id = d.channel_id AND o.state = 'open' AND o.status = 'pending'))
  ORDER BY d.next_attempt_at
  LIMIT %s
  FOR UPDATE SKIP LOCKED)
UPDATE alert_deliveries d SET next_attempt_at = now() + make_interval(secs => %s)
FROM due
WHERE d.tenant_id = due.tenant_id AND d.alert_id = due.alert_id
  AND d.channel_id = due.channel_id AND d.state = due.state
RETURNING d.tenant_id, d.alert_id, d.channel_id, d.state, d.attempts, d.payload,
  (SELECT c.kind FROM alert_channels c WHERE c.tenant_id = d.tenant_id AND c.id = d.channel_id),
  (SELECT c.config FROM alert_channels c
   WHERE c.tenant_id = d.tenant_id AND c.id = d.channel_id),
  (SELECT c.enabled FROM alert_channels c
   WHERE c.tenant_id = d.tenant_id AND c.id = d.channel_id),
  (SELECT a.state FROM alerts a WHERE a.tenant_id = d.tenant_id AND a.alert_id = d.alert_id),
  (SELECT a.suppressed_by FROM alerts a
   WHERE a.tenant_id = d.tenant_id AND a.alert_id = d.alert_id),
  (SELECT o.status FROM alert_deliveries o
   WHERE o.tenant_id = d.tenant_id AND o.alert_id = d.alert_id
     AND o.channel_id = d.channel_id AND o.state = 'open')
"""
_RECORD = """
UPDATE alert_deliveries
SET status = %s, attempts = %s, last_error = %s,
    next_attempt_at = now() + make_interval(secs => %s),
    delivered_at = CASE WHEN %s THEN now() ELSE delivered_at END,
    updated_at = now()
WHERE tenant_id = %s AND alert_id = %s AND channel_id = %s AND state = %s
  AND status = 'pending'
"""


class AlertDelivery:
    """Sends due alert announcements on a background thread (``start``/``stop``), or
    one round at a time with ``run_once`` (tests).

    Per channel, ``config`` may set ``max_attempts``, ``backoff_s`` (first retry delay)
    and ``timeout_s``; the constructor gives the defaults."""

    def __init__(self, dsn: str, *, poll_s: float = 0.5, batch: int = 50,
                 lease_s: float = 120.0, max_attempts: int = 6, backoff_base_s: float = 2.0,
                 backoff_cap_s: float = 300.0, timeout_s: float = 10.0, senders: int = 4,
                 rng: Callable[[], float] = random.random) -> None:
        self._dsn = dsn
        self._poll_s = poll_s
        self._batch = batch
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._timeout_s = timeout_s
        self._rng = rng
        self._pool = ThreadPoolExecutor(max_workers=senders,
                                        thread_name_prefix="alert-sender")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-delivery",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.run_once()
            except Exception:  # noqa: BLE001 - keep delivering; the queue is durable
                log.exception("alert delivery round failed; retrying")
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                n = 0
                self._stop.wait(min(5.0, self._poll_s * 10))
            if n == 0:
                self._stop.wait(self._poll_s)

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self._dsn, autocommit=True,
                                 application_name="ispstream-alert-delivery")
        return self._conn

    def run_once(self) -> int:
        """Claim the due deliveries, send them (concurrently), record the outcomes;
        returns how many were handled."""
        conn = self._db()
        rows = conn.execute(_CLAIM, (self._batch, self._lease_s)).fetchall()
        if not rows:
            return 0
        claimed = [Claimed(*r) for r in rows]
        futures = []
        for c in claimed:
            reason = skip_reason(c)
            if reason is not None:
                self._record(conn, c, "skipped", c.attempts, reason, 0)
                log.info("alert %s %s on %s/%s skipped: %s", c.alert_id, c.state,
                         c.tenant_id, c.channel_id, reason)
                continue
            futures.append((c, self._pool.submit(self._send, c)))
        for c, fut in futures:
            err = fut.result()
            attempts = c.attempts + 1
            if err is None:
                self._record(conn, c, "delivered", attempts, None, 0)
                log.info("alert %s %s delivered to %s/%s (attempt %d)", c.alert_id, c.state,
                         c.tenant_id, c.channel_id, attempts)
                continue
            cfg = c.channel_config or {}
            limit = _int(cfg.get("max_attempts"), self._max_attempts)
            if err.retryable and attempts < limit:
                delay = backoff_s(attempts, _float(cfg.get("backoff_s"), self._backoff_base_s),
                                  self._backoff_cap_s, self._rng())
                self._record(conn, c, "pending", attempts, str(err), delay)
                log.warning("alert %s %s to %s/%s failed (attempt %d of %d, retry in %.1fs): "
                            "%s", c.alert_id, c.state, c.tenant_id, c.channel_id, attempts,
                            limit, delay, err)
            else:
                self._record(conn, c, "failed", attempts, str(err), 0)
                log.error("alert %s %s to %s/%s failed for good after %d attempt(s): %s",
                          c.alert_id, c.state, c.tenant_id, c.channel_id, attempts, err)
        return len(claimed)

    def _send(self, c: Claimed) -> DeliveryError | None:
        cfg = c.channel_config or {}
        sender = SENDERS.get(c.channel_kind or "")
        if sender is None:
            return DeliveryError(f"unknown channel kind {c.channel_kind!r}", retryable=False)
        payload = {**c.payload, "state": c.state} if c.payload else {}
        try:
            sender(cfg, payload, f"{c.alert_id}/{c.channel_id}/{c.state}",
                   _float(cfg.get("timeout_s"), self._timeout_s))
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a bad channel must not stop the others
            return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=False)
        return None

    @staticmethod
    def _record(conn: psycopg.Connection, c: Claimed, status: str, attempts: int,
                error: str | None, delay_s: float) -> None:
        conn.execute(_RECORD, (status, attempts, error and error[:1000], delay_s,
                               status == "delivered",
                               c.tenant_id, c.alert_id, c.channel_id, c.state))


def _int(v, default: int) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 \
        else default


def _float(v, default: float) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 \
        else default
