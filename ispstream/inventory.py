"""Declarative inventory: tenants, plans, NAS, subscribers and monitored devices from one
YAML file.

``ispstream inventory apply FILE`` validates the whole file first and applies it only
when everything is valid, in one transaction of idempotent upserts:

- every problem is reported with its field path and YAML line, e.g.
  ``tenants[0].plans[1].quota_counts (line 12): Input should be 'download', 'upload'
  or 'total'``; YAML syntax errors, duplicate keys, duplicate ids, unknown plans and
  NAS addresses used twice are reported the same way;
- a row is written only when one of its values changed (and only then does its
  ``updated_at`` move), so applying the same file twice changes nothing;
- items absent from the file are **not deleted**: the file adds and updates, it never
  removes (remove tenants, plans, NAS or subscribers with SQL, deliberately);
- a subscriber's plan must be defined under the same tenant in the same file;
- every apply writes one ``audit_log`` row per tenant in the file;
- a plan with ``after_quota: {throttle: R}`` and no policy at 100 % is stored with the
  policy ``{at: 100, action: throttle, rate: R}`` (the fair-use throttle, enforced);
- monitored devices (SNMP) carry credentials: v2c communities and v3 keys are stored for
  the poller but never appear in errors, logs or the apply summary; an OLT's
  ``vendor_profile`` must name a profile the ONU poller ships
  (``collectors/onu/profiles/<name>.yaml``);
- a subscriber's ``onu`` links them to an ONU of an OLT of the same tenant in the same
  file, by serial and/or by PON port and ONU id.

Format (GB = 10^9 bytes; money as decimal strings or numbers, read as ``Decimal``)::

    tenants:
      - id: acme
        timezone: Europe/Berlin
        currency: EUR
        plans:
          - id: fiber-500
            monthly_fee: "39.00"
            quota_gb: 500                  # omit for unlimited; may be fractional
            quota_counts: total            # download | upload | total
            after_quota: {overage_per_gb: "1.50"}   # or {throttle: "2M/2M"}
            off_peak: [{from: "00:00", to: "06:00", rate: "0"}]
            rate_limit: "500M/500M"        # the plan's normal rate (optional)
            quota_policies:                # percent of quota_gb (1..1000), one per `at`
              - {at: 80, action: notify}
              - {at: 100, action: throttle, rate: "2M/2M"}   # rate: only for throttle
              - {at: 120, action: suspend}
        nas:
          - ip: 192.0.2.1
            name: bng-1                    # optional, defaults to the address
            secret: "..."
            vendor: mikrotik               # mikrotik | cisco | juniper | huawei | generic
            coa_port: 3799
            require_message_authenticator: false
        subscribers:
          - username: alice
            plan: fiber-500
            cycle_anchor_day: 1
            onu: {olt: olt-1, serial: HWTC1A2B3C4D}   # or {olt: olt-1, pon: "0/1/3", onu_id: 7}
        devices:                           # SNMP-monitored; addresses unique across tenants
          - id: core-1
            kind: router                   # router | switch | nas | olt
            address: 192.0.2.10
            port: 161
            snmp: {version: "2c", community: "..."}
            intervals: {interfaces: 60, optical: 300}   # seconds, >= 10 / >= 30
            max_inflight: 2                # SNMP requests in flight to it at most (1..64)
            timeout_s: 2
            retries: 1
          - id: olt-1
            kind: olt
            address: 192.0.2.20
            vendor_profile: huawei-ma5800  # OLTs only: the ONU optics profile
            snmp:                          # SNMPv3 is always authPriv
              version: "3"
              user: monitor
              auth_protocol: SHA           # MD5 | SHA | SHA224 | SHA256 | SHA384 | SHA512
              auth_key: "..."              # at least 8 characters
              priv_protocol: AES           # DES | AES | AES192 | AES256
              priv_key: "..."              # at least 8 characters
              engine_id: 80001f888056...   # its engine id (hex): needed for its v3 traps
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ispstream.db import connect
from ispstream.rates import parse_rate
from rating.money import GB

log = logging.getLogger(__name__)

_BIGINT_MAX = 2**63 - 1


class InventoryError(Exception):
    """The inventory file is invalid (nothing was applied); ``errors`` lists each problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        head = f"{source}: {len(errors)} problem(s), nothing applied"
        super().__init__("\n".join([head, *(f"  {e}" for e in errors)]))


