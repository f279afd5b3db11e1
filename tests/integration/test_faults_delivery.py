"""Alert delivery against real peers: a local HTTP server as the webhook receiver (the
signature verified, a retry after a 500, a permanent 4xx), a minimal SMTP server written
here for e-mail, and the queue rules in PostgreSQL (suppressed and held openings skipped,
a clearing only after its opening was delivered)."""

from __future__ import annotations

import email
import json
import socketserver
import threading
import time
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pipelines.alert_delivery import SIGNATURE_HEADER, AlertDelivery, verify
from pipelines.fault_rules import AlertChange, OnuRef
from pipelines.faults import AlertRecord, alert_record, write_faults
from pipelines.telemetry_catalog import TelemetryCatalog
from tests.procs import wait_until

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-1"
T0 = 1_700_000_000.0


class WebhookPeer:
    """A real HTTP server recording POSTs; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses or [])
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    peer.requests.append(({k.lower(): v for k, v in self.headers.items()},
                                          body))
                    status = peer.statuses.pop(0) if peer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpPeer:
    """A minimal SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
    QUIT) keeping the messages it accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")

            def handle(self):
                self.reply("220 peer ESMTP test")
                sender, rcpts = None, []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        self.wfile.write(b"250-peer\r\n250 8BITMIME\r\n")
                    elif up.startswith("HELO") or up.startswith("NOOP"):
                        self.reply("250 ok")
                    elif up.startswith("MAIL FROM:"):
                        sender, rcpts = cmd[10:].strip().strip("<>"), []
                        self.reply("250 ok")
                    elif up.startswith("RCPT TO:"):
                        rcpts.append(cmd[8:].strip().strip("<>"))
                        self.reply("250 ok")
                    elif up == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        data = []
                        while (ln := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(ln[1:] if ln.startswith(b"..") else ln)
                        msg = email.message_from_bytes(b"".join(data), policy=policy.default)
                        with lock:
                            peer.messages.append((sender, rcpts, msg))
                        self.reply("250 queued")
                    elif up == "RSET":
                        sender, rcpts = None, []
                        self.reply("250 ok")
                    elif up == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("502 not implemented")

        lock = threading.Lock()
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peers():
    hook, smtp = WebhookPeer([500]), SmtpPeer()
    yield hook, smtp
    hook.close()
    smtp.close()


def seed_tenant(dsn: str, subscribers: list[str] = ()) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO tenants (id, timezone, currency) VALUES ('acme', 'UTC', 'EUR')")
        conn.execute("INSERT INTO plans (tenant_id, id, monthly_fee) VALUES ('acme', 'p', 10)")
        for user in subscribers:
            conn.execute("INSERT INTO subscribers (tenant_id, username, plan_id) "
                         "VALUES ('acme', %s, 'p')", (user,))


def add_channels(dsn: str, hook_url: str | None, smtp_port: int | None, *,
                 hook_min="major", mail_min="critical", hold_s=1) -> None:
    with psycopg.connect(dsn) as conn:
        if hook_url:
            conn.execute("INSERT INTO alert_channels (tenant_id, id, kind, config, min_severity)"
                         " VALUES ('acme', 'noc-hook', 'webhook', %s, %s)",
                         (Jsonb({"url": hook_url, "secret": SECRET, "backoff_s": 0.2,
                                 "hold_s": hold_s}), hook_min))
        if smtp_port:
            conn.execute("INSERT INTO alert_channels (tenant_id, id, kind, config, min_severity)"
                         " VALUES ('acme', 'noc-mail', 'email', %s, %s)",
                         (Jsonb({"to": ["noc@example.net"], "from": "ispstream@example.net",
                                 "smtp": f"127.0.0.1:{smtp_port}", "hold_s": hold_s}),
                          mail_min))


def change(kind: str, key: str, state: str = "open", severity: str = "major", *,
           t: float = T0, opened: float = T0, suppressed_by=None, onus=()) -> AlertRecord:
    c = AlertChange("acme", f"id-{key}-{opened}", key, kind, severity, state, "olt-1", "obj",
                    f"title {key}", "explanation", None, tuple(onus), {}, suppressed_by,
                    opened, t, "opened" if state == "open" else "cleared", True)
    return alert_record(TelemetryCatalog(None), c)[1]


def deliveries(dsn: str) -> dict[tuple[str, str, str], tuple]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT alert_id, channel_id, state, status, attempts, last_error "
                            "FROM alert_deliveries").fetchall()
    return {(a, c, s): (st, n, err) for a, c, s, st, n, err in rows}


