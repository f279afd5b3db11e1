"""OLT vendor profiles: which tables to walk and how their rows become ``OnuReading``s.

A profile is data (``profiles/<name>.yaml``, the name is the file stem); this module is
the one engine that reads every profile. Profiles are loaded and validated when the
poller starts: a bad profile is an error naming the file and the field, never a
surprise at the first poll. Format::

    description: free text
    source: where the OIDs, units and sentinels come from
    tables:                          # walked every poll, in this order
      onus:                          # the first table lists the ONUs (one row each)
        index: [if_index, ont]       # how the OID suffix after a column decodes
        columns:
          run_status: 1.3.6.1.4.1.2011.6.128.1.1.2.46.1.15
          onu_rx_dbm: {oid: 1.3.6..., convert: {div: 100}, sentinels: [2147483647]}
      ports:                         # later tables join onto the ONU rows by key
        index: [if_index]
        key: [if_index]              # default: the index fields
        columns:
          pon_name: 1.3.6.1.2.1.31.1.1.1.1
    reading:
      pon: "{pon_name}"              # template over the row's fields; "unknown" if one
      onu_id: "{ont}"                #   of them is missing or had no reading
      serial: "{serial}"             # optional (None when missing)
      online: {field: run_status, online: [1], offline: [2]}   # raw values; else None
      skip: {field: admin, values: [2]}                        # rows not reported
      remember_pon: false            # true: ONU ids are unique on the OLT; an ONU
                                     #   reported without a PON keeps its last one

Index parts: ``name`` (one sub-identifier), ``{name: ascii}`` (length-prefixed ASCII,
e.g. ``12.85.66.78.84...`` = ``UBNT...``), ``{name: implied_ascii}`` (the rest of the
suffix as ASCII), ``{name: {bits: {field: [shift, width], field2: [shift, width, add]}}}``
(one sub-identifier, plus fields cut out of its bits, ``add`` added to each).
A table may also take key fields out of a value: ``match: {field: if_name, regex:
'^EPON0/(?P<pon>\\d+):(?P<onu>\\d+)$'}`` (all-digit groups become integers).

Columns named like ``OnuReading`` measurements (``onu_rx_dbm``, ``onu_tx_dbm``,
``olt_rx_dbm``, ``temperature_c``, ``voltage_v``, ``bias_ma``, ``distance_m``) are
reported; other names are working fields for templates, joins, ``online`` and ``skip``.
A value goes raw -> ``sentinels`` (raw values that mean "no reading") -> ``convert`` ->
``valid`` range (defaults below; dBm -50..+10) -> reported, or ``None`` and counted.
An ONU whose ``online`` state is False reports no measurements at all.

Converters (``CONVERTERS``): ``int``, ``text``, ``{div: N}``, ``{linear: {mul, add}}``,
``mw_e4_to_dbm`` (raw/10000 mW -> dBm), ``parse_dbm_in_parens`` (``"0.03 mW (-14.61
dBm)"`` -> -14.61), ``parse_number`` (first number of ``"3.27 V"``), ``gpon_serial``
(8 octets: 4 ASCII vendor letters + 4 octets in hex, ``HWTC1A2B3C4D``).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from collectors.snmp.ber import parse_oid
from ispstream.contracts import OnuReading

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

MEASUREMENTS = ("onu_rx_dbm", "onu_tx_dbm", "olt_rx_dbm", "temperature_c", "voltage_v",
                "bias_ma", "distance_m")
DEFAULT_VALID: dict[str, tuple[float, float]] = {
    "onu_rx_dbm": (-50.0, 10.0), "onu_tx_dbm": (-50.0, 10.0), "olt_rx_dbm": (-50.0, 10.0),
    "temperature_c": (-50.0, 150.0), "voltage_v": (0.5, 10.0), "bias_ma": (0.0, 500.0),
    "distance_m": (0.0, 100_000.0),
}
DECIMALS = {"onu_rx_dbm": 2, "onu_tx_dbm": 2, "olt_rx_dbm": 2, "temperature_c": 2,
            "voltage_v": 3, "bias_ma": 3}
UNKNOWN = "unknown"

OID = tuple[int, ...]


class ProfileError(ValueError):
    """A profile file that cannot be used (the message names the file and the field)."""


class NoReading(Exception):
    """A converter could not make a number out of a raw value."""


# -- converters --------------------------------------------------------------------------

def _text(raw) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return raw.decode("utf-8", "replace").strip("\x00 \t\r\n")
    return str(raw).strip()


def _number(raw) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise NoReading(f"not a number: {raw!r}")
    return raw


_DBM_IN_PARENS = re.compile(r"\(\s*([-+]?\d+(?:\.\d+)?)\s*dBm\s*\)", re.IGNORECASE)
_FIRST_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def conv_int(_arg=None) -> Callable[[Any], Any]:
    return _number


def conv_text(_arg=None) -> Callable[[Any], Any]:
    return _text


def conv_div(arg) -> Callable[[Any], Any]:
    if isinstance(arg, bool) or not isinstance(arg, (int, float)) or arg == 0:
        raise ProfileError("div needs a non-zero number")
    divisor = float(arg)
    return lambda raw: _number(raw) / divisor


def conv_linear(arg) -> Callable[[Any], Any]:
    if not isinstance(arg, dict) or set(arg) - {"mul", "add"} or not arg:
        raise ProfileError("linear needs {mul: number, add: number}")
    mul, add = float(arg.get("mul", 1)), float(arg.get("add", 0))
    return lambda raw: _number(raw) * mul + add


def conv_mw_e4_to_dbm(_arg=None) -> Callable[[Any], Any]:
    def convert(raw):
        mw = _number(raw) / 10000.0
        if mw <= 0:
            raise NoReading("zero or negative power")
        return 10.0 * math.log10(mw)
    return convert


def conv_parse_dbm_in_parens(_arg=None) -> Callable[[Any], Any]:
    def convert(raw):
        m = _DBM_IN_PARENS.search(_text(raw))
        if not m:
            raise NoReading(f"no '(... dBm)' in {raw!r}")
        return float(m.group(1))
    return convert


def conv_parse_number(_arg=None) -> Callable[[Any], Any]:
    def convert(raw):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return raw
        m = _FIRST_NUMBER.search(_text(raw))
        if not m:
            raise NoReading(f"no number in {raw!r}")
        return float(m.group(0))
    return convert


def conv_gpon_serial(_arg=None) -> Callable[[Any], Any]:
    def convert(raw):
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw)
            if len(raw) == 8 and all(0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in raw[:4]):
                return raw[:4].decode("ascii") + raw[4:].hex().upper()
            if raw and all(0x21 <= b <= 0x7E for b in raw):
                return raw.decode("ascii")
            if not raw:
                raise NoReading("empty serial")
            return raw.hex().upper()
        return _text(raw)
    return convert


CONVERTERS: dict[str, Callable[[Any], Callable[[Any], Any]]] = {
    "int": conv_int, "text": conv_text, "div": conv_div, "linear": conv_linear,
    "mw_e4_to_dbm": conv_mw_e4_to_dbm, "parse_dbm_in_parens": conv_parse_dbm_in_parens,
    "parse_number": conv_parse_number, "gpon_serial": conv_gpon_serial,
}
_NEEDS_ARG = {"div", "linear"}


def make_converter(spec, where: str) -> Callable[[Any], Any]:
    """``"name"`` or ``{name: argument}`` -> a function raw -> value."""
    if isinstance(spec, str):
        name, arg = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        (name, arg), = spec.items()
    else:
        raise ProfileError(f"{where}: a converter is a name or {{name: argument}}")
    if name not in CONVERTERS:
        raise ProfileError(f"{where}: unknown converter {name!r} "
                           f"(known: {', '.join(sorted(CONVERTERS))})")
    if name in _NEEDS_ARG and arg is None:
        raise ProfileError(f"{where}: {name} needs an argument, e.g. {{{name}: ...}}")
    try:
        return CONVERTERS[name](arg)
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from None


# -- profile model -----------------------------------------------------------------------

@dataclass(frozen=True)
class IndexPart:
    name: str
    kind: str                                   # int | ascii | implied_ascii
    bits: tuple[tuple[str, int, int, int], ...] = ()   # (field, shift, width, add)


@dataclass
class Column:
    field: str
    oid: OID
    convert: Callable[[Any], Any] | None
    sentinels: frozenset
    valid: tuple[float, float] | None


@dataclass
class Table:
    name: str
    index: tuple[IndexPart, ...]
    columns: list[Column]
    key: tuple[str, ...] = ()
    match_field: str | None = None
    match_regex: re.Pattern | None = None

    def provides(self) -> set[str]:
        out = {p.name for p in self.index}
        out |= {b[0] for p in self.index for b in p.bits}
        out |= {c.field for c in self.columns}
        if self.match_regex is not None:
            out |= set(self.match_regex.groupindex)
        return out

    def decode_index(self, suffix: OID) -> dict | None:
        """The index fields of one OID suffix, or None when it does not fit."""
        out: dict[str, Any] = {}
        pos = 0
        n = len(suffix)
        for part in self.index:
            if part.kind == "int":
                if pos >= n:
                    return None
                value = suffix[pos]
                pos += 1
                out[part.name] = value
                for name, shift, width, add in part.bits:
                    out[name] = ((value >> shift) & ((1 << width) - 1)) + add
            elif part.kind == "ascii":
                if pos >= n:
                    return None
                length = suffix[pos]
                chars = suffix[pos + 1:pos + 1 + length]
                if len(chars) != length or any(c > 255 for c in chars):
                    return None
                out[part.name] = bytes(chars).decode("latin-1")
                pos += 1 + length
            else:  # implied_ascii: the rest
                chars = suffix[pos:]
                if any(c > 255 for c in chars):
                    return None
                out[part.name] = bytes(chars).decode("latin-1")
                pos = n
        return out if pos == n else None


class _Template:
    def __init__(self, text: str, where: str) -> None:
        try:
            self.fields = tuple(f for _, f, _, _ in string.Formatter().parse(text) if f)
        except ValueError as exc:
            raise ProfileError(f"{where}: bad template {text!r}: {exc}") from None
        if any(not f.isidentifier() for f in self.fields):
            raise ProfileError(f"{where}: template fields must be plain names: {text!r}")
        self.text = text

    def render(self, row: dict) -> str | None:
        for f in self.fields:
            if row.get(f) is None:
                return None
        return self.text.format_map(row)


@dataclass
class StateRule:
    field: str
    online: frozenset = frozenset()
    offline: frozenset = frozenset()
    otherwise: bool | None = None


@dataclass
class Profile:
    name: str
    description: str
    source: str
    tables: list[Table]
    pon: _Template
    onu_id: _Template
    serial: _Template | None
    online: StateRule | None
    skip: tuple[str, frozenset] | None
    raw_fields: frozenset = field(default_factory=frozenset)
    remember_pon: bool = False

    def columns(self) -> list[OID]:
        """Every column OID a poll walks, in profile order."""
        return [c.oid for t in self.tables for c in t.columns]


# -- loading and validation --------------------------------------------------------------

def _require(mapping: Any, where: str) -> dict:
    if not isinstance(mapping, dict):
        raise ProfileError(f"{where}: expected a mapping")
    return mapping


def _unknown_keys(mapping: dict, allowed: set[str], where: str) -> None:
    extra = set(mapping) - allowed
    if extra:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))} "
                           f"(allowed: {', '.join(sorted(allowed))})")


def _sentinel_set(values, where: str) -> frozenset:
    if values is None:
        return frozenset()
    if not isinstance(values, list):
        raise ProfileError(f"{where}: sentinels must be a list")
    out = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ProfileError(f"{where}: sentinel {v!r} must be an integer or a string")
        out.add(v)
        if isinstance(v, str):
            out.add(v.encode())
    return frozenset(out)


def _parse_index(spec, where: str) -> tuple[IndexPart, ...]:
    if not isinstance(spec, list) or not spec:
        raise ProfileError(f"{where}: index must be a non-empty list")
    parts = []
    for i, item in enumerate(spec):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            parts.append(IndexPart(item, "int"))
            continue
        if not isinstance(item, dict) or len(item) != 1:
            raise ProfileError(f"{w}: an index part is a name or {{name: kind}}")
        (name, kind), = item.items()
        if kind in ("ascii", "implied_ascii"):
            if kind == "implied_ascii" and i != len(spec) - 1:
                raise ProfileError(f"{w}: implied_ascii must be the last index part")
            parts.append(IndexPart(name, kind))
        elif isinstance(kind, dict) and set(kind) == {"bits"} and isinstance(kind["bits"], dict):
            bits = []
            for fname, b in kind["bits"].items():
                if (not isinstance(b, list) or len(b) not in (2, 3)
                        or not all(isinstance(x, int) and not isinstance(x, bool) for x in b)
                        or b[0] < 0 or not 0 < b[1] <= 32):
                    raise ProfileError(f"{w}.bits.{fname}: expected [shift, width] or "
                                       "[shift, width, add]")
                bits.append((fname, b[0], b[1], b[2] if len(b) == 3 else 0))
            parts.append(IndexPart(name, "int", tuple(bits)))
        else:
            raise ProfileError(f"{w}: unknown index kind {kind!r} "
                               "(ascii, implied_ascii or {bits: {...}})")
    names = [p.name for p in parts] + [b[0] for p in parts for b in p.bits]
    if len(names) != len(set(names)):
        raise ProfileError(f"{where}: index field names repeat")
    return tuple(parts)


def _parse_column(fname: str, spec, where: str) -> Column:
    if isinstance(spec, str):
        spec = {"oid": spec}
    spec = _require(spec, where)
    _unknown_keys(spec, {"oid", "convert", "sentinels", "valid"}, where)
    if "oid" not in spec:
        raise ProfileError(f"{where}: missing oid")
    try:
        oid = parse_oid(str(spec["oid"]))
    except ValueError as exc:
        raise ProfileError(f"{where}.oid: {exc}") from None
    convert = make_converter(spec["convert"], f"{where}.convert") if "convert" in spec else None
    valid = spec.get("valid", DEFAULT_VALID.get(fname))
    if valid is not None:
        if (not isinstance(valid, (list, tuple)) or len(valid) != 2
                or not all(isinstance(x, (int, float)) for x in valid) or valid[0] > valid[1]):
            raise ProfileError(f"{where}.valid: expected [low, high]")
        valid = (float(valid[0]), float(valid[1]))
    if fname in MEASUREMENTS and convert is None:
        convert = _number
    return Column(fname, oid, convert, _sentinel_set(spec.get("sentinels"),
                                                      f"{where}.sentinels"), valid)


def _parse_table(name: str, spec, where: str, first: bool) -> Table:
    spec = _require(spec, where)
    _unknown_keys(spec, {"index", "columns", "key", "match"}, where)
    index = _parse_index(spec.get("index"), f"{where}.index")
    cols = _require(spec.get("columns"), f"{where}.columns")
    if not cols:
        raise ProfileError(f"{where}.columns: at least one column")
    columns = [_parse_column(str(f), s, f"{where}.columns.{f}") for f, s in cols.items()]
    for c in columns:
        if not c.field.isidentifier():
            raise ProfileError(f"{where}.columns.{c.field}: field names must be plain names")
    table = Table(name, index, columns)
    if "match" in spec:
        m = _require(spec["match"], f"{where}.match")
        _unknown_keys(m, {"field", "regex"}, f"{where}.match")
        try:
            table.match_regex = re.compile(str(m.get("regex")))
        except re.error as exc:
            raise ProfileError(f"{where}.match.regex: {exc}") from None
        table.match_field = m.get("field")
        if table.match_field not in {c.field for c in columns} | {p.name for p in index}:
            raise ProfileError(f"{where}.match.field: {table.match_field!r} is not a "
                               "column or index field of this table")
        if not table.match_regex.groupindex:
            raise ProfileError(f"{where}.match.regex: needs named groups (?P<name>...)")
    key = spec.get("key")
    if first and key is not None:
        raise ProfileError(f"{where}.key: the first table lists the ONUs and has no key")
    if key is None:
        key = [p.name for p in index]
    if not isinstance(key, list) or not key or not all(isinstance(k, str) for k in key):
        raise ProfileError(f"{where}.key: expected a list of field names")
    missing = set(key) - table.provides()
    if missing:
        raise ProfileError(f"{where}.key: {', '.join(sorted(missing))} not produced by "
                           "this table's index, columns or match")
    table.key = tuple(key)
    return table


def _parse_state(spec, where: str, known: set[str]) -> StateRule:
    spec = _require(spec, where)
    _unknown_keys(spec, {"field", "online", "offline", "else"}, where)
    if spec.get("field") not in known:
        raise ProfileError(f"{where}.field: {spec.get('field')!r} is not a field of any table")
    otherwise = spec.get("else")
    if otherwise is not None and not isinstance(otherwise, bool):
        raise ProfileError(f"{where}.else: true, false or null")
    rule = StateRule(spec["field"], _sentinel_set(spec.get("online", []), f"{where}.online"),
                     _sentinel_set(spec.get("offline", []), f"{where}.offline"), otherwise)
    if not rule.online and not rule.offline:
        raise ProfileError(f"{where}: give the raw values meaning online and/or offline")
    return rule


def parse_profile(name: str, doc: Any, origin: str = "") -> Profile:
    """Validate one profile document; ``ProfileError`` names ``origin`` and the field."""
    where = origin or name
    try:
        doc = _require(doc, where)
        _unknown_keys(doc, {"name", "description", "source", "tables", "reading"}, where)
        if "name" in doc and doc["name"] != name:
            raise ProfileError(f"{where}: name {doc['name']!r} differs from the file "
                               f"name {name!r}")
        tables_doc = _require(doc.get("tables"), f"{where}: tables")
        if not tables_doc:
            raise ProfileError(f"{where}: tables: at least one table")
        tables = []
        available: set[str] = set()
        for i, (tname, tspec) in enumerate(tables_doc.items()):
            table = _parse_table(str(tname), tspec, f"{where}: tables.{tname}", i == 0)
            if i and set(table.key) - available:
                raise ProfileError(
                    f"{where}: tables.{tname}.key: "
                    f"{', '.join(sorted(set(table.key) - available))} not known from the "
                    "tables before it (join order is the order of the tables)")
            available |= table.provides()
            tables.append(table)
        reading = _require(doc.get("reading"), f"{where}: reading")
        _unknown_keys(reading, {"pon", "onu_id", "serial", "online", "skip", "remember_pon"},
                      f"{where}: reading")
        templates = {}
        for key in ("pon", "onu_id", "serial"):
            if key not in reading:
                if key == "serial":
                    continue
                raise ProfileError(f"{where}: reading.{key} is required")
            if not isinstance(reading[key], str):
                raise ProfileError(f"{where}: reading.{key}: a template string")
            tpl = _Template(reading[key], f"{where}: reading.{key}")
            missing = set(tpl.fields) - available
            if missing:
                raise ProfileError(f"{where}: reading.{key}: unknown field(s) "
                                   f"{', '.join(sorted(missing))}")
            templates[key] = tpl
        online = (_parse_state(reading["online"], f"{where}: reading.online", available)
                  if "online" in reading else None)
        skip = None
        if "skip" in reading:
            s = _require(reading["skip"], f"{where}: reading.skip")
            _unknown_keys(s, {"field", "values"}, f"{where}: reading.skip")
            if s.get("field") not in available:
                raise ProfileError(f"{where}: reading.skip.field: {s.get('field')!r} is not "
                                   "a field of any table")
            skip = (s["field"], _sentinel_set(s.get("values"), f"{where}: reading.skip.values"))
        columns = [c.oid for t in tables for c in t.columns]
        if len(columns) != len(set(columns)):
            raise ProfileError(f"{where}: the same column OID appears twice")
        raw_fields = frozenset(f for f in ((online.field if online else None),
                                           (skip[0] if skip else None)) if f)
        remember_pon = reading.get("remember_pon", False)
        if not isinstance(remember_pon, bool):
            raise ProfileError(f"{where}: reading.remember_pon: true or false")
        return Profile(name, str(doc.get("description", "")), str(doc.get("source", "")),
                       tables, templates["pon"], templates["onu_id"], templates.get("serial"),
                       online, skip, raw_fields, remember_pon)
    except ProfileError:
        raise
    except (TypeError, AttributeError, KeyError) as exc:  # a shape we did not anticipate
        raise ProfileError(f"{where}: malformed profile ({type(exc).__name__}: {exc})") from None


def load_profile(path: Path) -> Profile:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path.name}: not valid YAML: {exc}") from None
    return parse_profile(path.stem, doc, path.name)


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """Every ``*.yaml`` profile in ``directory`` (default: the shipped ones), by name."""
    directory = directory or PROFILES_DIR
    profiles = {p.stem: load_profile(p) for p in sorted(directory.glob("*.yaml"))}
    if not profiles:
        raise ProfileError(f"no profiles (*.yaml) in {directory}")
    return profiles


def profile_names(directory: Path | None = None) -> list[str]:
    """The names a device's ``vendor_profile`` may take (the shipped profile files)."""
    return sorted(p.stem for p in (directory or PROFILES_DIR).glob("*.yaml"))