# ---------------------------------------------------------------------------------------
# YAML: keep the node tree for line numbers; numbers with a fraction become Decimal.


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader: floats as exact ``Decimal``, ``12:30`` as text, duplicate keys rejected."""


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if ":" in text:  # YAML 1.1 base-60 ("12:30"): almost surely a time of day
        return text
    try:
        return Decimal(text.replace("_", ""))
    except InvalidOperation:  # .inf / .nan: let validation reject it with its line
        return text


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    if ":" in text:  # YAML 1.1 base-60 ("12:30" would otherwise become 750)
        return text
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line "
                f"{seen[key].start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node
    yield from yaml.SafeLoader.construct_yaml_map(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


# ---------------------------------------------------------------------------------------
# The model. Strict: no coercion of types and no unknown fields.


def _decimal(value: Any) -> Any:
    """Money and quantities: a decimal string, an int, or a YAML number read as Decimal."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a decimal string or number (never a float)")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    return value


_Dec = Annotated[Decimal, BeforeValidator(_decimal)]
Money = Annotated[_Dec, Field(ge=0, allow_inf_nan=False)]
Multiplier = Annotated[_Dec, Field(ge=0, le=1, allow_inf_nan=False)]

_TIME = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OffPeakWindow(_Strict):
    """A daily window (tenant local time) whose traffic is rated at ``rate`` (0..1)."""

    from_: str = Field(alias="from")
    to: str
    rate: Multiplier

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str) -> str:
        if not _TIME.match(v):
            raise ValueError("must be a time of day HH:MM (00:00..23:59)")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if v != "24:00" and not _TIME.match(v):
            raise ValueError("must be a time of day HH:MM (00:00..24:00)")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> "OffPeakWindow":
        if self.from_ == self.to:
            raise ValueError("from and to must differ (use 00:00 to 24:00 for all day)")
        return self

    def as_json(self) -> dict[str, str]:
        """The stored form: ``{"from": "00:00", "to": "06:00", "rate": "0"}``."""
        return {"from": self.from_, "to": self.to, "rate": str(self.rate)}


class AfterQuota(_Strict):
    """What happens past the quota: per-GB overage, or a fair-use throttle (exactly one)."""

    overage_per_gb: Money | None = None
    throttle: str | None = None

    @field_validator("throttle")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        return _rate_profile(v)

    @model_validator(mode="after")
    def _exactly_one(self) -> "AfterQuota":
        if (self.overage_per_gb is None) == (self.throttle is None):
            raise ValueError("give exactly one of overage_per_gb or throttle")
        return self


def _rate_profile(v: str | None) -> str | None:
    # The same parser enforcement uses: what the inventory accepts is what a NAS gets.
    if v is None:
        return None
    try:
        return parse_rate(v, both=True).text
    except ValueError as exc:
        detail = "" if "is not upload/download" in str(exc) else f" ({exc})"
        raise ValueError("must be a rate limit like '2M/2M' or '512k/1M' (upload/download, "
                         f"each a number with an optional k, M or G){detail}") from None


RateProfile = Annotated[str, AfterValidator(_rate_profile)]


class QuotaPolicySpec(_Strict):
    """At ``at`` percent of the plan's quota, ``action`` (``rate`` only for throttle)."""

    at: int = Field(ge=1, le=1000)
    action: Literal["notify", "throttle", "suspend"]
    rate: RateProfile | None = None

    @model_validator(mode="after")
    def _rate_for_throttle(self) -> "QuotaPolicySpec":
        if self.action == "throttle" and self.rate is None:
            raise ValueError("a throttle needs a rate, e.g. rate: \"2M/2M\"")
        if self.action != "throttle" and self.rate is not None:
            raise ValueError(f"rate is only for a throttle, not for {self.action}")
        return self

    def as_json(self) -> dict[str, Any]:
        """The stored form: ``{"at": 100, "action": "throttle", "rate": "2M/2M"}``."""
        out: dict[str, Any] = {"at": self.at, "action": self.action}
        if self.rate is not None:
            out["rate"] = self.rate
        return out


