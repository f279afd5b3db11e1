"""Applying inventory files to a real PostgreSQL: exact values, idempotence, all or nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from ispstream.inventory import InventoryError, apply_file
from pipelines.catalog import Catalog
from rating.policies import QuotaPolicy

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"

SMALL = """\
tenants:
  - id: acme
    timezone: Europe/Berlin
    currency: EUR
    plans:
      - id: fiber-500
        monthly_fee: "39.00"
        quota_gb: 500
        quota_counts: total
        after_quota: {overage_per_gb: "1.50"}
        off_peak: [{from: "00:00", to: "06:00", rate: "0"}, {from: "22:00", to: "02:00", rate: "0.5"}]
      - id: lte-half
        monthly_fee: 9.99
        quota_gb: 0.5
        quota_counts: download
        after_quota: {throttle: "2M/2M"}
      - id: unlimited
        monthly_fee: "59"
    nas:
      - ip: 192.0.2.1
        name: bng-1
        secret: s1
        vendor: mikrotik
        coa_port: 3799
        require_message_authenticator: true
      - ip: 2001:db8::10
        secret: s2
    subscribers:
      - {username: alice, plan: fiber-500, cycle_anchor_day: 15}
      - {username: bob, plan: lte-half}
      - {username: carol, plan: unlimited, cycle_anchor_day: 31}
