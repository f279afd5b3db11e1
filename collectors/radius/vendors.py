"""Vendor profiles as data: which attributes ask a NAS to change or end a session.

``vendors.yaml`` (beside this file) holds one profile per vendor; ``load_profiles``
validates it against the RADIUS dictionary, and ``request_for`` turns an enforcement
operation on one session into a request type and its attributes (by name, with Python
values; ``collectors.radius.coa`` encodes them). Pure: no I/O besides reading the file.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from ispstream.rates import Rate, parse_rate  # noqa: F401 - re-exported

VENDORS_FILE = Path(__file__).resolve().parent / "vendors.yaml"
VENDORS = ("generic", "mikrotik", "cisco", "juniper", "huawei")
IDENTITY_ATTRIBUTES = ("NAS-IP-Address", "User-Name", "Acct-Session-Id", "Framed-IP-Address")
PLACEHOLDERS = frozenset({"rate", "rate_name", "up_bps", "down_bps", "up_kbps", "down_kbps"})

Op = Literal["throttle", "suspend", "disconnect", "resume"]
RequestType = Literal["coa", "disconnect"]

class ProfileError(ValueError):
    """The vendor profiles file is invalid (names the vendor and the problem)."""


@dataclass(frozen=True)
class Session:
    """What identifies one session at its NAS."""

    nas_ip: str
    session_id: str
    username: str | None = None
    framed_ip: str | None = None


@dataclass(frozen=True)
class Request:
    """A request to send: its type and its attributes as (name, value) pairs."""

    request: RequestType
    attributes: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class VendorProfile:
    name: str
    identify: tuple[str, ...]
    rate: tuple[tuple[str, str], ...]  # (attribute, template); empty: cannot set a rate
    suspend: Literal["disconnect", "walled_garden"]
    walled_garden: tuple[tuple[str, str], ...]

    def identity(self, s: Session) -> list[tuple[str, object]]:
        values = {"NAS-IP-Address": s.nas_ip, "User-Name": s.username,
                  "Acct-Session-Id": s.session_id, "Framed-IP-Address": s.framed_ip}
        return [(a, values[a]) for a in self.identify if values[a]]

    def rate_attributes(self, rate: Rate) -> list[tuple[str, object]]:
        fields = {"rate": rate.text, "rate_name": rate.name, "up_bps": rate.up_bps,
                  "down_bps": rate.down_bps, "up_kbps": rate.up_bps // 1000,
                  "down_kbps": rate.down_bps // 1000}
        return [(attr, template.format_map(fields)) for attr, template in self.rate]


def request_for(profile: VendorProfile, op: Op, session: Session, *, rate: str | None = None,
                plan_rate: str | None = None, prev_state: str = "normal") -> Request:
    """The request enforcing ``op`` on ``session`` at a NAS of this ``profile``.

    - throttle: a CoA with the profile's rate attributes for ``rate`` (a Disconnect when
      the profile cannot set a rate);
    - suspend: a Disconnect, or a walled-garden CoA when the profile says so;
    - disconnect: a Disconnect;
    - resume: a CoA restoring ``plan_rate``; a Disconnect when there is none, when the
      profile cannot set a rate, or when the subscriber was in the walled garden.
    """
    ident = profile.identity(session)
    disconnect = Request("disconnect", tuple(ident))
    if op == "throttle":
        if rate is None:
            raise ValueError("throttle needs a rate")
        if not profile.rate:
            return disconnect
        return Request("coa", tuple(ident + profile.rate_attributes(parse_rate(rate))))
    if op == "suspend":
        if profile.suspend == "walled_garden":
            return Request("coa", tuple(ident + list(profile.walled_garden)))
        return disconnect
    if op == "disconnect":
        return disconnect
    if op == "resume":
        if (plan_rate is None or not profile.rate
                or (prev_state == "suspended" and profile.suspend == "walled_garden")):
            return disconnect
        return Request("coa", tuple(ident + profile.rate_attributes(parse_rate(plan_rate))))
    raise ValueError(f"unknown operation {op!r}")


# --- loading ------------------------------------------------------------------------------

def _pairs(vendor: str, key: str, raw) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ProfileError(f"{vendor}.{key}: expected a mapping of attribute -> value")
    out = []
    for attr, value in raw.items():
        for v in (value if isinstance(value, list) else [value]):
            if not isinstance(v, (str, int)):
                raise ProfileError(f"{vendor}.{key}.{attr}: values are strings or numbers")
            out.append((str(attr), str(v)))
    return tuple(out)


def _check_templates(vendor: str, key: str, pairs, allowed: frozenset[str]) -> None:
    for attr, template in pairs:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            raise ProfileError(f"{vendor}.{key}.{attr}: {exc}") from None
        unknown = names - allowed
        if unknown:
            raise ProfileError(f"{vendor}.{key}.{attr}: unknown placeholder(s) "
                               f"{sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_profiles(data: dict, known_attribute=None) -> dict[str, VendorProfile]:
    """Validate the parsed YAML; ``known_attribute(name) -> bool`` checks names."""
    if not isinstance(data, dict):
        raise ProfileError("the vendor profiles file must be a mapping of vendor -> profile")
    missing = [v for v in VENDORS if v not in data]
    if missing:
        raise ProfileError(f"profiles missing for vendor(s) {missing}")
    profiles = {}
    for vendor, raw in data.items():
        if not isinstance(raw, dict):
            raise ProfileError(f"{vendor}: expected a mapping")
        unknown_keys = set(raw) - {"identify", "rate", "suspend", "walled_garden_attributes"}
        if unknown_keys:
            raise ProfileError(f"{vendor}: unknown key(s) {sorted(unknown_keys)}")
        identify = tuple(raw.get("identify") or ())
        if "Acct-Session-Id" not in identify:
            raise ProfileError(f"{vendor}.identify must include Acct-Session-Id")
        bad = [a for a in identify if a not in IDENTITY_ATTRIBUTES]
        if bad:
            raise ProfileError(f"{vendor}.identify: {bad} not among {list(IDENTITY_ATTRIBUTES)}")
        rate = _pairs(vendor, "rate", raw.get("rate"))
        garden = _pairs(vendor, "walled_garden_attributes", raw.get("walled_garden_attributes"))
        suspend = raw.get("suspend", "disconnect")
        if suspend not in ("disconnect", "walled_garden"):
            raise ProfileError(f"{vendor}.suspend must be disconnect or walled_garden")
        if suspend == "walled_garden" and not garden:
            raise ProfileError(f"{vendor}: suspend walled_garden needs walled_garden_attributes")
        _check_templates(vendor, "rate", rate, PLACEHOLDERS)
        _check_templates(vendor, "walled_garden_attributes", garden, frozenset())
        if known_attribute is not None:
            for attr, _ in rate + garden:
                if not known_attribute(attr):
                    raise ProfileError(f"{vendor}: attribute {attr!r} is not in the dictionary")
        profiles[vendor] = VendorProfile(vendor, identify, rate, suspend, garden)
    return profiles


def load_profiles(path: Path | None = None, dictionary=None) -> dict[str, VendorProfile]:
    """Read and validate the vendor profiles (the shipped file unless ``path``)."""
    p = Path(path) if path else VENDORS_FILE
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{p}: {exc}") from None
    known = None
    if dictionary is not None:
        def known(name: str) -> bool:
            return name.partition(":")[0] in dictionary.attributes
    return parse_profiles(data, known)
