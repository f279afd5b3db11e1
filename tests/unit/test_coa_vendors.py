"""Vendor profiles: the request each operation becomes, per vendor (rate parsing is
in test_rates.py)."""

from __future__ import annotations

import pytest

from collectors.radius.coa import AttributeEncoder
from collectors.radius.dictionary import load as load_dictionary
from collectors.radius.vendors import (
    ProfileError,
    Session,
    load_profiles,
    parse_profiles,
    request_for,
)

DICT = load_dictionary()
PROFILES = load_profiles(dictionary=DICT)
S = Session(nas_ip="10.0.0.1", session_id="s-1", username="alice", framed_ip="100.64.0.7")
S_NO_IP = Session(nas_ip="10.0.0.1", session_id="s-1", username="alice")


# (vendor, op, kwargs) -> (request type, attributes)
CASES = [
    ("mikrotik", "throttle", {"rate": "2M/2M"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7"), ("Mikrotik-Rate-Limit", "2M/2M")]),
    ("mikrotik", "resume", {"plan_rate": "100M/100M", "prev_state": "throttled"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7"), ("Mikrotik-Rate-Limit", "100M/100M")]),
    ("mikrotik", "resume", {"prev_state": "throttled"}, "disconnect", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7")]),
    ("mikrotik", "suspend", {}, "disconnect", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7")]),
    ("cisco", "throttle", {"rate": "512k/1M"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("Acct-Session-Id", "s-1"), ("User-Name", "alice"),
        ("Cisco-AVPair", "subscriber:command=activate-service"),
        ("Cisco-AVPair", "subscriber:service-name=rate-512k_1M")]),
    ("cisco", "disconnect", {}, "disconnect", [
        ("NAS-IP-Address", "10.0.0.1"), ("Acct-Session-Id", "s-1"), ("User-Name", "alice")]),
    ("juniper", "throttle", {"rate": "512k/1M"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("Acct-Session-Id", "s-1"), ("User-Name", "alice"),
        ("ERX-Ingress-Policy-Name", "police-512k"), ("ERX-Egress-Policy-Name", "police-1000k")]),
    ("huawei", "throttle", {"rate": "512k/1M"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7"), ("Huawei-Input-Average-Rate", "512000"),
        ("Huawei-Output-Average-Rate", "1000000")]),
    ("generic", "throttle", {"rate": "2M/2M"}, "coa", [
        ("NAS-IP-Address", "10.0.0.1"), ("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
        ("Framed-IP-Address", "100.64.0.7"), ("Filter-Id", "rate-2M_2M")]),
]


@pytest.mark.parametrize("vendor, op, kw, request_type, attrs", CASES)
def test_request_per_vendor(vendor, op, kw, request_type, attrs):
    req = request_for(PROFILES[vendor], op, S, **kw)
    assert req.request == request_type
    assert list(req.attributes) == attrs
    AttributeEncoder(DICT).encode_all(req.attributes)  # every attribute encodes


def test_unknown_framed_ip_is_left_out():
    req = request_for(PROFILES["huawei"], "disconnect", S_NO_IP)
    assert [a for a, _ in req.attributes] == ["NAS-IP-Address", "User-Name", "Acct-Session-Id"]


def test_walled_garden_suspend_and_its_resume():
    data = {v: {"identify": ["Acct-Session-Id"], "suspend": "disconnect"} for v in
            ("generic", "cisco", "juniper", "huawei")}
    data["mikrotik"] = {"identify": ["User-Name", "Acct-Session-Id"],
                        "rate": {"Mikrotik-Rate-Limit": "{rate}"}, "suspend": "walled_garden",
                        "walled_garden_attributes": {"Mikrotik-Address-List": "suspended"}}
    mk = parse_profiles(data)["mikrotik"]
    req = request_for(mk, "suspend", S)
    assert req.request == "coa"
    assert list(req.attributes) == [("User-Name", "alice"), ("Acct-Session-Id", "s-1"),
                                    ("Mikrotik-Address-List", "suspended")]
    # leaving the walled garden: a fresh session, not a rate change
    assert request_for(mk, "resume", S, plan_rate="10M/10M",
                       prev_state="suspended").request == "disconnect"
    assert request_for(mk, "resume", S, plan_rate="10M/10M",
                       prev_state="throttled").request == "coa"


def test_profile_without_rate_disconnects_to_throttle():
    data = {v: {"identify": ["Acct-Session-Id"]} for v in
            ("generic", "mikrotik", "cisco", "juniper", "huawei")}
    p = parse_profiles(data)["generic"]
    assert request_for(p, "throttle", S, rate="1M").request == "disconnect"
    assert request_for(p, "resume", S, plan_rate="1M").request == "disconnect"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("huawei"), "missing"),
    (lambda d: d["cisco"].update(identify=["User-Name"]), "Acct-Session-Id"),
    (lambda d: d["cisco"].update(identify=["Acct-Session-Id", "Calling-Station-Id"]), "not among"),
    (lambda d: d["mikrotik"].update(rate={"Mikrotik-Rate-Limit": "{speed}"}), "placeholder"),
    (lambda d: d["mikrotik"].update(rate={"Mikrotik-Rate-Limt": "{rate}"}), "dictionary"),
    (lambda d: d["mikrotik"].update(suspend="walled_garden", walled_garden_attributes=None),
     "walled_garden_attributes"),
    (lambda d: d["juniper"].update(suspend="kick"), "suspend"),
    (lambda d: d["juniper"].update(colour="blue"), "unknown key"),
])
def test_invalid_profiles_are_rejected(mutate, message):
    import yaml

    from collectors.radius.vendors import VENDORS_FILE

    data = yaml.safe_load(VENDORS_FILE.read_text())
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        parse_profiles(data, lambda name: name.partition(":")[0] in DICT.attributes)
