"""Rate profiles (``"2M/2M"``, ``"512k/4M"``): one parser for the inventory, the CoA
requests and the RADIUS replies, so what the inventory accepts is what enforcement sends.

A rate is ``upload/download`` (the NAS receives ``upload`` from the subscriber; MikroTik's
rx/tx order), each a number with an optional ``k``, ``M`` or ``G`` (10^3, 10^6, 10^9 bit/s).
One figure alone means both directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HALF = r"(\d{1,12}(?:\.\d{1,6})?)([kKMG]?)"
_RATE = re.compile(rf"^{_HALF}(?:/{_HALF})?$")
_UNITS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}


@dataclass(frozen=True)
class Rate:
    """A parsed rate profile, in whole bit/s per direction."""

    text: str
    up_bps: int
    down_bps: int

    @property
    def name(self) -> str:
        """Name-safe: ``2M/2M`` -> ``2M_2M``, ``1.5M/1M`` -> ``1p5M_1M``."""
        return self.text.replace("/", "_").replace(".", "p")

    def fields(self) -> dict[str, str]:
        """Template placeholders: rate, rate_name, up/down in bit/s and kbit/s."""
        return {"rate": self.text, "rate_name": self.name,
                "up_bps": str(self.up_bps), "down_bps": str(self.down_bps),
                "up_kbps": str(self.up_bps // 1000), "down_kbps": str(self.down_bps // 1000)}


def _bps(number: str, unit: str) -> int:
    whole, _, frac = number.partition(".")
    # exact decimal arithmetic: "1.5M" is 1,500,000 bit/s, never 1,499,999
    scaled = (int(whole) * 10**len(frac) + int(frac or 0)) * _UNITS[unit]
    bps, rem = divmod(scaled, 10**len(frac))
    if rem:
        raise ValueError(f"{number}{unit} is not a whole number of bit/s")
    return bps


def parse_rate(text: str, *, both: bool = False) -> Rate:
    """Parse a rate profile; with ``both`` the two directions must be given.

    ValueError (with a message fit for a user) when it is not a rate, a direction is
    zero, or a direction is not a whole number of bit/s.
    """
    if not isinstance(text, str):
        raise ValueError("bad rate: it must be text like '2M/2M'")
    m = _RATE.match(text.strip())
    if m is None or (both and m.group(3) is None):
        raise ValueError(f"bad rate {text!r}: it is not upload/download like 2M/2M or "
                         "512k/4M (a number with an optional k, M or G each)")
    up_n, up_u, down_n, down_u = m.groups()
    up = _bps(up_n, up_u)
    down = up if down_n is None else _bps(down_n, down_u)
    if not up or not down:
        raise ValueError(f"bad rate {text!r}: a direction is zero")
    return Rate(text.strip(), up, down)