def drain(worker: AlertDelivery, dsn: str, timeout: float = 30) -> None:
    """Run delivery rounds until nothing is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        if all(v[0] != "pending" for v in deliveries(dsn).values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"deliveries still pending: {deliveries(dsn)}")


def test_webhook_signed_retried_and_email_sent(pg_dsn, peers):
    hook, smtp = peers
    seed_tenant(pg_dsn)
    add_channels(pg_dsn, hook.url, smtp.port, hook_min="major", mail_min="critical")
    with psycopg.connect(pg_dsn) as conn:
        write_faults(conn, [change("pon_down", "pon_down:olt-1/p1", severity="critical"),
                            change("if_high_util", "if_high_util:r/1", severity="warning")])
    worker = AlertDelivery(pg_dsn, poll_s=0.05, backoff_base_s=0.1)
    worker.start()
    try:
        wait_until(lambda: len(hook.requests) == 2 and len(smtp.messages) == 1, 30,
                   "a 500, then the retry, and one e-mail")
        wait_until(lambda: deliveries(pg_dsn).get(
            ("id-pon_down:olt-1/p1-1700000000.0", "noc-hook", "open"), ("",))[0] == "delivered",
            30, "the webhook delivery recorded")
    finally:
        worker.stop()
    for headers, body in hook.requests:
        assert headers["content-type"] == "application/json"
        assert verify(body, SECRET, headers[SIGNATURE_HEADER.lower()])
        assert not verify(body, "other-secret", headers[SIGNATURE_HEADER.lower()])
        assert headers["x-ispstream-delivery"] == \
            "id-pon_down:olt-1/p1-1700000000.0/noc-hook/open"
    ev = hook.events()[1]
    assert (ev["kind"], ev["state"], ev["severity"]) == ("pon_down", "open", "critical")
    d = deliveries(pg_dsn)
    assert d[("id-pon_down:olt-1/p1-1700000000.0", "noc-hook", "open")] == \
        ("delivered", 2, None)
    assert d[("id-pon_down:olt-1/p1-1700000000.0", "noc-mail", "open")] == \
        ("delivered", 1, None)
    # below both channels' min_severity: not queued at all
    assert not [k for k in d if k[0].startswith("id-if_high_util")]
    sender, rcpts, msg = smtp.messages[0]
    assert (sender, rcpts) == ("ispstream@example.net", ["noc@example.net"])
    assert msg["Subject"] == "[CRITICAL] OPEN: title pon_down:olt-1/p1"
    assert "Kind:            pon_down" in msg.get_content()


def test_permanent_failure_and_bounded_retries(pg_dsn):
    hook = WebhookPeer([404])
    dead = WebhookPeer([503] * 10)
    try:
        seed_tenant(pg_dsn)
        with psycopg.connect(pg_dsn) as conn:
            for cid, url in (("gone", hook.url), ("down", dead.url)):
                conn.execute("INSERT INTO alert_channels (tenant_id, id, kind, config) VALUES "
                             "('acme', %s, 'webhook', %s)",
                             (cid, Jsonb({"url": url, "secret": SECRET, "max_attempts": 3,
                                          "backoff_s": 0.05})))
            write_faults(conn, [change("if_down", "if_down:r/1")])
        worker = AlertDelivery(pg_dsn, poll_s=0.05)
        drain(worker, pg_dsn)
        worker.stop()
        d = deliveries(pg_dsn)
        aid = "id-if_down:r/1-1700000000.0"
        assert d[(aid, "gone", "open")] == ("failed", 1, "HTTP 404 Not Found")
        assert d[(aid, "down", "open")][:2] == ("failed", 3)
        assert d[(aid, "down", "open")][2].startswith("HTTP 503")
        assert len(hook.requests) == 1 and len(dead.requests) == 3
    finally:
        hook.close()
        dead.close()


def test_queue_rules_suppression_hold_and_clear_order(pg_dsn):
    hook = WebhookPeer()
    try:
        seed_tenant(pg_dsn)
        add_channels(pg_dsn, hook.url, None, hook_min="warning", hold_s=0.5)
        onu = (OnuRef("p1", "1"),)
        with psycopg.connect(pg_dsn) as conn:
            # an ONU alert, held; a PON alert explains it before the hold ends
            write_faults(conn, [change("onu_offline", "onu_offline:o/p1/1", onus=onu)])
            write_faults(conn, [change("onu_offline", "onu_offline:o/p1/1", t=T0 + 1,
                                       suppressed_by="pon-1", onus=onu)])
            # another ONU alert that clears within its hold
            write_faults(conn, [change("onu_low_rx", "onu_low_rx:o/p1/2"),
                                change("onu_low_rx", "onu_low_rx:o/p1/2", "cleared", t=T0 + 5)])
            # an interface alert opened and cleared: both announced, in order
            write_faults(conn, [change("if_down", "if_down:r/1"),
                                change("if_down", "if_down:r/1", "cleared", t=T0 + 5)])
        worker = AlertDelivery(pg_dsn, poll_s=0.05)
        drain(worker, pg_dsn)
        d = deliveries(pg_dsn)
        assert d[("id-onu_offline:o/p1/1-1700000000.0", "noc-hook", "open")] == \
            ("skipped", 0, "suppressed by pon-1")
        assert d[("id-onu_low_rx:o/p1/2-1700000000.0", "noc-hook", "open")] == \
            ("skipped", 0, "cleared within the hold")
        assert d[("id-onu_low_rx:o/p1/2-1700000000.0", "noc-hook", "cleared")] == \
            ("skipped", 0, "the opening was not delivered")
        assert d[("id-if_down:r/1-1700000000.0", "noc-hook", "open")][0] == "delivered"
        assert d[("id-if_down:r/1-1700000000.0", "noc-hook", "cleared")][0] == "delivered"
        assert [(e["key"], e["state"]) for e in hook.events()] == \
            [("if_down:r/1", "open"), ("if_down:r/1", "cleared")]
        # no longer suppressed: the skipped opening is armed again and delivered
        with psycopg.connect(pg_dsn) as conn:
            write_faults(conn, [change("onu_offline", "onu_offline:o/p1/1", t=T0 + 9,
                                       onus=onu)])
        drain(worker, pg_dsn)
        worker.stop()
        assert deliveries(pg_dsn)[("id-onu_offline:o/p1/1-1700000000.0", "noc-hook",
                                   "open")][:2] == ("delivered", 1)
        assert hook.events()[-1]["key"] == "onu_offline:o/p1/1"
    finally:
        hook.close()
