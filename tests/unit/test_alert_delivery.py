"""Alert delivery's pure pieces (pipelines.alert_delivery): signatures, backoff, the
send-time rules, the message bodies and channel configuration errors."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from pipelines.alert_delivery import (
    Claimed,
    DeliveryError,
    backoff_s,
    event_body,
    render_email,
    send_email,
    send_webhook,
    sign,
    skip_reason,
    verify,
)

EVENT = {"v": 1, "tenant_id": "acme", "alert_id": "a1", "key": "pon_down:olt-1/p1",
         "kind": "pon_down", "severity": "critical", "state": "open", "device_id": "olt-1",
         "object": "p1", "title": "PON p1 on olt-1 down (feeder fibre cut)",
         "explanation": "64 of 64 ONUs on PON p1 are down", "probable_cause":
         "feeder fibre cut", "affected_subscribers": ["alice", "bob"], "suppressed_by": None,
         "opened_at": 1_700_000_000.0, "changed_at": 1_700_000_000.0}


def test_signature_is_hmac_sha256_of_the_body():
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == f"sha256={expected}"
    assert verify(body, "s3cret", f"sha256={expected}")
    assert not verify(body + b" ", "s3cret", f"sha256={expected}")
    assert not verify(body, "other", f"sha256={expected}")
    assert not verify(body, "s3cret", None)


@pytest.mark.parametrize("attempt, base, cap, rnd, expect", [
    (1, 2.0, 300.0, 0.0, 1.0),
    (1, 2.0, 300.0, 0.999, 1.999),
    (2, 2.0, 300.0, 0.5, 3.0),
    (5, 2.0, 300.0, 1.0, 32.0),
    (10, 2.0, 300.0, 0.0, 150.0),   # capped at 300, half of it fixed
    (30, 2.0, 300.0, 1.0, 300.0),
])
def test_backoff_bounded_with_jitter(attempt, base, cap, rnd, expect):
    assert backoff_s(attempt, base, cap, rnd) == pytest.approx(expect)


def claimed(state="open", *, kind="pon_down", channel="webhook", enabled=True,
            alert_state="open", suppressed=None, open_status=None) -> Claimed:
    return Claimed("acme", "a1", "c1", state, 0, {**EVENT, "kind": kind}, channel, {},
                   enabled, alert_state, suppressed, open_status)


@pytest.mark.parametrize("c, expect", [
    (claimed(), None),
    (claimed(channel=None), "channel disabled or removed"),
    (claimed(enabled=False), "channel disabled or removed"),
    (claimed(alert_state=None), "alert no longer exists"),
    (claimed(suppressed="p1"), "suppressed by p1"),
    (claimed(kind="onu_offline", alert_state="cleared"), "cleared within the hold"),
    (claimed(kind="if_down", alert_state="cleared"), None),       # not held: announce both
    (claimed(alert_state="acknowledged"), None),
    (claimed("cleared", open_status="delivered"), None),
    (claimed("cleared", open_status="delivered", suppressed="p1"), None),
    (claimed("cleared", open_status="skipped"), "the opening was not delivered"),
    (claimed("cleared", open_status="failed"), "the opening was not delivered"),
    (claimed("cleared", open_status=None), "the opening was not delivered"),
])
def test_skip_reason(c, expect):
    assert skip_reason(c) == expect


def test_event_body_is_the_canonical_alert_event():
    shuffled = dict(reversed(list(EVENT.items())))
    body = event_body(shuffled)
    assert list(json.loads(body)) == list(EVENT)
    assert body == event_body(EVENT)


def test_email_text():
    msg = render_email({**EVENT, "state": "cleared"}, "noc@isp.example", ["a@x", "b@x"])
    assert msg["Subject"] == "[CRITICAL] CLEARED: PON p1 on olt-1 down (feeder fibre cut)"
    assert msg["To"] == "a@x, b@x" and msg["X-Ispstream-Delivery"] == "a1/cleared"
    text = msg.get_content()
    assert "Probable cause:  feeder fibre cut" in text
    assert "Subscribers:     2 (alice, bob)" in text
    assert "Opened:          2023-11-14 22:13:20 UTC" in text


@pytest.mark.parametrize("config, message", [
    ({}, r"no http\(s\) url"),
    ({"url": "ftp://x", "secret": "s"}, r"no http\(s\) url"),
    ({"url": "http://127.0.0.1:9/x"}, "no secret"),
])
def test_webhook_configuration_errors_are_permanent(config, message):
    with pytest.raises(DeliveryError, match=message) as exc:
        send_webhook(config, EVENT, "d", 1.0)
    assert exc.value.retryable is False


def test_webhook_unreachable_is_retryable():
    with pytest.raises(DeliveryError) as exc:
        send_webhook({"url": "http://127.0.0.1:9/x", "secret": "s"}, EVENT, "d", 1.0)
    assert exc.value.retryable is True


@pytest.mark.parametrize("config", [
    {"from": "a@x", "smtp": "127.0.0.1:25"},
    {"to": "a@x", "smtp": "127.0.0.1:25"},
    {"to": "a@x", "from": "a@x"},
])
def test_email_configuration_errors_are_permanent(config):
    with pytest.raises(DeliveryError, match="needs to, from and smtp host") as exc:
        send_email(config, EVENT, "d", 1.0)
    assert exc.value.retryable is False


def test_smtp_unreachable_is_retryable():
    with pytest.raises(DeliveryError) as exc:
        send_email({"to": "a@x", "from": "b@x", "smtp": {"host": "127.0.0.1", "port": 9}},
                   EVENT, "d", 1.0)
    assert exc.value.retryable is True
