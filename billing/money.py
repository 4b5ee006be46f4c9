"""Money arithmetic: Decimal yuan outside, integer fen in the ledger, no floats anywhere.

Rounding rule: interval charges are priced exactly (kWh x price has at most 12 decimal
places), and posted in whole fen rounded half up (``floor(x + 1/2)``, towards +infinity, so a
rounding step commutes with adding whole fen); what rounding left out (the carry, at
most half a fen either way) is kept per account and added to the next charge. So the fen
posted for a series of intervals always equals the rounded exact total of that series:
charging intervals one by one yields the same money as charging their sum, and nothing
drifts.
"""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from billing.errors import BillingError

FEN = Decimal("0.01")
EXACT = Decimal("1E-12")  # the scale of exact amounts kept in the carry column


class MoneyError(BillingError):
    """An amount that cannot be money: a float, too many decimals, not a number."""


_HALF = Decimal("0.5")


def to_fen(total: Decimal) -> int:
    """Round an exact yuan amount to whole fen: ``floor(100 x + 1/2)`` (the rule above)."""
    return int((total * 100 + _HALF).to_integral_value(rounding=ROUND_FLOOR))


def from_fen(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(FEN)


def parse_amount(value: object, *, what: str = "amount") -> Decimal:
    """An amount from a person or an API: at most two decimals, never a float."""
    if isinstance(value, float):
        raise MoneyError(f"{what}: {value!r} is a float; pass a string or Decimal")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise MoneyError(f"{what}: {value!r} is not a number") from None
    if not amount.is_finite():
        raise MoneyError(f"{what}: {value!r} is not finite")
    if amount != amount.quantize(FEN):
        raise MoneyError(f"{what}: {value!r} has more than two decimals (fen)")
    return amount.quantize(FEN)


_YUAN_TEXT = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{1,2})?")
MAX_AMOUNT_CHARS = 20
DEFAULT_MAX_TOPUP = Decimal("100000")  # yuan in one top-up, unless a site sets its own


def parse_yuan(text: str | int, *, max_yuan: Decimal, field: str = "amount") -> Decimal:
    """A payment amount as a person or client types it, checked the one way the CLI, the API
    and the page share: ASCII digits only, an optional point and at most two decimals, more
    than zero and at most ``max_yuan``. No signs, spaces, underscores, exponents or other
    scripts' digits (``Decimal`` and ``int`` accept ``"1_0"``, ``"1e30"`` and ``"١٠"``;
    this does not). Raises :class:`MoneyError` naming ``field``."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise MoneyError(f"{field}: give the amount as text like \"50.00\"")
    raw = str(text)
    if len(raw) <= MAX_AMOUNT_CHARS and re.fullmatch(r"[0-9]+\.[0-9]{3,}", raw):
        raise MoneyError(f"{field}: {raw!r} has more than two decimals (fen)")
    if len(raw) > MAX_AMOUNT_CHARS or not _YUAN_TEXT.fullmatch(raw):
        raise MoneyError(f"{field}: {raw[:MAX_AMOUNT_CHARS]!r} is not an amount in yuan; "
                         "write digits with at most two decimals, like 50 or 50.25")
    amount = Decimal(raw).quantize(FEN)
    if amount <= 0:
        raise MoneyError(f"{field}: must be more than zero")
    if amount > max_yuan:
        raise MoneyError(f"{field}: {amount} is more than the {max_yuan} allowed in one "
                         "top-up; split it")
    return amount


def post_charge(carry: Decimal, exact: Decimal) -> tuple[int, Decimal]:
    """Add an exact charge to the carried remainder; return (fen to post now, new carry).

    Because whole fen pass through rounding unchanged, posting ``to_fen(carry + exact)`` and
    keeping the rest is the same as posting the change of the rounded running total.
    Negative ``exact`` (a credit adjustment) works the same way.
    """
    total = carry + exact
    fen = to_fen(total)
    return fen, total - Decimal(fen) / 100
