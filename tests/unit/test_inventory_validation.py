"""Inventory validation without a database: every problem names its field path and line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ispstream.inventory import InventoryError, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inventory.yaml"

# Line numbers below refer to this document (line 1 is "tenants:").
BASE = """\
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
        off_peak: [{from: "00:00", to: "06:00", rate: "0"}]
      - id: lte
        monthly_fee: 19.90
        quota_gb: 0.5
        quota_counts: download
        after_quota: {throttle: "2M/2M"}
    nas:
      - ip: 192.0.2.1
        name: bng-1
        secret: "s3cret"
        vendor: mikrotik
        coa_port: 3799
        require_message_authenticator: true
    subscribers:
      - username: alice
        plan: fiber-500
        cycle_anchor_day: 1
      - username: bob
        plan: lte
        cycle_anchor_day: 31
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse(text, "inv.yaml")
    assert str(info.value).startswith("inv.yaml: ")
    assert "nothing applied" in str(info.value).splitlines()[0]
    return info.value.errors


def with_line(line_no: int, new: str) -> str:
    lines = BASE.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


def test_base_document_is_valid_and_exact():
    inv = parse(BASE).inventory
    acme = inv.tenants[0]
    fiber, lte = acme.plans
    assert fiber.quota_bytes == 500 * 10**9
    assert lte.quota_bytes == 500_000_000  # 0.5 GB, exactly
    assert fiber.monthly_fee == Decimal("39.00")
    # an unquoted YAML number is read from its text: Decimal, never a float
    assert type(lte.monthly_fee) is Decimal and lte.monthly_fee == Decimal("19.90")
    assert fiber.after_quota.overage_per_gb == Decimal("1.50")
    assert lte.after_quota.throttle == "2M/2M"
    assert [w.as_json() for w in fiber.off_peak] == [{"from": "00:00", "to": "06:00",
                                                      "rate": "0"}]
    assert acme.nas[0].id == "bng-1"
    assert [s.cycle_anchor_day for s in acme.subscribers] == [1, 31]


def test_example_inventory_is_valid():
    inv = parse(EXAMPLE.read_text(), str(EXAMPLE)).inventory
    (demo,) = inv.tenants
    assert (demo.id, demo.timezone, demo.currency) == ("demo", "Europe/Berlin", "EUR")
    assert [n.ip for n in demo.nas] == ["127.0.0.1"]
    assert demo.nas[0].secret == "demo-secret"
    names = [s.username for s in demo.subscribers]
    assert names == [f"sub{i:04d}" for i in range(1, 301)]
    plans = [p.id for p in demo.plans]
    assert 2 <= len(plans) <= 3
    assert [s.plan for s in demo.subscribers[:len(plans)]] == plans  # round-robin
    assert any(p.off_peak and p.after_quota and p.after_quota.overage_per_gb
               for p in demo.plans)
    assert any(p.after_quota and p.after_quota.throttle for p in demo.plans)


def test_nas_name_defaults_to_the_address_and_ipv6_is_accepted():
    text = BASE.replace("      - ip: 192.0.2.1\n        name: bng-1\n",
                        "      - ip: 2001:DB8::1\n")
    (nas,) = parse(text).inventory.tenants[0].nas
    assert nas.ip == "2001:db8::1" and nas.id == "2001:db8::1"


def test_unquoted_times_are_not_read_as_base_60_numbers():
    text = with_line(11, '        off_peak: [{from: 22:30, to: 06:00, rate: 0.5}]')
    (w,) = parse(text).inventory.tenants[0].plans[0].off_peak
    assert w.as_json() == {"from": "22:30", "to": "06:00", "rate": "0.5"}


def test_window_may_end_at_24_00():
    text = with_line(11, '        off_peak: [{from: "18:00", to: "24:00", rate: "0.25"}]')
    (w,) = parse(text).inventory.tenants[0].plans[0].off_peak
    assert (w.from_, w.to) == ("18:00", "24:00")