class PlanSpec(_Strict):
    """A plan: monthly fee, optional quota, after-quota behaviour, off-peak windows, quota
    policies and its normal rate."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    monthly_fee: Money
    quota_gb: Annotated[_Dec, Field(ge=0, allow_inf_nan=False)] | None = None
    quota_counts: Literal["download", "upload", "total"] = "total"
    after_quota: AfterQuota | None = None
    off_peak: list[OffPeakWindow] = Field(default_factory=list)
    quota_policies: list[QuotaPolicySpec] = Field(default_factory=list)
    rate_limit: RateProfile | None = None

    @field_validator("quota_gb")
    @classmethod
    def _whole_bytes(cls, v: Decimal | None) -> Decimal | None:
        if v is not None:
            with localcontext() as ctx:
                ctx.prec = len(v.as_tuple().digits) + 12  # the product is exact
                b = v * GB
            if b != b.to_integral_value():
                raise ValueError("must be a whole number of bytes (GB = 10^9 bytes)")
            if b > _BIGINT_MAX:
                raise ValueError(f"must be at most {_BIGINT_MAX // GB} GB")
        return v

    @model_validator(mode="after")
    def _after_quota_needs_quota(self) -> "PlanSpec":
        if self.quota_gb is not None and self.after_quota is None:
            raise ValueError("after_quota is required when quota_gb is set")
        if self.quota_gb is None and self.after_quota is not None:
            raise ValueError("after_quota needs quota_gb (a plan without quota is unlimited)")
        if self.quota_gb is None and self.quota_policies:
            raise ValueError("quota_policies need quota_gb (a plan without quota is "
                             "unlimited)")
        return self

    def policies_json(self) -> list[dict[str, Any]]:
        """The stored policies, by threshold: the file's, plus the fair-use throttle at
        100 % (``after_quota: {throttle: R}``) unless a policy at 100 % is given."""
        out = [p.as_json() for p in self.quota_policies]
        throttle = self.after_quota.throttle if self.after_quota else None
        if throttle is not None and all(p.at != 100 for p in self.quota_policies):
            out.append({"at": 100, "action": "throttle", "rate": throttle})
        return sorted(out, key=lambda p: p["at"])

    @property
    def quota_bytes(self) -> int | None:
        """The quota in bytes (exact), or None for unlimited."""
        return None if self.quota_gb is None else int(self.quota_gb * GB)


class NasSpec(_Strict):
    """A NAS (BNG/BRAS) sending accounting; its source address selects the secret."""

    ip: str
    name: str | None = Field(default=None, min_length=1, max_length=128)
    secret: str = Field(min_length=1)
    vendor: Literal["mikrotik", "cisco", "juniper", "huawei", "generic"] = "generic"
    coa_port: int = Field(default=3799, ge=1, le=65535)
    require_message_authenticator: bool = False

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v.strip()))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 or IPv6 address") from None

    @property
    def id(self) -> str:
        """``nas.id``: the name, or the address when no name is given."""
        return self.name or self.ip


def _ip_address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v.strip()))
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address") from None


def _as_text(value: Any) -> Any:
    """A YAML number where text is meant (``onu_id: 7``, ``pon: 3``) becomes its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# The ONU optics profiles an OLT's ``vendor_profile`` may name: the file stems in the ONU
# poller's profile folder; while that folder does not exist, this fixed list.
ONU_PROFILES_DIR = Path(__file__).resolve().parent.parent / "collectors" / "onu" / "profiles"
DEFAULT_ONU_PROFILES = ("ubiquiti-ufiber", "calix-axos", "vsol-v1600", "huawei-ma5800",
                        "zte-c300")


def known_vendor_profiles(directory: Path = ONU_PROFILES_DIR) -> frozenset[str]:
    """The vendor profile names an OLT may use (read at every validation)."""
    if directory.is_dir():
        return frozenset(p.stem for p in directory.glob("*.yaml"))
    return frozenset(DEFAULT_ONU_PROFILES)