"""

TABLES = {
    "tenants": "id",
    "plans": "tenant_id, id",
    "nas": "tenant_id, id",
    "subscribers": "tenant_id, username",
}


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def snapshot(dsn: str) -> dict:
    """Every inventory row with its row version (xmin) and updated_at."""
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT xmin::text, * FROM {t} ORDER BY {order}").fetchall()
                for t, order in TABLES.items()}


def audit_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT tenant_id, action, target, detail FROM audit_log "
                            "ORDER BY id").fetchall()


def test_apply_stores_exact_values(pg_dsn, tmp_path):
    summary = apply_file(pg_dsn, write(tmp_path, SMALL))
    assert summary == ("tenants: 1, plans: 3, nas: 2, subscribers: 3 "
                       "(upserted: 9 created, 0 updated, 0 unchanged)")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id, timezone, currency FROM tenants").fetchall() == [
            ("acme", "Europe/Berlin", "EUR")]
        plans = conn.execute(
            "SELECT id, monthly_fee, quota_bytes, quota_counts, overage_per_gb, "
            "throttle_rate, off_peak FROM plans ORDER BY id").fetchall()
        assert plans == [
            ("fiber-500", Decimal("39.00"), 500_000_000_000, "total", Decimal("1.50"), None,
             [{"from": "00:00", "to": "06:00", "rate": "0"},
              {"from": "22:00", "to": "02:00", "rate": "0.5"}]),
            ("lte-half", Decimal("9.99"), 500_000_000, "download", None, "2M/2M", []),
            ("unlimited", Decimal("59"), None, "total", None, None, []),
        ]
        # the fair-use plan throttles at 100 % (implicit policy); no rate limits given
        assert conn.execute("SELECT id, quota_policies, rate_limit FROM plans "
                            "ORDER BY id").fetchall() == [
            ("fiber-500", [], None),
            ("lte-half", [{"at": 100, "action": "throttle", "rate": "2M/2M"}], None),
            ("unlimited", [], None),
        ]
        nas = conn.execute(
            "SELECT id, host(ip), secret, vendor, coa_port, require_message_authenticator "
            "FROM nas ORDER BY id").fetchall()
        assert nas == [("2001:db8::10", "2001:db8::10", "s2", "generic", 3799, False),
                       ("bng-1", "192.0.2.1", "s1", "mikrotik", 3799, True)]
        subs = conn.execute("SELECT username, plan_id, cycle_anchor_day FROM subscribers "
                            "ORDER BY username").fetchall()
        assert subs == [("alice", "fiber-500", 15), ("bob", "lte-half", 1),
                        ("carol", "unlimited", 31)]
    ((tenant, action, target, detail),) = audit_rows(pg_dsn)
    assert (tenant, action, target) == ("acme", "inventory.apply", "inventory.yaml")
    assert detail["subscribers"] == {"created": 3, "updated": 0, "unchanged": 0}


POLICIES = SMALL.replace(
    '        off_peak: [{from: "00:00", to: "06:00", rate: "0"}, '
    '{from: "22:00", to: "02:00", rate: "0.5"}]\n',
    '        off_peak: [{from: "00:00", to: "06:00", rate: "0"}, '
    '{from: "22:00", to: "02:00", rate: "0.5"}]\n'
    '        rate_limit: "500M/500M"\n'
    "        quota_policies:\n"
    "          - {at: 120, action: suspend}\n"
    "          - {at: 80, action: notify}\n"
    '          - {at: 100, action: throttle, rate: "2M/2M"}\n'
).replace('        monthly_fee: "59"\n', '        monthly_fee: "59"\n        rate_limit: 1G/1G\n')


def plan_policies(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, quota_policies, rate_limit FROM plans "
                            "ORDER BY id").fetchall()


def test_apply_stores_quota_policies_and_rate_limits(pg_dsn, tmp_path):
    assert POLICIES.count("rate_limit") == 2
    apply_file(pg_dsn, write(tmp_path, POLICIES))
    assert plan_policies(pg_dsn) == [
        ("fiber-500", [{"at": 80, "action": "notify"},
                       {"at": 100, "action": "throttle", "rate": "2M/2M"},
                       {"at": 120, "action": "suspend"}], "500M/500M"),
        ("lte-half", [{"at": 100, "action": "throttle", "rate": "2M/2M"}], None),
        ("unlimited", [], "1G/1G"),
    ]
    # The usage flow's view of the same rows.
    catalog = Catalog(pg_dsn)
    catalog.refresh(full=True)
    fiber = catalog.tariff("acme", "alice").plan
    assert fiber.quota_policies == (QuotaPolicy(80, "notify"),
                                    QuotaPolicy(100, "throttle", "2M/2M"),
                                    QuotaPolicy(120, "suspend"))
    assert fiber.rate_limit == "500M/500M"
    assert [t.bytes for t in fiber.thresholds] == [400 * 10**9, 500 * 10**9, 600 * 10**9]
    assert catalog.tariff("acme", "bob").plan.quota_policies == (
        QuotaPolicy(100, "throttle", "2M/2M"),)
    assert catalog.tariff("acme", "carol").plan.rate_limit == "1G/1G"

    # Reordering the file's policies changes nothing; changing one updates that plan.
    before = snapshot(pg_dsn)
    reordered = POLICIES.replace("          - {at: 120, action: suspend}\n", "").replace(
        '          - {at: 100, action: throttle, rate: "2M/2M"}\n',
        '          - {at: 100, action: throttle, rate: "2M/2M"}\n'
        "          - {at: 120, action: suspend}\n")
    assert reordered != POLICIES
    assert apply_file(pg_dsn, write(tmp_path, reordered)).endswith(
        "(upserted: 0 created, 0 updated, 9 unchanged)")
    assert snapshot(pg_dsn) == before
    changed = POLICIES.replace('{at: 100, action: throttle, rate: "2M/2M"}',
                               '{at: 100, action: throttle, rate: "4M/4M"}')
    assert apply_file(pg_dsn, write(tmp_path, changed)).endswith(
        "(upserted: 0 created, 1 updated, 8 unchanged)")
    assert plan_policies(pg_dsn)[0][1][1] == {"at": 100, "action": "throttle",
                                              "rate": "4M/4M"}


def test_invalid_policy_applies_nothing(pg_dsn, tmp_path):
    bad = POLICIES.replace("{at: 80, action: notify}", "{at: 100, action: notify}")
    with pytest.raises(InventoryError) as info:
        apply_file(pg_dsn, write(tmp_path, bad))
    assert info.value.errors == [
        "tenants[0].plans[0].quota_policies[2].at (line 16): duplicate threshold 100% "
        "(first at line 15)"]
    assert snapshot(pg_dsn) == {t: [] for t in TABLES}


def test_second_apply_changes_nothing(pg_dsn, tmp_path):
    path = write(tmp_path, SMALL)
    apply_file(pg_dsn, path)
    before = snapshot(pg_dsn)
    summary = apply_file(pg_dsn, path)
    assert summary.endswith("(upserted: 0 created, 0 updated, 9 unchanged)")
    assert snapshot(pg_dsn) == before  # same values, same updated_at, same row versions
    second = audit_rows(pg_dsn)[-1]
    assert second[3]["plans"] == {"created": 0, "updated": 0, "unchanged": 3}


def test_only_changed_rows_are_updated(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, SMALL))
    before = snapshot(pg_dsn)
    changed = SMALL.replace('monthly_fee: "59"', 'monthly_fee: "64.50"').replace(
        "{username: bob, plan: lte-half}", "{username: bob, plan: unlimited}")
    summary = apply_file(pg_dsn, write(tmp_path, changed))
    assert summary.endswith("(upserted: 0 created, 2 updated, 7 unchanged)")
    after = snapshot(pg_dsn)
    assert after["tenants"] == before["tenants"] and after["nas"] == before["nas"]
    moved = {row[2] for old, row in zip(before["plans"], after["plans"]) if old != row}
    assert moved == {"unlimited"}
    moved = {row[2] for old, row in zip(before["subscribers"], after["subscribers"])
             if old != row}
    assert moved == {"bob"}
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT monthly_fee FROM plans WHERE id = 'unlimited'"
                            ).fetchone() == (Decimal("64.50"),)


def test_absent_items_are_kept(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, SMALL))
    fewer = SMALL.replace("      - {username: carol, plan: unlimited, cycle_anchor_day: 31}\n",
                          "")
    apply_file(pg_dsn, write(tmp_path, fewer))
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM subscribers").fetchone() == (3,)


def test_example_inventory_applies(pg_dsn):
    summary = apply_file(pg_dsn, EXAMPLE)
    assert summary.startswith("tenants: 1, plans: 3, nas: 1, subscribers: 300, devices: 2, "
                              "onu_links: 2 (upserted")
    assert apply_file(pg_dsn, EXAMPLE).endswith("0 created, 0 updated, 309 unchanged)")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT host(ip), secret FROM nas WHERE tenant_id = 'demo'"
                            ).fetchall() == [("127.0.0.1", "demo-secret")]
        counts = conn.execute("SELECT plan_id, count(*) FROM subscribers "
                              "GROUP BY plan_id").fetchall()
        assert sorted(n for _, n in counts) == [100, 100, 100]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("quota_counts: download", "quota_counts: downlink",
         "tenants[1].plans[1].quota_counts (line 45): Input should be 'download', 'upload' "
         "or 'total'"),
        ("{username: bob, plan: lte-half}", "{username: bob, plan: lte}",
         "tenants[1].subscribers[1].plan (line 60): unknown plan 'lte' (not a plan of "
         "tenant 'acme' in this file)"),
        ("      - ip: 2001:db8::10\n", "      - ip: 192.0.2.1\n",
         "tenants[1].nas[1].ip (line 56): duplicate NAS address 192.0.2.1 (first at line 50)"),
        ("timezone: Europe/Berlin", "timezone: Europe/Berlim",
         "tenants[1].timezone (line 33): 'Europe/Berlim' is not an IANA time zone "
         "(e.g. Europe/Berlin)"),
        ('monthly_fee: "59"', 'monthly_fee: "59',
         "YAML syntax error (line 62, column 1): found unexpected end of stream "
         "(while scanning a quoted scalar at line 48, column 22)"),
    ],
)
def test_invalid_file_applies_nothing(pg_dsn, tmp_path, old, new, expected):
    # The first tenant (lines 2-31) is fine; the second (from line 32) has the problem:
    # still nothing at all is applied.
    first = SMALL.replace("id: acme", "id: first").replace("192.0.2.1", "198.51.100.1") \
        .replace("2001:db8::10", "2001:db8::99")
    text = first + SMALL.replace("tenants:\n", "").replace(old, new)
    before = snapshot(pg_dsn)
    with pytest.raises(InventoryError) as info:
        apply_file(pg_dsn, write(tmp_path, text))
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors
    assert snapshot(pg_dsn) == before
    assert audit_rows(pg_dsn) == []


def test_address_of_another_tenants_nas_is_rejected_with_line(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, SMALL))
    other = """\
