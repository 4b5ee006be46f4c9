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


def post_charge(carry: Decimal, exact: Decimal) -> tuple[int, Decimal]:
    """Add an exact charge to the carried remainder; return (fen to post now, new carry).

    Because whole fen pass through rounding unchanged, posting ``to_fen(carry + exact)`` and
    keeping the rest is the same as posting the change of the rounded running total.
    Negative ``exact`` (a credit adjustment) works the same way.
    """
    total = carry + exact
    fen = to_fen(total)
    return fen, total - Decimal(fen) / 100
