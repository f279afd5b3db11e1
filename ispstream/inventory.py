"""Declarative inventory: tenants, plans, NAS and subscribers from one YAML file.

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
  policy ``{at: 100, action: throttle, rate: R}`` (the fair-use throttle, enforced).

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
_THROTTLE = re.compile(r"^\d+(?:\.\d+)?[kKMG]?/\d+(?:\.\d+)?[kKMG]?$")


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
        if v is not None and not _THROTTLE.match(v):
            raise ValueError("must be a rate limit like '2M/2M' (rx/tx, optional k/M/G)")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "AfterQuota":
        if (self.overage_per_gb is None) == (self.throttle is None):
            raise ValueError("give exactly one of overage_per_gb or throttle")
        return self


def _rate_profile(v: str | None) -> str | None:
    if v is not None and not _THROTTLE.match(v):
        raise ValueError("must be a rate limit like '2M/2M' or '512k/1M' (rx/tx, optional "
                         "k/M/G)")
    return v


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


class SubscriberSpec(_Strict):
    """A subscriber: the RADIUS User-Name, their plan and billing-cycle anchor day."""

    username: str = Field(min_length=1, max_length=253)
    plan: str = Field(min_length=1)
    cycle_anchor_day: int = Field(default=1, ge=1, le=31)


class TenantSpec(_Strict):
    """One ISP: its time zone (IANA), currency (ISO 4217) and inventory."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    plans: list[PlanSpec] = Field(default_factory=list)
    nas: list[NasSpec] = Field(default_factory=list)
    subscribers: list[SubscriberSpec] = Field(default_factory=list)

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


def _cross_reference_errors(inv: Inventory, root: yaml.Node | None) -> list[str]:
    """Duplicate ids, unknown plans and NAS addresses used twice (within the file)."""
    errors: list[str] = []

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


def parse(text: str, source: str = "<inventory>") -> Parsed:
    """Parse and validate an inventory document; raise ``InventoryError`` listing every
    problem with its field path and line. Touches no database."""
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
    errors = _cross_reference_errors(inv, root)
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
}


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
    }


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


def apply(dsn: str, parsed: Parsed, source: str = "<inventory>") -> str:
    """Upsert a validated inventory in one transaction; return a one-line summary."""
    kinds = ("tenants", "plans", "nas", "subscribers")
    totals = dict.fromkeys(kinds, 0)
    created = updated = 0
    with connect(dsn) as conn, conn.transaction():
        # One apply at a time: concurrent applies of overlapping files queue up.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ispstream.inventory'))")
        errors = _database_conflicts(conn, parsed)
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
                flags = [r[0] for r in conn.execute(_SQL[kind], _columns(rows, cols))]
                new = sum(flags)
                counts[kind] = {"created": new, "updated": len(flags) - new,
                                "unchanged": len(rows) - len(flags)}
                created += new
                updated += len(flags) - new
            conn.execute(
                "INSERT INTO audit_log (tenant_id, action, target, detail) "
                "VALUES (%s, 'inventory.apply', %s, %s::jsonb)",
                (t.id, Path(source).name, json.dumps(counts)))
    total = sum(totals.values())
    summary = ", ".join(f"{k}: {v}" for k, v in totals.items())
    log.info("inventory applied from %s: %s", Path(source).name, summary)
    return (f"{summary} (upserted: {created} created, {updated} updated, "
            f"{total - created - updated} unchanged)")


def apply_file(dsn: str, path: str | Path) -> str:
    """Validate the YAML inventory at ``path`` and apply it (all or nothing).

    Returns a summary such as ``tenants: 1, plans: 2, nas: 1, subscribers: 300
    (upserted: 304 created, 0 updated, 0 unchanged)``. Raises ``InventoryError`` (and
    applies nothing) when the file is unreadable or invalid, or when a NAS address is
    already used by another NAS in the database.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(source, [f"cannot read the file: {exc}"]) from None
    return apply(dsn, parse(text, source), source)
