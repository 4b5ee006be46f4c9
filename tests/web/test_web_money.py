"""The one money parser (billing.parse_yuan) the CLI, the API and the page share: property
tests, and the CLI's top-up refusing ``1e30`` without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import DEFAULT_MAX_TOPUP, MoneyError, parse_yuan
from meterhub.settings import DATABASE_URL_ENV

MAX = DEFAULT_MAX_TOPUP
fen = st.integers(min_value=1, max_value=int(MAX * 100))


@given(fen)
def test_every_amount_in_range_reads_back(n: int) -> None:
    amount = Decimal(n) / 100
    assert parse_yuan(f"{amount:.2f}", max_yuan=MAX) == amount
    if n % 100 == 0:
        assert parse_yuan(str(n // 100), max_yuan=MAX) == amount
        assert parse_yuan(n // 100, max_yuan=MAX) == amount


@given(st.text(max_size=25))
def test_what_is_accepted_is_plain_money(text: str) -> None:
    try:
        amount = parse_yuan(text, max_yuan=MAX)
    except MoneyError as exc:
        assert str(exc).startswith("amount: ")  # errors name the field
        return
    assert text.isascii() and set(text) <= set("0123456789.")
    assert Decimal(0) < amount <= MAX and amount == amount.quantize(Decimal("0.01"))
    assert amount == Decimal(text)


@given(fen, st.sampled_from(["_", "e", "E", " ", "+", "-", ",", "\u0660", "\uff11", "\x00"]),
       st.integers(min_value=0, max_value=8))
def test_no_separators_exponents_signs_or_foreign_digits(n: int, odd: str, at: int) -> None:
    text = f"{Decimal(n) / 100:.2f}"
    spoiled = text[:at] + odd + text[at:]
    with pytest.raises(MoneyError):
        parse_yuan(spoiled, max_yuan=MAX)


@pytest.mark.parametrize("bad", ["١٠", "1_0.00", "1e30", "1E3", "0", "0.00", "0.001", "-5",
                                 "100000.01", "01", ".5", "5.", "inf", "NaN", "", " 5",
                                 "9" * 30, 12.5, True, None])
def test_refused(bad: object) -> None:
    with pytest.raises(MoneyError, match=r"^price: "):
        parse_yuan(bad, max_yuan=MAX, field="price")  # type: ignore[arg-type]


def test_the_bound_is_configurable() -> None:
    assert parse_yuan("250", max_yuan=Decimal("250")) == Decimal("250.00")
    with pytest.raises(MoneyError, match="more than the 250"):
        parse_yuan("250.01", max_yuan=Decimal("250"))


def test_cli_topup_of_1e30_is_a_clear_error(db_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "billing", "topup", "--account", "a-1",
         "--amount", "1e30", "--channel", "bank", "--reference", "r-1"],
        env={**os.environ, DATABASE_URL_ENV: db_url}, capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 1
    assert "--amount: '1e30' is not an amount in yuan" in out.stderr
    assert "Traceback" not in out.stderr
