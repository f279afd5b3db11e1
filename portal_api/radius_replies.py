"""RADIUS reply attributes for an enforced state, per NAS vendor.

The mapping is data (``radius_attributes.yaml`` next to this file): vendor -> what to
reply for ``throttle`` and for ``walled_garden``. ``load`` validates it once at start-up;
``RadiusReplies.throttle`` / ``.walled_garden`` render the attributes, and
``rest_body`` turns them into the JSON that FreeRADIUS's ``rest`` module applies.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from ispstream.rates import Rate, parse_rate  # noqa: F401 - re-exported

DEFAULT_PATH = Path(__file__).with_name("radius_attributes.yaml")

KINDS = ("throttle", "walled_garden")
RATE_FIELDS = {"rate", "rate_name", "up_bps", "down_bps", "up_kbps", "down_kbps"}
PLACEHOLDERS = {"throttle": RATE_FIELDS, "walled_garden": {"name"}}

_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")


class RadiusMappingError(ValueError):
    """The attribute mapping file is not valid."""


Attributes = dict[str, list[str]]
"""Attribute name -> values; more than one value means several attributes (``+=``)."""


@dataclass(frozen=True)
class RadiusReplies:
    """The validated mapping: vendor -> kind -> attribute -> value templates."""

    vendors: dict[str, dict[str, dict[str, list[str]]]]

    def throttle(self, vendor: str, rate: Rate) -> Attributes:
        """What to reply for a throttled subscriber on a NAS of ``vendor``."""
        return self._render(vendor, "throttle", rate.fields())

    def walled_garden(self, vendor: str, name: str) -> Attributes:
        """What to reply for a suspended subscriber put into walled garden ``name``."""
        return self._render(vendor, "walled_garden", {"name": name})

    def _render(self, vendor: str, kind: str, values: dict[str, str]) -> Attributes:
        entry = self.vendors.get(vendor) or self.vendors.get("generic") or {}
        return {attr: [t.format_map(values) for t in templates]
                for attr, templates in entry.get(kind, {}).items()}


def rest_body(attrs: Attributes) -> dict:
    """The response body FreeRADIUS's rest module applies to the reply list.

    Values are not xlat-expanded by FreeRADIUS (``do_xlat: false``); one value replaces
    what earlier modules set (``:=``), several are all added (``+=``).
    """
    return {f"reply:{attr}": {"op": ":=" if len(values) == 1 else "+=",
                              "do_xlat": False, "value": values}
            for attr, values in attrs.items()}


def _templates(where: str, value: object, kind: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise RadiusMappingError(f"{where}: expected a non-empty string or a list of them")
    for item in items:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(item) if f is not None}
        except ValueError as exc:
            raise RadiusMappingError(f"{where}: {exc}") from None
        unknown = fields - PLACEHOLDERS[kind]
        if unknown:
            raise RadiusMappingError(
                f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))}; "
                f"{kind} may use {', '.join(sorted(PLACEHOLDERS[kind]))}")
    return list(items)


def load(path: Path = DEFAULT_PATH) -> RadiusReplies:
    """Read and validate the mapping file; ``RadiusMappingError`` says what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RadiusMappingError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise RadiusMappingError(f"{path}: expected a map of vendors")
    vendors: dict[str, dict[str, dict[str, list[str]]]] = {}
    for vendor, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) - set(KINDS):
            raise RadiusMappingError(f"{path}: {vendor}: expected only "
                                     f"{' and '.join(KINDS)}")
        vendors[vendor] = {}
        for kind in KINDS:
            attrs = entry.get(kind) or {}
            if not isinstance(attrs, dict):
                raise RadiusMappingError(f"{path}: {vendor}.{kind}: expected a map")
            for attr in attrs:
                if not isinstance(attr, str) or not _ATTRIBUTE.match(attr):
                    raise RadiusMappingError(f"{path}: {vendor}.{kind}: {attr!r} is not an "
                                             "attribute name")
            vendors[vendor][kind] = {
                attr: _templates(f"{path}: {vendor}.{kind}.{attr}", value, kind)
                for attr, value in attrs.items()}
    return RadiusReplies(vendors)