# -- decoding ----------------------------------------------------------------------------

@dataclass
class DecodeStats:
    """What one decode skipped, by reason."""

    onus: int = 0
    sentinel: int = 0          # raw value meaning "no reading"
    implausible: int = 0       # converted value outside the valid range
    unparsed: int = 0          # converter could not read the value
    offline: int = 0           # measurements of an offline ONU, dropped
    skipped_rows: int = 0      # rows the profile's skip rule left out
    bad_index: int = 0         # OID suffixes that did not fit the index

    def add(self, other: "DecodeStats") -> None:
        for k, v in vars(other).items():
            setattr(self, k, getattr(self, k) + v)


def _store(row: dict, col: Column, raw, stats: DecodeStats, keep_raw: bool) -> None:
    if keep_raw:
        row[col.field + "#raw"] = raw
    if raw in col.sentinels:
        stats.sentinel += 1
        row[col.field] = None
        return
    convert = col.convert
    if convert is None:
        value = _text(raw) if isinstance(raw, (bytes, bytearray)) else raw
    else:
        try:
            value = convert(raw)
        except (NoReading, ValueError, OverflowError):
            stats.unparsed += 1
            row[col.field] = None
            return
    valid = col.valid
    if valid is not None and isinstance(value, (int, float)):
        if not valid[0] <= value <= valid[1] or value != value:
            stats.implausible += 1
            row[col.field] = None
            return
    row[col.field] = value


