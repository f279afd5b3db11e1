"""How an Alertmanager alert maps onto an ispstream alert (the receiver's pure part)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from portal_api.routers.alertmanager import (
    AlertmanagerAlert,
    am_alert_id,
    router,
    severity_of,
    to_event,
)

NOW = datetime(2024, 3, 15, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("label, expect", [
    ("critical", "critical"), ("Critical", "critical"), ("page", "critical"),
    ("error", "major"), ("high", "major"), ("major", "major"), ("minor", "minor"),
    ("warning", "warning"), ("warn", "warning"), ("info", "info"), ("none", "info"),
    ("", "warning"), ("whatever", "warning"), (None, "warning"),
])
def test_severity(label, expect):
    assert severity_of({} if label is None else {"severity": label}) == expect


def am(status="firing", ends="0001-01-01T00:00:00Z", **annotations) -> AlertmanagerAlert:
    return AlertmanagerAlert.model_validate({
        "status": status, "fingerprint": "c0ffee", "startsAt": "2024-03-15T11:00:00+01:00",
        "endsAt": ends, "labels": {"alertname": "DiskFull", "instance": "db-1:9100",
                                   "severity": "major"}, "annotations": annotations})


def test_firing_alert():
    ev = to_event("acme", am(summary="disk 95 %", description="long"), NOW)
    assert (ev.key, ev.kind, ev.severity, ev.state, ev.device_id, ev.object) == \
        ("am:c0ffee", "alertmanager", "major", "open", "db-1:9100", "DiskFull")
    assert (ev.title, ev.explanation) == ("DiskFull: disk 95 %", "long")
    assert ev.opened_at == datetime(2024, 3, 15, 10, 0, tzinfo=timezone.utc).timestamp()
    assert ev.changed_at == NOW.timestamp()
    assert ev.alert_id == am_alert_id("acme", "am:c0ffee",
                                      datetime(2024, 3, 15, 10, tzinfo=timezone.utc))


def test_resolved_alert_and_fallback_texts():
    ev = to_event("acme", am("resolved", ends="2024-03-15T10:30:00Z"), NOW)
    assert (ev.state, ev.changed_at, ev.title) == \
        ("cleared", datetime(2024, 3, 15, 10, 30, tzinfo=timezone.utc).timestamp(), "DiskFull")
    assert ev.explanation == "alertname=DiskFull, instance=db-1:9100, severity=major"


def test_episode_ids():
    t = datetime(2024, 3, 15, 10, tzinfo=timezone.utc)
    assert am_alert_id("acme", "am:x", t) == am_alert_id("acme", "am:x", t)
    assert am_alert_id("acme", "am:x", t) != am_alert_id("beta", "am:x", t)
    assert am_alert_id("acme", "am:x", t) != am_alert_id(
        "acme", "am:x", datetime(2024, 3, 15, 10, 0, 1, tzinfo=timezone.utc))


def test_route():
    assert [(r.path, sorted(r.methods)) for r in router.routes] == \
        [("/v1/alertmanager/webhook", ["POST"])]
