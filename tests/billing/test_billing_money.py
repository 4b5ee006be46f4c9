from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import MoneyError, from_fen, parse_amount, post_charge, to_fen

exact = st.decimals(min_value=Decimal("-50"), max_value=Decimal("50"), places=12)


@pytest.mark.parametrize(
    ("yuan", "fen"),
    [("0.004", 0), ("0.005", 1), ("-0.005", 0), ("-0.0051", -1), ("1.234", 123), ("12.345", 1235)],
)
def test_to_fen_rounds_half_up(yuan: str, fen: int) -> None:
    assert to_fen(Decimal(yuan)) == fen


@pytest.mark.parametrize("bad", [1.5, "abc", "1.234", "NaN", "inf"])
def test_parse_amount_refuses_non_money(bad: object) -> None:
    with pytest.raises(MoneyError):
        parse_amount(bad)


def test_parse_amount_and_back() -> None:
    assert parse_amount("50") == Decimal("50.00")
    assert from_fen(5012) == Decimal("50.12")


@given(st.lists(exact, min_size=1, max_size=60))
def test_posting_one_by_one_equals_posting_the_sum(amounts: list[Decimal]) -> None:
    carry = Decimal(0)
    posted = 0
    for a in amounts:
        fen, carry = post_charge(carry, a)
        posted += fen
    total = sum(amounts, Decimal(0))
    assert posted == to_fen(total)
    assert posted + carry * 100 == total * 100  # nothing lost: fen posted + carry = exact
    assert Decimal("-0.005") <= carry < Decimal("0.005")