tenants:
  - id: other
    timezone: UTC
    currency: USD
    nas:
      - ip: 192.0.2.1
        secret: x
"""
    before = snapshot(pg_dsn)
    with pytest.raises(InventoryError) as info:
        apply_file(pg_dsn, write(tmp_path, other, "other.yaml"))
    assert info.value.errors == [
        "tenants[0].nas[0].ip (line 6): address 192.0.2.1 is already used by NAS 'bng-1' "
        "of tenant 'acme' (NAS are never renamed or moved by apply)"]
    assert snapshot(pg_dsn) == before


def test_unreadable_file(pg_dsn, tmp_path):
    with pytest.raises(InventoryError, match="cannot read the file"):
        apply_file(pg_dsn, tmp_path / "missing.yaml")


def test_cli_reports_errors_and_exit_code(pg_dsn, tmp_path):
    bad = write(tmp_path, SMALL.replace("cycle_anchor_day: 31", "cycle_anchor_day: 40"))
    good = write(tmp_path, SMALL, "good.yaml")
    env = {**os.environ, "ISPSTREAM_DATABASE_URL": pg_dsn}

    def run(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ispstream.cli", "inventory", "apply",
                               str(path)], env=env, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)

    res = run(bad)
    assert res.returncode == 2, res.stderr
    assert ("tenants[0].subscribers[2].cycle_anchor_day (line 31): Input should be less "
            "than or equal to 31") in res.stderr
    res = run(good)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ("tenants: 1, plans: 3, nas: 2, subscribers: 3 "
                                  "(upserted: 9 created, 0 updated, 0 unchanged)")
    assert audit_rows(pg_dsn)[-1][3]["tenants"] == {"created": 1, "updated": 0,
                                                     "unchanged": 0}


# --- monitored devices and ONU links ---------------------------------------------------

COMMUNITY = "c0mmunity-secret"
AUTH_KEY = "auth-secret-1"
PRIV_KEY = "priv-secret-1"
SECRETS = (COMMUNITY, AUTH_KEY, PRIV_KEY)

DEVICES = SMALL.replace(
    "      - {username: alice, plan: fiber-500, cycle_anchor_day: 15}\n",
    "      - {username: alice, plan: fiber-500, cycle_anchor_day: 15,\n"
    "         onu: {olt: olt-1, serial: HWTC1A2B3C4D}}\n",
).replace(
    "      - {username: bob, plan: lte-half}\n",
    '      - {username: bob, plan: lte-half, onu: {olt: olt-1, pon: "0/1/15", onu_id: 7}}\n',
) + f"""\
    devices:
      - id: core-1
        kind: router
        address: 192.0.2.10
        snmp: {{version: 2c, community: "{COMMUNITY}"}}
      - id: olt-1
        kind: olt
        address: 2001:db8::20
        port: 1161
        vendor_profile: huawei-ma5800
        intervals: {{interfaces: 30, optical: 120}}
        max_inflight: 1
        timeout_s: 1.5
        retries: 2
        snmp:
          version: "3"
          user: monitor
          auth_protocol: SHA256
          auth_key: "{AUTH_KEY}"
          priv_protocol: AES256
          priv_key: "{PRIV_KEY}"
          engine_id: "80001f8880c71100000000"
