"""Money: Decimal only, rounded once per invoice line with an explicit mode."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

# ISO 4217 minor units that are not 2.
_MINOR_UNITS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "XOF": 0, "XAF": 0,
                "UGX": 0, "PYG": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3,
                "IQD": 3, "LYD": 3}

ROUNDING = ROUND_HALF_UP
GB = 10**9


def minor_units(currency: str) -> int:
    """Number of decimal places of ``currency`` (ISO 4217; 2 unless listed)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round an exact amount to the currency's minor unit, half up (the one rounding step)."""
    quantum = Decimal(1).scaleb(-minor_units(currency))
    with localcontext() as ctx:
        ctx.prec = 60
        return amount.quantize(quantum, rounding=ROUNDING)


def overage_charge(over_bytes: int, price_per_gb: Decimal) -> Decimal:
    """Exact charge for ``over_bytes`` at ``price_per_gb`` (GB = 10^9 bytes); no rounding."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(over_bytes) * price_per_gb) / GB
