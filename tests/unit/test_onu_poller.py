"""The per-OLT poll: one ``OnuOpticalPoll`` per answer, ``DeviceStatus`` on reachability
changes only, metrics counted; with a fake SNMP session instead of a device."""

from __future__ import annotations

import asyncio
import json

import pytest

from collectors.onu.poller import Metrics, OltPoller, Reachability
from collectors.onu.profile import load_profiles
from collectors.onu.snmp import SnmpError
from collectors.snmp.devices import Device
from ispstream.contracts import DeviceStatus, OnuOpticalPoll

PROFILES = load_profiles()
UFIBER = PROFILES["ubiquiti-ufiber"]
BASE = (1, 3, 6, 1, 4, 1, 41112, 1, 5, 6, 2, 1)
SERIAL = (12, 85, 66, 78, 84, 49, 50, 51, 52, 53, 54, 55, 56)   # "UBNT12345678"


def olt(**changes) -> Device:
    fields = dict(tenant_id="acme", id="olt-1", kind="olt", address="192.0.2.10", port=161,
                  version="2c", community="public", v3_user=None, v3_auth_protocol=None,
                  v3_auth_key=None, v3_priv_protocol=None, v3_priv_key=None,
                  vendor_profile="ubiquiti-ufiber", interval_optical_s=300.0, max_inflight=2,
                  timeout_s=1.0, retries=1)
    fields.update(changes)
    return Device(**fields)


class FakeSession:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.requests = 0

    async def walk_columns(self, columns):
        self.requests += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeClient:
    def __init__(self, outcomes):
        self.fake = FakeSession(outcomes)

    def session(self, target):
        return self.fake


def good_walk():
    return {BASE + (3,): [(SERIAL, 1)], BASE + (5,): [(SERIAL, 2)],
            BASE + (8,): [(SERIAL, 231)], BASE + (9,): [(SERIAL, -1899)]}


def make_poller(outcomes, unreachable_after=2):
    published = []
    metrics = Metrics()
    poller = OltPoller(olt(), UFIBER, FakeClient(outcomes),
                       lambda topic, key, value: published.append((topic, key, value)),
                       metrics, ("t.onu.optical", "t.device.status"), 0.1, unreachable_after,
                       asyncio.Semaphore(4))
    return poller, published, metrics


def run(poller, times):
    async def go():
        return [await poller.poll_once() for _ in range(times)]
    return asyncio.run(go())


def test_a_poll_publishes_one_message_keyed_tenant_olt():
    poller, published, metrics = make_poller([good_walk()])
    assert run(poller, 1) == [True]
    [(topic, key, value)] = published
    assert (topic, key) == ("t.onu.optical", "acme/olt-1")
    poll = OnuOpticalPoll.model_validate_json(value)
    assert (poll.tenant_id, poll.olt_id, poll.profile) == ("acme", "olt-1", "ubiquiti-ufiber")
    [onu] = poll.onus
    assert (onu.pon, onu.onu_id, onu.online, onu.onu_rx_dbm, onu.onu_tx_dbm) == (
        "pon2", "UBNT12345678", True, -18.99, 2.31)
    assert "olt_rx_dbm" not in json.loads(value)["onus"][0]     # None fields left out
    assert metrics.polls == {("ubiquiti-ufiber", "ok"): 1}
    assert metrics.onus == {"ubiquiti-ufiber": 1}


def test_unreachable_after_n_timeouts_then_recovered_once():
    timeout = SnmpError("timeout")
    poller, published, metrics = make_poller([timeout, timeout, timeout, good_walk(),
                                              good_walk()])
    assert run(poller, 5) == [False, False, False, True, True]
    statuses = [DeviceStatus.model_validate_json(v) for t, _, v in published
                if t == "t.device.status"]
    assert [(s.reachable, s.consecutive_failures) for s in statuses] == [(False, 2), (True, 0)]
    assert statuses[0].reason == "onu optics poll: timeout"
    assert statuses[1].reason == "onu optics poll: recovered"
    assert sum(t == "t.onu.optical" for t, _, _ in published) == 2
    assert metrics.errors == {"timeout": 3} and metrics.unreachable == 0
    assert metrics.polls == {("ubiquiti-ufiber", "failed"): 3, ("ubiquiti-ufiber", "ok"): 2}


def test_an_error_answer_is_a_failed_poll_but_not_unreachable():
    error = SnmpError("agent error: genErr", kind="error-status", status=5)
    poller, published, metrics = make_poller([error, error, error], unreachable_after=1)
    assert run(poller, 3) == [False, False, False]
    assert published == [] and metrics.errors == {"error-status": 3}


def test_reachability_counts_consecutive_failures_only():
    r = Reachability(3)
    assert [r.failure("timeout"), r.failure("timeout"), r.success()] == [None, None, None]
    assert [r.failure("auth"), r.failure("auth")] == [None, None]
    assert r.failure("auth") == (False, "auth", 3)
    assert r.failure("auth") is None                 # announced once
    assert r.success() == (True, "recovered", 0)
    assert r.success() is None


def test_schedule_retries_a_failed_poll_no_sooner_than_a_minute(monkeypatch):
    """The run loop with a fake clock: first poll inside the first interval, failures
    retried after min(interval, 60 s), successes every interval (jittered)."""
    import collectors.onu.poller as poller_mod

    timeout = SnmpError("timeout")
    poller, published, _ = make_poller([timeout, timeout, good_walk(), good_walk()])
    poller.jitter = 0.0
    times = []

    class Clock:
        now = 0.0

    async def fake_sleep(seconds):
        Clock.now += seconds
        if len(times) >= 4:
            raise asyncio.CancelledError

    original = poller.poll_once

    async def recorded():
        times.append(round(Clock.now, 3))
        return await original()

    poller.poll_once = recorded
    monkeypatch.setattr(poller_mod.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(poller_mod.random, "uniform", lambda a, b: (a + b) / 2)

    async def go():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "time", lambda: Clock.now)
        with pytest.raises(asyncio.CancelledError):
            await poller.run()

    asyncio.run(go())
    assert times == [150.0, 210.0, 270.0, 570.0]


def test_main_refuses_to_start_with_a_bad_profile(monkeypatch, caplog):
    import collectors.onu as onu
    from collectors.onu.profile import ProfileError

    def broken():
        raise ProfileError("broken.yaml: reading.onu_id is required")

    monkeypatch.setattr(onu, "load_profiles", broken)
    assert onu.main(settings=None) == 2
    assert "invalid ONU vendor profile: broken.yaml: reading.onu_id is required" in caplog.text