"""

DEVICE_TABLES = {"devices": "tenant_id, id", "onu_links": "tenant_id, username"}


def device_snapshot(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT xmin::text, * FROM {t} ORDER BY {order}").fetchall()
                for t, order in DEVICE_TABLES.items()}


def onu_links(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT username, olt_id, serial, pon, onu_id FROM onu_links "
                            "ORDER BY username").fetchall()


def test_devices_and_onu_links_are_stored_exactly(pg_dsn, tmp_path, caplog):
    caplog.set_level("DEBUG")
    summary = apply_file(pg_dsn, write(tmp_path, DEVICES))
    assert summary == ("tenants: 1, plans: 3, nas: 2, subscribers: 3, devices: 2, "
                       "onu_links: 2 (upserted: 13 created, 0 updated, 0 unchanged)")
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT id, kind, host(address), snmp_port, snmp_version, community, v3_user, "
            "v3_auth_protocol, v3_auth_key, v3_priv_protocol, v3_priv_key, v3_engine_id, "
            "vendor_profile, interval_if_s, interval_optical_s, max_inflight, timeout_s, "
            "retries FROM devices ORDER BY id").fetchall()
    assert rows == [
        ("core-1", "router", "192.0.2.10", 161, "2c", COMMUNITY, None, None, None, None, None,
         None, None, 60, 300, 2, 2.0, 1),
        ("olt-1", "olt", "2001:db8::20", 1161, "3", None, "monitor", "SHA256", AUTH_KEY,
         "AES256", PRIV_KEY, "80001f8880c71100000000", "huawei-ma5800", 30, 120, 1, 1.5, 2),
    ]
    assert onu_links(pg_dsn) == [("alice", "olt-1", "HWTC1A2B3C4D", None, None),
                                 ("bob", "olt-1", None, "0/1/15", "7")]
    detail = audit_rows(pg_dsn)[-1][3]
    assert detail["devices"] == {"created": 2, "updated": 0, "unchanged": 0}
    assert detail["onu_links"] == {"created": 2, "updated": 0, "unchanged": 0}
    logged = caplog.text + summary + str(detail)
    assert not any(secret in logged for secret in SECRETS)

    # idempotent: nothing changes on a second apply
    before = device_snapshot(pg_dsn)
    assert apply_file(pg_dsn, write(tmp_path, DEVICES)).endswith(
        "(upserted: 0 created, 0 updated, 13 unchanged)")
    assert device_snapshot(pg_dsn) == before


def test_changed_keys_update_one_device_and_onus_move_between_subscribers(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, DEVICES))
    before = device_snapshot(pg_dsn)
    # a new key for the OLT; alice and bob swap ONUs (a house move inside one file)
    changed = DEVICES.replace(f'priv_key: "{PRIV_KEY}"', 'priv_key: "rotated-priv-2"') \
        .replace("onu: {olt: olt-1, serial: HWTC1A2B3C4D}", "onu: {olt: olt-1, serial: X}") \
        .replace('onu: {olt: olt-1, pon: "0/1/15", onu_id: 7}',
                 "onu: {olt: olt-1, serial: HWTC1A2B3C4D}") \
        .replace("onu: {olt: olt-1, serial: X}", 'onu: {olt: olt-1, pon: "0/1/15", onu_id: 7}')
    summary = apply_file(pg_dsn, write(tmp_path, changed))
    assert summary.endswith("(upserted: 0 created, 3 updated, 10 unchanged)")
    after = device_snapshot(pg_dsn)
    assert after["devices"][0] == before["devices"][0]  # core-1 untouched
    assert after["devices"][1] != before["devices"][1]
    assert onu_links(pg_dsn) == [("alice", "olt-1", None, "0/1/15", "7"),
                                 ("bob", "olt-1", "HWTC1A2B3C4D", None, None)]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT v3_priv_key FROM devices WHERE id = 'olt-1'"
                            ).fetchone() == ("rotated-priv-2",)


def test_device_address_of_another_tenant_is_rejected_without_secrets(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, DEVICES))
    other = f"""\