SNMP_AUTH_PROTOCOLS = ("MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
SNMP_PRIV_PROTOCOLS = ("DES", "AES", "AES192", "AES256")
_V3_FIELDS = ("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")


def _snmp_version(value: Any) -> Any:
    """``version: 3`` (a YAML number) and ``v2c`` / ``v3`` mean what they say."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        value = value.strip().lower()
        return value[1:] if value in ("v2c", "v3") else value
    return value


def _engine_id_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("write the engine id as quoted text, e.g. \"80001f8880...\" "
                         "(YAML read it as a number)")
    return value


def _engine_id(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower().replace(":", "")
    text = text[2:] if text.startswith("0x") else text
    if (not re.fullmatch(r"[0-9a-f]*", text) or len(text) % 2
            or not 5 <= len(text) // 2 <= 32):
        raise ValueError("must be the device's SNMP engine id in hex, 5 to 32 octets "
                         "(e.g. 80001f8880...)")
    return text


class SnmpSpec(_Strict):
    """How to talk SNMP to a device: v2c with a community, or v3 authPriv.

    Secret values are never part of an error message, a log line or a ``repr``."""

    version: Annotated[Literal["2c", "3"], BeforeValidator(_snmp_version)]
    community: str | None = Field(default=None, min_length=1, max_length=255, repr=False)
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_protocol: Literal[SNMP_AUTH_PROTOCOLS] | None = None  # type: ignore[valid-type]
    auth_key: str | None = Field(default=None, min_length=8, max_length=255, repr=False)
    priv_protocol: Literal[SNMP_PRIV_PROTOCOLS] | None = None  # type: ignore[valid-type]
    priv_key: str | None = Field(default=None, min_length=8, max_length=255, repr=False)
    engine_id: Annotated[str | None, BeforeValidator(_engine_id_text),
                         AfterValidator(_engine_id)] = None

    @model_validator(mode="after")
    def _complete(self) -> "SnmpSpec":
        if self.version == "2c":
            if self.community is None:
                raise ValueError("version 2c needs a community")
            extra = [f for f in (*_V3_FIELDS, "engine_id") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for version 3")
        else:
            if self.community is not None:
                raise ValueError("community: only for version 2c (version 3 uses user and "
                                 "keys)")
            missing = [f for f in _V3_FIELDS if getattr(self, f) is None]
            if missing:
                raise ValueError("version 3 needs user, auth_protocol, auth_key, "
                                 "priv_protocol and priv_key (authPriv); missing: "
                                 + ", ".join(missing))
        return self


class IntervalsSpec(_Strict):
    """Polling intervals per metric group, in seconds."""

    interfaces: int = Field(default=60, ge=10, le=86400)
    optical: int = Field(default=300, ge=30, le=86400)


class DeviceSpec(_Strict):
    """A device the SNMP poller watches (router, switch, NAS or OLT); traps are attributed
    to it by its address."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["router", "switch", "nas", "olt"]
    address: Annotated[str, AfterValidator(_ip_address)]
    port: int = Field(default=161, ge=1, le=65535)
    snmp: SnmpSpec
    intervals: IntervalsSpec = Field(default_factory=IntervalsSpec)
    max_inflight: int = Field(default=2, ge=1, le=64)
    timeout_s: Annotated[_Dec, Field(gt=0, le=60, allow_inf_nan=False)] = Decimal(2)
    retries: int = Field(default=1, ge=0, le=10)
    vendor_profile: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _profile_for_olts(self) -> "DeviceSpec":
        if self.vendor_profile is not None and self.kind != "olt":
            raise ValueError(f"vendor_profile is only for OLTs (kind: olt), not for a "
                             f"{self.kind}")
        return self


class OnuLinkSpec(_Strict):
    """The ONU serving a subscriber: on OLT ``olt``, by serial and/or PON port + ONU id."""

    olt: str = Field(min_length=1)
    serial: str | None = Field(default=None, min_length=1, max_length=64)
    pon: Annotated[str, BeforeValidator(_as_text), Field(min_length=1, max_length=64)] | None \
        = None
    onu_id: Annotated[str, BeforeValidator(_as_text), Field(min_length=1, max_length=64)] \
        | None = None

    @model_validator(mode="after")
    def _identified(self) -> "OnuLinkSpec":
        if (self.pon is None) != (self.onu_id is None):
            raise ValueError("pon and onu_id go together (the ONU id on that PON port)")
        if self.serial is None and self.pon is None:
            raise ValueError("give the ONU's serial, or its pon and onu_id")
        return self


class SubscriberSpec(_Strict):
    """A subscriber: the RADIUS User-Name, their plan and billing-cycle anchor day, and
    optionally the ONU that serves them."""

    username: str = Field(min_length=1, max_length=253)
    plan: str = Field(min_length=1)
    cycle_anchor_day: int = Field(default=1, ge=1, le=31)
    onu: OnuLinkSpec | None = None


class TenantSpec(_Strict):
    """One ISP: its time zone (IANA), currency (ISO 4217) and inventory."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    plans: list[PlanSpec] = Field(default_factory=list)
    nas: list[NasSpec] = Field(default_factory=list)
    subscribers: list[SubscriberSpec] = Field(default_factory=list)
    devices: list[DeviceSpec] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v not in _zones():
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Berlin)")
        return v


class Inventory(_Strict):
    """The whole file."""

    tenants: list[TenantSpec]


# ---------------------------------------------------------------------------------------
# Errors with field paths and lines.


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _node_at(root: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The deepest YAML node along ``loc`` (the enclosing node when a part is missing)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v
                    break
            if nxt is None:
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _line(root: yaml.Node | None, loc: tuple, key: bool = False) -> int | None:
    node = _node_at(root, loc)
    if node is None:
        return None
    if key and loc and isinstance(parent := _node_at(root, loc[:-1]), yaml.MappingNode):
        for k, _ in parent.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(loc[-1]):
                return k.start_mark.line + 1
    return node.start_mark.line + 1


def _msg(loc: tuple, line: int | None, message: str) -> str:
    where = f" (line {line})" if line else ""
    return f"{_path(loc)}{where}: {message}"


def _pydantic_errors(exc: ValidationError, root: yaml.Node | None) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if err["type"] == "missing":
            line = _line(root, loc[:-1])
        else:
            line = _line(root, loc, key=err["type"] == "extra_forbidden")
        out.append(_msg(loc, line, message))
    return out


def _cross_reference_errors(inv: Inventory, root: yaml.Node | None,
                            vendor_profiles: frozenset[str]) -> list[str]:
    """Duplicate ids, unknown plans, NAS and device addresses used twice (within the file),
    unknown vendor profiles, ONU links to unknown devices or to devices that are no OLT."""
    errors: list[str] = []
    device_addresses: dict[str, tuple] = {}

    def dup(kind: str, loc: tuple, first: tuple) -> None:
        errors.append(_msg(loc, _line(root, loc),
                           f"duplicate {kind} (first at line {_line(root, first)})"))

    tenant_ids: dict[str, tuple] = {}
    ips: dict[str, tuple] = {}
    for ti, t in enumerate(inv.tenants):
        tloc = ("tenants", ti)
        if t.id in tenant_ids:
            dup(f"tenant id {t.id!r}", tloc + ("id",), tenant_ids[t.id])
        tenant_ids.setdefault(t.id, tloc + ("id",))
        plans: dict[str, tuple] = {}
        for pi, p in enumerate(t.plans):
            loc = tloc + ("plans", pi, "id")
            if p.id in plans:
                dup(f"plan id {p.id!r}", loc, plans[p.id])
            plans.setdefault(p.id, loc)
            thresholds: dict[int, tuple] = {}
            for qi, q in enumerate(p.quota_policies):
                qloc = tloc + ("plans", pi, "quota_policies", qi, "at")
                if q.at in thresholds:
                    dup(f"threshold {q.at}%", qloc, thresholds[q.at])
                thresholds.setdefault(q.at, qloc)
        names: dict[str, tuple] = {}
        for ni, n in enumerate(t.nas):
            loc = tloc + ("nas", ni)
            name_loc = loc + ("name",) if n.name is not None else loc + ("ip",)
            if n.id in names:
                dup(f"NAS name {n.id!r}", name_loc, names[n.id])
            names.setdefault(n.id, name_loc)
            if n.ip in ips:
                dup(f"NAS address {n.ip}", loc + ("ip",), ips[n.ip])
            ips.setdefault(n.ip, loc + ("ip",))
        users: dict[str, tuple] = {}
        for si, s in enumerate(t.subscribers):
            loc = tloc + ("subscribers", si)
            if s.username in users:
                dup(f"username {s.username!r}", loc + ("username",), users[s.username])
            users.setdefault(s.username, loc + ("username",))
            if s.plan not in plans:
                errors.append(_msg(loc + ("plan",), _line(root, loc + ("plan",)),
                                   f"unknown plan {s.plan!r} (not a plan of tenant "
                                   f"{t.id!r} in this file)"))
        errors.extend(_device_errors(t, tloc, root, vendor_profiles, device_addresses))
    return errors


def _device_errors(t: TenantSpec, tloc: tuple, root: yaml.Node | None,
                   vendor_profiles: frozenset[str],
                   addresses: dict[str, tuple]) -> list[str]:
    """One tenant's devices and ONU links (``addresses`` spans every tenant of the file)."""
    errors: list[str] = []

    def dup(kind: str, loc: tuple, first: tuple) -> None:
        errors.append(_msg(loc, _line(root, loc),
                           f"duplicate {kind} (first at line {_line(root, first)})"))

    devices: dict[str, tuple[DeviceSpec, tuple]] = {}
    for di, d in enumerate(t.devices):
        loc = tloc + ("devices", di)
        if d.id in devices:
            dup(f"device id {d.id!r}", loc + ("id",), devices[d.id][1])
        devices.setdefault(d.id, (d, loc + ("id",)))
        if d.address in addresses:
            dup(f"device address {d.address}", loc + ("address",), addresses[d.address])
        addresses.setdefault(d.address, loc + ("address",))
        if d.vendor_profile is not None and d.vendor_profile not in vendor_profiles:
            ploc = loc + ("vendor_profile",)
            known = ", ".join(sorted(vendor_profiles)) or "none installed"
            errors.append(_msg(ploc, _line(root, ploc),
                               f"unknown vendor profile {d.vendor_profile!r} (known: "
                               f"{known})"))
    serials: dict[tuple, tuple] = {}
    positions: dict[tuple, tuple] = {}
    for si, s in enumerate(t.subscribers):
        if s.onu is None:
            continue
        loc = tloc + ("subscribers", si, "onu")
        found = devices.get(s.onu.olt)
        if found is None:
            errors.append(_msg(loc + ("olt",), _line(root, loc + ("olt",)),
                               f"unknown device {s.onu.olt!r} (not a device of tenant "
                               f"{t.id!r} in this file)"))
        elif found[0].kind != "olt":
            errors.append(_msg(loc + ("olt",), _line(root, loc + ("olt",)),
                               f"device {s.onu.olt!r} is a {found[0].kind}, not an OLT "
                               "(kind: olt)"))
        if s.onu.serial is not None:
            key = (s.onu.olt, s.onu.serial)
            if key in serials:
                dup(f"ONU serial {s.onu.serial!r} on OLT {s.onu.olt!r}", loc + ("serial",),
                    serials[key])
            serials.setdefault(key, loc + ("serial",))
        if s.onu.pon is not None:
            key = (s.onu.olt, s.onu.pon, s.onu.onu_id)
            if key in positions:
                dup(f"ONU {s.onu.onu_id!r} on PON {s.onu.pon!r} of OLT {s.onu.olt!r}",
                    loc + ("onu_id",), positions[key])
            positions.setdefault(key, loc + ("onu_id",))
    return errors


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    kind = ("YAML error" if isinstance(exc, yaml.constructor.ConstructorError)
            else "YAML syntax error")
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    text = f"{kind}{where}: {exc.problem or exc.context or 'invalid YAML'}"
    ctx = exc.context_mark
    if exc.problem and exc.context and ctx is not None and ctx is not mark:
        text += f" ({exc.context} at line {ctx.line + 1}, column {ctx.column + 1})"
    return text


@dataclass
class Parsed:
    """A validated inventory with its YAML node tree (for line numbers of DB conflicts)."""

    inventory: Inventory
    root: yaml.Node | None = field(repr=False, default=None)


def parse(text: str, source: str = "<inventory>",
          vendor_profiles: frozenset[str] | None = None) -> Parsed:
    """Parse and validate an inventory document; raise ``InventoryError`` listing every
    problem with its field path and line. Touches no database.

    ``vendor_profiles``: the OLT vendor profile names to accept (default: the ONU poller's
    profiles as installed, see ``known_vendor_profiles``)."""
    try:
        data, root = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        raise InventoryError(source, [_yaml_error(exc)]) from None
    except yaml.YAMLError as exc:
        raise InventoryError(source, [f"YAML error: {exc}"]) from None
    if data is None:
        raise InventoryError(source, ["(file): the file is empty; expected 'tenants:'"])
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(source, _pydantic_errors(exc, root)) from None
    if vendor_profiles is None:
        vendor_profiles = known_vendor_profiles()
    errors = _cross_reference_errors(inv, root, vendor_profiles)
    if errors:
        raise InventoryError(source, errors)
    return Parsed(inv, root)


# ---------------------------------------------------------------------------------------
# Apply: one transaction, upserts that write only what changed.


def _upsert(table: str, cols: list[str], key: list[str], casts: dict[str, str]) -> str:
    """``INSERT .. SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE .. WHERE changed``.

    Returns one row per inserted or changed row: ``inserted`` is true for new rows.
    Unchanged rows are not touched at all (no new row version, no ``updated_at`` move).
    """
    arrays = ", ".join(f"%s::{casts.get(c, 'text')}[]" for c in cols)
    values = [c for c in cols if c not in key]
    return (
        f"INSERT INTO {table} AS t ({', '.join(cols)}) "
        f"SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
        + ", updated_at = now() "
        f"WHERE ({', '.join('t.' + c for c in values)}) "
        f"IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in values)}) "
        "RETURNING (xmax = 0) AS inserted"
    )


_TENANT_COLS = ["id", "timezone", "currency"]
_PLAN_COLS = ["tenant_id", "id", "monthly_fee", "quota_bytes", "quota_counts",
              "overage_per_gb", "throttle_rate", "off_peak", "quota_policies", "rate_limit"]
_NAS_COLS = ["tenant_id", "id", "ip", "secret", "vendor", "coa_port",
             "require_message_authenticator"]
_SUB_COLS = ["tenant_id", "username", "plan_id", "cycle_anchor_day"]
_DEVICE_COLS = ["tenant_id", "id", "kind", "address", "snmp_port", "snmp_version", "community",
                "v3_user", "v3_auth_protocol", "v3_auth_key", "v3_priv_protocol",
                "v3_priv_key", "v3_engine_id", "vendor_profile", "interval_if_s",
                "interval_optical_s", "max_inflight", "timeout_s", "retries"]
_ONU_LINK_COLS = ["tenant_id", "username", "olt_id", "serial", "pon", "onu_id"]

_SQL = {
    "tenants": _upsert("tenants", _TENANT_COLS, ["id"], {"currency": "char(3)"}),
    "plans": _upsert("plans", _PLAN_COLS, ["tenant_id", "id"],
                     {"monthly_fee": "numeric", "quota_bytes": "bigint",
                      "overage_per_gb": "numeric", "off_peak": "jsonb",
                      "quota_policies": "jsonb"}),
    "nas": _upsert("nas", _NAS_COLS, ["tenant_id", "id"],
                   {"ip": "inet", "coa_port": "integer",
                    "require_message_authenticator": "boolean"}),
    "subscribers": _upsert("subscribers", _SUB_COLS, ["tenant_id", "username"],
                           {"cycle_anchor_day": "smallint"}),
    "devices": _upsert("devices", _DEVICE_COLS, ["tenant_id", "id"],
                       {"address": "inet", "snmp_port": "integer", "interval_if_s": "integer",
                        "interval_optical_s": "integer", "max_inflight": "integer",
                        "timeout_s": "real", "retries": "integer"}),
    "onu_links": _upsert("onu_links", _ONU_LINK_COLS, ["tenant_id", "username"], {}),
}

# A subscriber whose ONU changed loses the old link first, so that ONUs can move between
# subscribers of one file without tripping the one-subscriber-per-ONU indexes.
_DROP_CHANGED_ONU_LINKS = (
    "DELETE FROM onu_links AS l "
    "USING unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
    "AS f(username, olt_id, serial, pon, onu_id) "
    "WHERE l.tenant_id = %s AND l.username = f.username "
    "AND (l.olt_id, l.serial, l.pon, l.onu_id) "
    "IS DISTINCT FROM (f.olt_id, f.serial, f.pon, f.onu_id) "
    "RETURNING l.username"
)


def _columns(rows: list[tuple], n: int) -> list[list]:
    return [[r[i] for r in rows] for i in range(n)]


def _rows(t: TenantSpec) -> dict[str, list[tuple]]:
    return {
        "tenants": [(t.id, t.timezone, t.currency)],
        "plans": [
            (t.id, p.id, p.monthly_fee, p.quota_bytes, p.quota_counts,
             p.after_quota.overage_per_gb if p.after_quota else None,
             p.after_quota.throttle if p.after_quota else None,
             json.dumps([w.as_json() for w in p.off_peak]),
             json.dumps(p.policies_json()), p.rate_limit)
            for p in t.plans
        ],
        "nas": [
            (t.id, n.id, n.ip, n.secret, n.vendor, n.coa_port, n.require_message_authenticator)
            for n in t.nas
        ],
        "subscribers": [(t.id, s.username, s.plan, s.cycle_anchor_day) for s in t.subscribers],
        "devices": [_device_row(t.id, d) for d in t.devices],
        "onu_links": [(t.id, s.username, s.onu.olt, s.onu.serial, s.onu.pon, s.onu.onu_id)
                      for s in t.subscribers if s.onu is not None],
    }


def _device_row(tenant_id: str, d: DeviceSpec) -> tuple:
    v3 = d.snmp.version == "3"
    return (tenant_id, d.id, d.kind, d.address, d.port, d.snmp.version, d.snmp.community,
            d.snmp.user if v3 else None, d.snmp.auth_protocol, d.snmp.auth_key,
            d.snmp.priv_protocol, d.snmp.priv_key, d.snmp.engine_id, d.vendor_profile,
            d.intervals.interfaces, d.intervals.optical, d.max_inflight, float(d.timeout_s),
            d.retries)


def _database_conflicts(conn: psycopg.Connection, parsed: Parsed) -> list[str]:
    """What only the database can tell: a time zone PostgreSQL does not know, or a NAS
    address already held by another NAS row (another tenant, or another name)."""
    errors = []
    zones = {t.timezone: ("tenants", ti, "timezone")
             for ti, t in enumerate(parsed.inventory.tenants)}
    known = {r[0] for r in conn.execute(
        "SELECT name FROM pg_timezone_names WHERE name = ANY(%s)", (list(zones),))}
    for zone, loc in zones.items():
        if zone not in known:
            errors.append(_msg(loc, _line(parsed.root, loc),
                               f"{zone!r} is not a time zone this PostgreSQL server knows"))
    wanted = {n.ip: (t.id, n.id, ("tenants", ti, "nas", ni, "ip"))
              for ti, t in enumerate(parsed.inventory.tenants)
              for ni, n in enumerate(t.nas)}
    if not wanted:
        return errors
    rows = conn.execute("SELECT host(ip), tenant_id, id FROM nas WHERE ip = ANY(%s::inet[])",
                        (list(wanted),)).fetchall()
    for ip, tenant_id, nas_id in rows:
        tenant, name, loc = wanted[ip]
        if (tenant_id, nas_id) != (tenant, name):
            errors.append(_msg(loc, _line(parsed.root, loc),
                               f"address {ip} is already used by NAS {nas_id!r} of tenant "
                               f"{tenant_id!r} (NAS are never renamed or moved by apply)"))
    return errors


def _device_conflicts(conn: psycopg.Connection, parsed: Parsed) -> list[str]:
    """A device address already held by another device row, or an ONU already linked to a
    subscriber whose link this file does not touch."""
    errors = []
    root = parsed.root
    tenants = parsed.inventory.tenants
    wanted = {d.address: (t.id, d.id, ("tenants", ti, "devices", di, "address"))
              for ti, t in enumerate(tenants) for di, d in enumerate(t.devices)}
    if wanted:
        rows = conn.execute("SELECT host(address), tenant_id, id FROM devices "
                            "WHERE address = ANY(%s::inet[])", (list(wanted),)).fetchall()
        for address, tenant_id, device_id in rows:
            tenant, name, loc = wanted[address]
            if (tenant_id, device_id) != (tenant, name):
                errors.append(_msg(loc, _line(root, loc),
                                   f"address {address} is already used by device "
                                   f"{device_id!r} of tenant {tenant_id!r} (devices are "
                                   "never renamed or moved by apply)"))
    for ti, t in enumerate(tenants):
        links = [(si, s) for si, s in enumerate(t.subscribers) if s.onu is not None]
        if not links:
            continue
        linked = [s.username for _, s in links]
        held = conn.execute(
            "SELECT olt_id, serial, pon, onu_id, username FROM onu_links "
            "WHERE tenant_id = %s AND NOT (username = ANY(%s))", (t.id, linked)).fetchall()
        by_serial = {(o, sn): u for o, sn, _, _, u in held if sn is not None}
        by_position = {(o, p, n): u for o, _, p, n, u in held if p is not None}
        for si, s in links:
            loc = ("tenants", ti, "subscribers", si, "onu")
            other = by_serial.get((s.onu.olt, s.onu.serial))
            if s.onu.serial is not None and other is not None:
                errors.append(_msg(loc + ("serial",), _line(root, loc + ("serial",)),
                                   f"ONU serial {s.onu.serial!r} on OLT {s.onu.olt!r} is "
                                   f"already linked to subscriber {other!r}"))
            other = by_position.get((s.onu.olt, s.onu.pon, s.onu.onu_id))
            if s.onu.pon is not None and other is not None:
                errors.append(_msg(loc + ("onu_id",), _line(root, loc + ("onu_id",)),
                                   f"ONU {s.onu.onu_id!r} on PON {s.onu.pon!r} of OLT "
                                   f"{s.onu.olt!r} is already linked to subscriber "
                                   f"{other!r}"))
    return errors


def apply(dsn: str, parsed: Parsed, source: str = "<inventory>") -> str:
    """Upsert a validated inventory in one transaction; return a one-line summary.

    The summary names devices and ONU links only when the file has some; it never
    contains a secret."""
    kinds = ("tenants", "plans", "nas", "subscribers", "devices", "onu_links")
    totals = dict.fromkeys(kinds, 0)
    created = updated = 0
    with connect(dsn) as conn, conn.transaction():
        # One apply at a time: concurrent applies of overlapping files queue up.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ispstream.inventory'))")
        errors = _database_conflicts(conn, parsed) + _device_conflicts(conn, parsed)
        if errors:
            raise InventoryError(source, errors)
        for t in parsed.inventory.tenants:
            counts = {}
            for kind, rows in _rows(t).items():
                totals[kind] += len(rows)
                if not rows:
                    counts[kind] = {"created": 0, "updated": 0, "unchanged": 0}
                    continue
                cols = len(rows[0])
                replaced = 0
                if kind == "onu_links":
                    replaced = len(conn.execute(_DROP_CHANGED_ONU_LINKS,
                                                _columns(rows, cols)[1:] + [t.id]).fetchall())
                try:
                    flags = [r[0] for r in conn.execute(_SQL[kind], _columns(rows, cols))]
                except psycopg.errors.IntegrityError as exc:
                    # never the driver's text: its DETAIL may quote a row with secrets
                    raise InventoryError(source, [
                        f"tenant {t.id!r}, {kind}: the database refused the rows "
                        f"(constraint {exc.diag.constraint_name or 'unknown'})"]) from None
                new = sum(flags) - replaced
                counts[kind] = {"created": new, "updated": len(flags) - new,
                                "unchanged": len(rows) - len(flags)}
                created += new
                updated += len(flags) - new
            conn.execute(
                "INSERT INTO audit_log (tenant_id, action, target, detail) "
                "VALUES (%s, 'inventory.apply', %s, %s::jsonb)",
                (t.id, Path(source).name, json.dumps(counts)))
    total = sum(totals.values())
    summary = ", ".join(f"{k}: {v}" for k, v in totals.items()
                        if v or k not in ("devices", "onu_links"))
    log.info("inventory applied from %s: %s", Path(source).name, summary)
    return (f"{summary} (upserted: {created} created, {updated} updated, "
            f"{total - created - updated} unchanged)")


def apply_file(dsn: str, path: str | Path) -> str:
    """Validate the YAML inventory at ``path`` and apply it (all or nothing).

    Returns a summary such as ``tenants: 1, plans: 2, nas: 1, subscribers: 300
    (upserted: 304 created, 0 updated, 0 unchanged)`` (with ``devices: N, onu_links: M``
    when the file has any). Raises ``InventoryError`` (and applies nothing) when the file
    is unreadable or invalid, when a NAS or device address is already used by another NAS
    or device in the database, or an ONU is already linked to another subscriber.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(source, [f"cannot read the file: {exc}"]) from None
    return apply(dsn, parse(text, source), source)