@pytest.mark.parametrize(
    ("line", "new", "expected"),
    [
        (9, "        quota_counts: both",
         "tenants[0].plans[0].quota_counts (line 9): Input should be 'download', 'upload' "
         "or 'total'"),
        (3, "    timezone: Mars/Olympus",
         "tenants[0].timezone (line 3): 'Mars/Olympus' is not an IANA time zone"),
        (4, "    currency: eur", "tenants[0].currency (line 4): String should match pattern"),
        (7, '        monthly_fee: "39,00"',
         "tenants[0].plans[0].monthly_fee (line 7): '39,00' is not a decimal number"),
        (7, '        monthly_fee: "-1"',
         "tenants[0].plans[0].monthly_fee (line 7): Input should be greater than or equal to 0"),
        (14, "        quota_gb: 0.0000000001",
         "tenants[0].plans[1].quota_gb (line 14): must be a whole number of bytes"),
        (14, "        quota_gb: 1.0000000000000000000000000000001",
         "tenants[0].plans[1].quota_gb (line 14): must be a whole number of bytes"),
        (14, "        quota_gb: 10000000000",
         "tenants[0].plans[1].quota_gb (line 14): must be at most 9223372036 GB"),
        (10, '        after_quota: {overage_per_gb: "1.50", throttle: "1M/1M"}',
         "tenants[0].plans[0].after_quota (line 10): give exactly one of overage_per_gb "
         "or throttle"),
        (10, "        after_quota: {}",
         "tenants[0].plans[0].after_quota (line 10): give exactly one of"),
        (10, '        after_quota: {throttle: "fast"}',
         "tenants[0].plans[0].after_quota.throttle (line 10): must be a rate limit"),
        (10, "        # after_quota: forgotten",
         "tenants[0].plans[0] (line 6): after_quota is required when quota_gb is set"),
        (10, "        colour: blue",
         "tenants[0].plans[0].colour (line 10): Extra inputs are not permitted"),
        (11, '        off_peak: [{from: "00:00", to: "06:00", rate: "1.5"}]',
         "tenants[0].plans[0].off_peak[0].rate (line 11): Input should be less than or "
         "equal to 1"),
        (11, '        off_peak: [{from: "25:00", to: "06:00", rate: "0"}]',
         "tenants[0].plans[0].off_peak[0].from (line 11): must be a time of day"),
        (11, '        off_peak: [{from: "06:00", to: "06:00", rate: "0"}]',
         "tenants[0].plans[0].off_peak[0] (line 11): from and to must differ"),
        (11, '        off_peak: [{to: "06:00", rate: "0"}]',
         "tenants[0].plans[0].off_peak[0].from (line 11): Field required"),
        (18, "      - ip: 192.0.2.300",
         "tenants[0].nas[0].ip (line 18): '192.0.2.300' is not an IPv4 or IPv6 address"),
        (20, '        secret: ""',
         "tenants[0].nas[0].secret (line 20): String should have at least 1 character"),
        (21, "        vendor: nokia",
         "tenants[0].nas[0].vendor (line 21): Input should be 'mikrotik', 'cisco', "
         "'juniper', 'huawei' or 'generic'"),
        (22, "        coa_port: 70000",
         "tenants[0].nas[0].coa_port (line 22): Input should be less than or equal to 65535"),
        (23, '        require_message_authenticator: "yes"',
         "tenants[0].nas[0].require_message_authenticator (line 23): Input should be a "
         "valid boolean"),
        (27, "        cycle_anchor_day: 32",
         "tenants[0].subscribers[0].cycle_anchor_day (line 27): Input should be less than "
         "or equal to 31"),
        (28, "      - username: 0042",
         "tenants[0].subscribers[1].username (line 28): Input should be a valid string"),
        (29, "        plan: fiber-1000",
         "tenants[0].subscribers[1].plan (line 29): unknown plan 'fiber-1000'"),
        (28, "      - username: alice",
         "tenants[0].subscribers[1].username (line 28): duplicate username 'alice' "
         "(first at line 25)"),
        (12, "      - id: fiber-500",
         "tenants[0].plans[1].id (line 12): duplicate plan id 'fiber-500' (first at line 6)"),
    ],
)
def test_invalid_field_names_path_and_line(line, new, expected):
    errors = errors_of(with_line(line, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_after_quota_needs_a_quota():
    text = BASE.replace("        quota_gb: 500\n", "")
    assert errors_of(text) == ["tenants[0].plans[0] (line 6): after_quota needs quota_gb "
                               "(a plan without quota is unlimited)"]


def test_every_problem_is_reported_at_once():
    text = with_line(9, "        quota_counts: both").replace(
        "cycle_anchor_day: 31", "cycle_anchor_day: 0")
    errors = errors_of(text)
    assert len(errors) == 2
    assert errors[0].startswith("tenants[0].plans[0].quota_counts (line 9)")
    assert errors[1].startswith("tenants[0].subscribers[1].cycle_anchor_day (line 30)")


def test_an_address_used_twice_across_tenants_is_rejected():
    second = """\
  - id: other
    timezone: UTC
    currency: USD
    nas:
      - ip: 192.0.2.1
        secret: x
"""
    errors = errors_of(BASE + second)
    assert errors == ["tenants[1].nas[0].ip (line 35): duplicate NAS address 192.0.2.1 "
                      "(first at line 18)"]


def test_duplicate_tenant_ids_are_rejected():
    errors = errors_of(BASE + "  - id: acme\n    timezone: UTC\n    currency: USD\n")
    assert errors == ["tenants[1].id (line 31): duplicate tenant id 'acme' "
                      "(first at line 2)"]


def test_yaml_syntax_error_has_its_line():
    errors = errors_of(with_line(13, '        monthly_fee: "19.90'))
    assert len(errors) == 1 and errors[0].startswith("YAML syntax error (line ")


def test_duplicate_yaml_keys_are_rejected():
    errors = errors_of(with_line(16, "        quota_gb: 1"))
    assert errors == ["YAML error (line 16, column 9): duplicate key 'quota_gb' "
                      "(first at line 14)"]


def test_floats_that_are_not_numbers_are_rejected():
    errors = errors_of(with_line(7, "        monthly_fee: .inf"))
    assert errors[0].startswith("tenants[0].plans[0].monthly_fee (line 7): ")


def test_empty_and_non_mapping_documents():
    assert errors_of("") == ["(file): the file is empty; expected 'tenants:'"]
    assert errors_of("- 1\n") == ["(file) (line 1): Input should be a valid dictionary or "
                                  "instance of Inventory"]
    assert errors_of("tenant: []\n") == [
        "tenants (line 1): Field required",
        "tenant (line 1): Extra inputs are not permitted",
    ]


# --- quota policies and rate limits ---------------------------------------------------------

# BASE with the first plan's normal rate and policies (lines 12-16); lte follows at line 17.
POLICIES = with_line(11, """\
        off_peak: [{from: "00:00", to: "06:00", rate: "0"}]
        rate_limit: "100M/100M"
        quota_policies:
          - {at: 80, action: notify}
          - {at: 100, action: throttle, rate: "2M/2M"}
          - {at: 120, action: suspend}""")


def policy_line(line_no: int, new: str) -> str:
    lines = POLICIES.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


def test_quota_policies_and_rate_limit():
    fiber, lte = parse(POLICIES).inventory.tenants[0].plans
    assert fiber.rate_limit == "100M/100M" and lte.rate_limit is None
    assert fiber.policies_json() == [{"at": 80, "action": "notify"},
                                     {"at": 100, "action": "throttle", "rate": "2M/2M"},
                                     {"at": 120, "action": "suspend"}]
    # after_quota: {throttle: "2M/2M"} and no policy at 100 %: the implicit throttle
    assert lte.quota_policies == []
    assert lte.policies_json() == [{"at": 100, "action": "throttle", "rate": "2M/2M"}]


def test_stored_policies_are_sorted_and_an_explicit_100_replaces_the_implicit_throttle():
    text = POLICIES.replace('        after_quota: {throttle: "2M/2M"}\n', """\
        after_quota: {throttle: "2M/2M"}
        rate_limit: 512k/1M
        quota_policies:
          - {at: 150, action: suspend}
          - {at: 100, action: notify}
""")
    fiber, lte = parse(text).inventory.tenants[0].plans
    assert lte.rate_limit == "512k/1M"
    assert lte.policies_json() == [{"at": 100, "action": "notify"},
                                   {"at": 150, "action": "suspend"}]
    text = text.replace("{at: 100, action: notify}", "{at: 90, action: notify}")
    assert parse(text).inventory.tenants[0].plans[1].policies_json() == [
        {"at": 90, "action": "notify"}, {"at": 100, "action": "throttle", "rate": "2M/2M"},
        {"at": 150, "action": "suspend"}]


@pytest.mark.parametrize(
    ("line", "new", "expected"),
    [
        (14, "          - {at: 0, action: notify}",
         "tenants[0].plans[0].quota_policies[0].at (line 14): Input should be greater than "
         "or equal to 1"),
        (14, "          - {at: 1001, action: notify}",
         "tenants[0].plans[0].quota_policies[0].at (line 14): Input should be less than or "
         "equal to 1000"),
        (14, '          - {at: "80", action: notify}',
         "tenants[0].plans[0].quota_policies[0].at (line 14): Input should be a valid "
         "integer"),
        (14, "          - {at: 80.5, action: notify}",
         "tenants[0].plans[0].quota_policies[0].at (line 14): Input should be a valid "
         "integer"),
        (14, "          - {at: 80, action: warn}",
         "tenants[0].plans[0].quota_policies[0].action (line 14): Input should be 'notify', "
         "'throttle' or 'suspend'"),
        (14, "          - {action: notify}",
         "tenants[0].plans[0].quota_policies[0].at (line 14): Field required"),
        (15, "          - {at: 100, action: throttle}",
         "tenants[0].plans[0].quota_policies[1] (line 15): a throttle needs a rate"),
        (14, '          - {at: 80, action: notify, rate: "1M/1M"}',
         "tenants[0].plans[0].quota_policies[0] (line 14): rate is only for a throttle, not "
         "for notify"),
        (16, '          - {at: 120, action: suspend, rate: "1M/1M"}',
         "tenants[0].plans[0].quota_policies[2] (line 16): rate is only for a throttle, not "
         "for suspend"),
        (15, '          - {at: 100, action: throttle, rate: "fast"}',
         "tenants[0].plans[0].quota_policies[1].rate (line 15): must be a rate limit like "
         "'2M/2M' or '512k/1M'"),
        (15, '          - {at: 100, action: throttle, rate: "2M"}',
         "tenants[0].plans[0].quota_policies[1].rate (line 15): must be a rate limit like"),
        (16, "          - {at: 120, action: suspend, colour: red}",
         "tenants[0].plans[0].quota_policies[2].colour (line 16): Extra inputs are not "
         "permitted"),
        (15, '          - {at: 80, action: throttle, rate: "1M/1M"}',
         "tenants[0].plans[0].quota_policies[1].at (line 15): duplicate threshold 80% "
         "(first at line 14)"),
        (12, '        rate_limit: "100 Mbit/s"',
         "tenants[0].plans[0].rate_limit (line 12): must be a rate limit like '2M/2M'"),
        (12, "        rate_limit: 100",
         "tenants[0].plans[0].rate_limit (line 12): Input should be a valid string"),
    ],
)
def test_invalid_policy_names_path_and_line(line, new, expected):
    errors = errors_of(policy_line(line, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_quota_policies_need_a_quota():
    text = POLICIES.replace("        quota_gb: 500\n", "").replace(
        '        after_quota: {overage_per_gb: "1.50"}\n', "")
    assert errors_of(text) == ["tenants[0].plans[0] (line 6): quota_policies need quota_gb "
                               "(a plan without quota is unlimited)"]


def test_quota_policies_must_be_a_list():
    lines = POLICIES.splitlines()
    text = "\n".join(lines[:12] + ["        quota_policies: {at: 80, action: notify}"]
                     + lines[16:]) + "\n"
    assert errors_of(text) == ["tenants[0].plans[0].quota_policies (line 13): Input should "
                               "be a valid list"]


# --- monitored devices and ONU links -------------------------------------------------------

PROFILES = frozenset({"huawei-ma5800", "zte-c300"})
COMMUNITY = "c0mmunity-secret"
AUTH_KEY = "auth-secret-1"
PRIV_KEY = "priv-secret-1"

# BASE plus ONU links on alice and bob (lines 28 and 32) and devices (from line 33).
DEVICES = BASE.replace(
    "        cycle_anchor_day: 1\n",
    "        cycle_anchor_day: 1\n        onu: {olt: olt-1, serial: HWTC1A2B3C4D}\n",
).replace(
    "        cycle_anchor_day: 31\n",
    '        cycle_anchor_day: 31\n        onu: {olt: olt-1, pon: "0/1/15", onu_id: 7}\n',
) + f"""\
    devices:
      - id: core-1
        kind: router
        address: 192.0.2.10
        snmp: {{version: 2c, community: "{COMMUNITY}"}}
      - id: olt-1
        kind: olt
        address: 192.0.2.20
        port: 1161
        vendor_profile: huawei-ma5800
        intervals: {{interfaces: 30, optical: 120}}
        max_inflight: 1
        timeout_s: 1.5
        retries: 2
        snmp:
          version: 3
          user: monitor
          auth_protocol: SHA256
          auth_key: "{AUTH_KEY}"
          priv_protocol: AES
          priv_key: "{PRIV_KEY}"
          engine_id: "0x80001F8880C71100000000"
"""


def device_line(line_no: int, new: str) -> str:
    lines = DEVICES.splitlines()
    lines[line_no - 1] = new
    return "\n".join(lines) + "\n"


def device_errors(text: str, profiles: frozenset[str] = PROFILES) -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse(text, "inv.yaml", vendor_profiles=profiles)
    message = str(info.value)
    for secret in (COMMUNITY, AUTH_KEY, PRIV_KEY):
        assert secret not in message  # never echoed
    return info.value.errors


def test_devices_and_onu_links():
    acme = parse(DEVICES, vendor_profiles=PROFILES).inventory.tenants[0]
    core, olt = acme.devices
    assert (core.kind, core.address, core.port, core.snmp.version) == (
        "router", "192.0.2.10", 161, "2c")
    assert core.snmp.community == COMMUNITY
    assert (core.intervals.interfaces, core.intervals.optical, core.max_inflight,
            core.timeout_s, core.retries, core.vendor_profile) == (60, 300, 2, 2, 1, None)
    assert (olt.port, olt.intervals.interfaces, olt.intervals.optical, olt.max_inflight,
            olt.timeout_s, olt.retries) == (1161, 30, 120, 1, Decimal("1.5"), 2)
    assert (olt.snmp.version, olt.snmp.user, olt.snmp.auth_protocol, olt.snmp.priv_protocol,
            olt.snmp.engine_id) == ("3", "monitor", "SHA256", "AES", "80001f8880c71100000000")
    assert (olt.snmp.auth_key, olt.snmp.priv_key) == (AUTH_KEY, PRIV_KEY)
    alice, bob = acme.subscribers
    assert (alice.onu.olt, alice.onu.serial, alice.onu.pon) == ("olt-1", "HWTC1A2B3C4D", None)
    assert (bob.onu.pon, bob.onu.onu_id, bob.onu.serial) == ("0/1/15", "7", None)
    # secrets stay out of every repr
    text = repr(acme)
    assert COMMUNITY not in text and AUTH_KEY not in text and PRIV_KEY not in text


def test_the_example_has_a_router_and_an_olt_with_onu_links():
    (demo,) = parse(EXAMPLE.read_text(), str(EXAMPLE)).inventory.tenants
    assert sorted(d.kind for d in demo.devices) == ["olt", "router"]
    olt = next(d for d in demo.devices if d.kind == "olt")
    assert olt.snmp.version == "3" and olt.vendor_profile
    linked = [s for s in demo.subscribers if s.onu is not None]
    assert linked and all(s.onu.olt == olt.id for s in linked)


def test_vendor_profiles_come_from_the_onu_profile_folder(tmp_path):
    from ispstream.inventory import DEFAULT_ONU_PROFILES, known_vendor_profiles

    missing = tmp_path / "profiles"
    assert known_vendor_profiles(missing) == frozenset(DEFAULT_ONU_PROFILES)
    missing.mkdir()
    (missing / "acme-olt.yaml").write_text("{}\n")
    (missing / "notes.txt").write_text("not a profile\n")
    assert known_vendor_profiles(missing) == {"acme-olt"}
    errors = device_errors(DEVICES, frozenset({"acme-olt"}))
    assert errors == ["tenants[0].devices[1].vendor_profile (line 42): unknown vendor profile "
                      "'huawei-ma5800' (known: acme-olt)"]


@pytest.mark.parametrize(
    ("line", "new", "expected"),
    [
        (42, "        vendor_profile: nokia-isam",
         "tenants[0].devices[1].vendor_profile (line 42): unknown vendor profile 'nokia-isam' "
         "(known: huawei-ma5800, zte-c300)"),
        (35, "        kind: firewall",
         "tenants[0].devices[0].kind (line 35): Input should be 'router', 'switch', 'nas' "
         "or 'olt'"),
        (36, "        address: 192.0.2.256",
         "tenants[0].devices[0].address (line 36): '192.0.2.256' is not an IPv4 or IPv6 "
         "address"),
        (40, "        address: 192.0.2.10",
         "tenants[0].devices[1].address (line 40): duplicate device address 192.0.2.10 "
         "(first at line 36)"),
        (38, "      - id: core-1",
         "tenants[0].devices[1].id (line 38): duplicate device id 'core-1' (first at line 34)"),
        (37, "        snmp: {version: 2c}",
         "tenants[0].devices[0].snmp (line 37): version 2c needs a community"),
        (37, '        snmp: {version: 2c, community: ""}',
         "tenants[0].devices[0].snmp.community (line 37): String should have at least 1 "
         "character"),
        (37, f'        snmp: {{version: 2c, community: "{COMMUNITY}", user: u}}',
         "tenants[0].devices[0].snmp (line 37): user: only for version 3"),
        (37, f'        snmp: {{version: 1, community: "{COMMUNITY}"}}',
         "tenants[0].devices[0].snmp.version (line 37): Input should be '2c' or '3'"),
        (49, "          user: monitor\n          community: x",
         "tenants[0].devices[1].snmp (line 48): community: only for version 2c"),
        (49, "          # no user",
         "tenants[0].devices[1].snmp (line 48): version 3 needs user, auth_protocol, "
         "auth_key, priv_protocol and priv_key (authPriv); missing: user"),
        (51, "          auth_key: short",
         "tenants[0].devices[1].snmp.auth_key (line 51): String should have at least 8 "
         "characters"),
        (51, "          # no auth key",
         "tenants[0].devices[1].snmp (line 48): version 3 needs user, auth_protocol, "
         "auth_key, priv_protocol and priv_key (authPriv); missing: auth_key"),
        (53, '          priv_key: "1234567"',
         "tenants[0].devices[1].snmp.priv_key (line 53): String should have at least 8 "
         "characters"),
        (53, "          priv_key: 12345678",
         "tenants[0].devices[1].snmp.priv_key (line 53): Input should be a valid string"),
        (52, "          priv_protocol: 3DES",
         "tenants[0].devices[1].snmp.priv_protocol (line 52): Input should be 'DES', 'AES', "
         "'AES192' or 'AES256'"),
        (50, "          auth_protocol: SHA1",
         "tenants[0].devices[1].snmp.auth_protocol (line 50): Input should be 'MD5', 'SHA', "
         "'SHA224', 'SHA256', 'SHA384' or 'SHA512'"),
        (54, "          engine_id: 80:00:1f",
         "tenants[0].devices[1].snmp.engine_id (line 54): must be the device's SNMP engine id "
         "in hex, 5 to 32 octets"),
        (43, "        intervals: {interfaces: 5, optical: 120}",
         "tenants[0].devices[1].intervals.interfaces (line 43): Input should be greater than "
         "or equal to 10"),
        (43, "        intervals: {interfaces: 30, optical: 20}",
         "tenants[0].devices[1].intervals.optical (line 43): Input should be greater than or "
         "equal to 30"),
        (44, "        max_inflight: 65",
         "tenants[0].devices[1].max_inflight (line 44): Input should be less than or equal "
         "to 64"),
        (44, "        max_inflight: 0",
         "tenants[0].devices[1].max_inflight (line 44): Input should be greater than or "
         "equal to 1"),
        (45, "        timeout_s: 0",
         "tenants[0].devices[1].timeout_s (line 45): Input should be greater than 0"),
        (39, "        kind: switch",
         "tenants[0].devices[1] (line 38): vendor_profile is only for OLTs (kind: olt), not "
         "for a switch"),
        (28, "        onu: {olt: core-1, serial: HWTC1A2B3C4D}",
         "tenants[0].subscribers[0].onu.olt (line 28): device 'core-1' is a router, not an "
         "OLT (kind: olt)"),
        (28, "        onu: {olt: olt-9, serial: HWTC1A2B3C4D}",
         "tenants[0].subscribers[0].onu.olt (line 28): unknown device 'olt-9' (not a device "
         "of tenant 'acme' in this file)"),
        (28, "        onu: {olt: olt-1}",
         "tenants[0].subscribers[0].onu (line 28): give the ONU's serial, or its pon and "
         "onu_id"),
        (28, '        onu: {olt: olt-1, pon: "0/1/1"}',
         "tenants[0].subscribers[0].onu (line 28): pon and onu_id go together"),
        (32, "        onu: {olt: olt-1, serial: HWTC1A2B3C4D}",
         "tenants[0].subscribers[1].onu.serial (line 32): duplicate ONU serial 'HWTC1A2B3C4D' "
         "on OLT 'olt-1' (first at line 28)"),
        (28, '        onu: {olt: olt-1, pon: "0/1/15", onu_id: "7"}',
         "tenants[0].subscribers[1].onu.onu_id (line 32): duplicate ONU '7' on PON '0/1/15' "
         "of OLT 'olt-1' (first at line 28)"),
    ],
)
def test_invalid_devices_name_path_and_line(line, new, expected):
    errors = device_errors(device_line(line, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_device_addresses_are_unique_across_tenants_and_may_equal_a_nas_address():
    second = """\
  - id: other
    timezone: UTC
    currency: USD
    devices:
      - {id: r1, kind: nas, address: 192.0.2.20, snmp: {version: 2c, community: x}}
      - {id: r2, kind: nas, address: 192.0.2.1, snmp: {version: 2c, community: x}}
"""
    errors = device_errors(DEVICES + second)
    assert errors == ["tenants[1].devices[0].address (line 59): duplicate device address "
                      "192.0.2.20 (first at line 40)"]


def test_an_onu_may_be_given_by_serial_and_position_together():
    text = device_line(28, '        onu: {olt: olt-1, serial: X1, pon: "0/1/1", onu_id: 1}')
    onu = parse(text, vendor_profiles=PROFILES).inventory.tenants[0].subscribers[0].onu
    assert (onu.serial, onu.pon, onu.onu_id) == ("X1", "0/1/1", "1")


def test_an_unquoted_engine_id_is_rejected_with_a_hint():
    errors = device_errors(device_line(54, "          engine_id: 0x80001F8880C71100000000"))
    assert errors == ["tenants[0].devices[1].snmp.engine_id (line 54): write the engine id as "
                      "quoted text, e.g. \"80001f8880...\" (YAML read it as a number)"]