tenants:
  - id: other
    timezone: UTC
    currency: USD
    devices:
      - id: edge
        kind: switch
        address: 192.0.2.10
        snmp: {{version: 2c, community: "{COMMUNITY}"}}
"""
    before = device_snapshot(pg_dsn)
    with pytest.raises(InventoryError) as info:
        apply_file(pg_dsn, write(tmp_path, other, "other.yaml"))
    assert info.value.errors == [
        "tenants[0].devices[0].address (line 8): address 192.0.2.10 is already used by "
        "device 'core-1' of tenant 'acme' (devices are never renamed or moved by apply)"]
    assert not any(secret in str(info.value) for secret in SECRETS)
    assert device_snapshot(pg_dsn) == before


def test_an_onu_linked_to_a_subscriber_outside_the_file_is_rejected(pg_dsn, tmp_path):
    apply_file(pg_dsn, write(tmp_path, DEVICES))
    # carol takes alice's ONU, but this file says nothing about alice's link
    carol = DEVICES.replace("onu: {olt: olt-1, serial: HWTC1A2B3C4D}", "cycle_anchor_day: 15") \
        .replace("cycle_anchor_day: 15,\n         cycle_anchor_day: 15}", "cycle_anchor_day: 15}") \
        .replace("{username: carol, plan: unlimited, cycle_anchor_day: 31}",
                 "{username: carol, plan: unlimited, cycle_anchor_day: 31, "
                 "onu: {olt: olt-1, serial: HWTC1A2B3C4D}}")
    before = device_snapshot(pg_dsn)
    with pytest.raises(InventoryError) as info:
        apply_file(pg_dsn, write(tmp_path, carol))
    (error,) = info.value.errors
    assert error.startswith("tenants[0].subscribers[2].onu.serial (line ")
    assert error.endswith("ONU serial 'HWTC1A2B3C4D' on OLT 'olt-1' is already linked to "
                          "subscriber 'alice'")
    assert device_snapshot(pg_dsn) == before


def test_cli_errors_for_bad_devices_name_the_field_never_the_key(pg_dsn, tmp_path):
    env = {**os.environ, "ISPSTREAM_DATABASE_URL": pg_dsn}

    def run(text: str) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-m", "ispstream.cli", "inventory", "apply",
                              str(write(tmp_path, text))], env=env, capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert not any(secret in res.stderr + res.stdout for secret in (*SECRETS, "short!"))
        return res

    res = run(DEVICES.replace(f'priv_key: "{PRIV_KEY}"', 'priv_key: "short!"'))
    assert ("tenants[0].devices[1].snmp.priv_key (line 53): String should have at least 8 "
            "characters") in res.stderr
    res = run(DEVICES.replace("vendor_profile: huawei-ma5800", "vendor_profile: acme-olt"))
    assert ("tenants[0].devices[1].vendor_profile (line 42): unknown vendor profile "
            "'acme-olt' (known: ") in res.stderr
    res = run(DEVICES.replace(f'community: "{COMMUNITY}"', "user: monitor"))
    assert ("tenants[0].devices[0].snmp (line 37): version 2c needs a community"
            in res.stderr)
    assert snapshot(pg_dsn) == {t: [] for t in TABLES}


def test_catalog_refreshes_until_stopped(pg_dsn):
    catalog = Catalog(pg_dsn, refresh_s=0.05)
    catalog.start()
    thread = catalog._thread
    assert thread is not None and thread.is_alive()
    catalog.stop()
    assert not thread.is_alive()
