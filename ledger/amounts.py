"""Amounts: integers in micro-units on the wire and in storage; decimals for humans.

1 token = 10**6 micro-units. Every amount on the wire is a non-negative integer that fits a
signed 64-bit integer (so no arithmetic in the ledger can overflow a LevelDB counter encoded
as i64, and msgpack encodes it compactly). Decimal text is parsed exactly, never through float.
"""
from __future__ import annotations

import re

from fognode.ledger.errors import AmountError

DECIMALS = 6
MICRO = 10 ** DECIMALS
MAX_AMOUNT = 2 ** 63 - 1   # micro-units; also the bound of any balance or supply counter

_DECIMAL = re.compile(r"^(\d+)(?:\.(\d*))?$|^\.(\d+)$")


def parse_amount(text: str | int, *, allow_zero: bool = False) -> int:
    """Micro-units of a decimal token amount ("12.5" -> 12_500_000).

    Raises AmountError for negative, non-decimal, more than 6 decimals, zero (unless
    allow_zero) or over MAX_AMOUNT. An int is taken as whole tokens.
    """
    if isinstance(text, bool):
        raise AmountError("an amount is a decimal number, not a boolean")
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        raise AmountError(f"an amount is a decimal string, got {type(text).__name__}")
    s = text.strip().replace("_", "")
    if s.startswith("-"):
        raise AmountError(f"amount {text!r} is negative")
    if s.startswith("+"):
        s = s[1:]
    m = _DECIMAL.match(s)
    if not m:
        raise AmountError(f"amount {text!r} is not a decimal number like 12.5")
    whole = m.group(1) or "0"
    frac = m.group(2) if m.group(1) is not None else m.group(3)
    frac = frac or ""
    if len(frac) > DECIMALS:
        if frac[DECIMALS:].strip("0"):
            raise AmountError(f"amount {text!r} has more than {DECIMALS} decimals")
        frac = frac[:DECIMALS]
    if len(whole) > 30:
        raise AmountError(f"amount {text!r} overflows the ledger's 64-bit amounts")
    micro = int(whole) * MICRO + int(frac.ljust(DECIMALS, "0"))
    if micro > MAX_AMOUNT:
        raise AmountError(f"amount {text!r} overflows the ledger's 64-bit amounts "
                          f"(max {format_amount(MAX_AMOUNT)})")
    if micro == 0 and not allow_zero:
        raise AmountError(f"amount {text!r} is zero")
    return micro


def format_amount(micro: int) -> str:
    """Decimal text of micro-units, trailing zeros trimmed (12_500_000 -> "12.5")."""
    if isinstance(micro, bool) or not isinstance(micro, int):
        raise AmountError(f"micro-units are an integer, got {type(micro).__name__}")
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(DECIMALS, '0').rstrip('0')}"


def check_amount(value: int, what: str, *, allow_zero: bool = False) -> int:
    """Validate an integer micro-unit amount (from the wire or the genesis)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"{what} must be an integer number of micro-units")
    if value < 0:
        raise AmountError(f"{what} = {value} is negative")
    if value == 0 and not allow_zero:
        raise AmountError(f"{what} is zero")
    if value > MAX_AMOUNT:
        raise AmountError(f"{what} = {value} overflows 64 bits")
    return value