def _table_rows(table: Table, walks: dict[OID, list], stats: DecodeStats,
                raw_fields: frozenset) -> dict[OID, dict]:
    rows: dict[OID, dict] = {}
    for col in table.columns:
        keep_raw = col.field in raw_fields
        for suffix, raw in walks.get(col.oid, ()):
            row = rows.get(suffix)
            if row is None:
                row = table.decode_index(suffix)
                if row is None:
                    stats.bad_index += 1
                    continue
                rows[suffix] = row
            _store(row, col, raw, stats, keep_raw)
    if table.match_regex is not None:
        for row in rows.values():
            value = row.get(table.match_field)
            m = table.match_regex.search(value if isinstance(value, str) else str(value))
            if m:
                for k, v in m.groupdict().items():
                    if v is not None:
                        row[k] = int(v) if v.isdigit() else v
    return rows


def _state(rule: StateRule | None, row: dict) -> bool | None:
    if rule is None:
        return None
    key = rule.field + "#raw"
    if key not in row:
        return None
    raw = row[key]
    if raw in rule.online:
        return True
    if raw in rule.offline:
        return False
    return rule.otherwise


def decode(profile: Profile, walks: dict[OID, list], stats: DecodeStats | None = None,
           pon_memory: dict[str, str] | None = None) -> list[OnuReading]:
    """The ONUs in one poll's walks (``{column OID: [(suffix, raw value), ...]}``).

    ``pon_memory`` (one dict per OLT, kept by the caller between polls) serves profiles
    with ``remember_pon``: their ONU ids are unique on the OLT (serials), and an ONU the
    OLT reports without a PON (UFiber: offline ONUs have port 0) keeps the PON it was
    last seen on, so its identity (PON, ONU id) does not change when it goes offline.
    """
    stats = stats if stats is not None else DecodeStats()
    raw_fields = profile.raw_fields
    source, *joined = profile.tables
    rows = _table_rows(source, walks, stats, raw_fields)
    for table in joined:
        by_key = {}
        for other in _table_rows(table, walks, stats, raw_fields).values():
            k = tuple(other.get(f) for f in table.key)
            if None not in k:
                by_key[k] = other
        if not by_key:
            continue
        key = table.key
        for row in rows.values():
            other = by_key.get(tuple(row.get(f) for f in key))
            if other is not None:
                for f, v in other.items():
                    if f not in row or row[f] is None:
                        row[f] = v
    out = []
    skip = profile.skip
    remember = profile.remember_pon and pon_memory is not None
    seen: set[str] = set()
    for row in rows.values():
        if skip is not None and row.get(skip[0] + "#raw") in skip[1]:
            stats.skipped_rows += 1
            continue
        online = _state(profile.online, row)
        values = {}
        for m in MEASUREMENTS:
            v = row.get(m)
            if v is None:
                continue
            if online is False:
                stats.offline += 1
                continue
            if m == "distance_m":
                v = int(round(v))
            else:
                v = round(float(v), DECIMALS[m])
            values[m] = v
        serial = profile.serial.render(row) if profile.serial else None
        pon = profile.pon.render(row) or UNKNOWN
        onu_id = profile.onu_id.render(row) or UNKNOWN
        if remember:
            seen.add(onu_id)
            if pon != UNKNOWN:
                pon_memory[onu_id] = pon
            else:
                pon = pon_memory.get(onu_id, UNKNOWN)
        out.append(OnuReading(
            pon=pon,
            onu_id=onu_id,
            serial=serial or None,
            online=online,
            **values,
        ))
    if remember:
        for gone in set(pon_memory) - seen:
            del pon_memory[gone]
    stats.onus += len(out)
    return out


def columns_of(profiles: Iterable[Profile]) -> set[OID]:
    return {oid for p in profiles for oid in p.columns()}
