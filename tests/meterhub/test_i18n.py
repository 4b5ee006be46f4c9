"""meterhub.i18n: language negotiation, the zh-CN catalogue covering every message the code
wraps in ``_()``, lookups with placeholders, and formatting per language."""

from __future__ import annotations

import ast
import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterhub import i18n
from meterhub.i18n import _

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("meterhub", "launcher", "gateway", "collector", "billing", "firmware_sim", "web")


def _wrapped_messages() -> dict[str, str]:
    """Every literal message passed to ``_()`` or ``N_()`` in the parts, with where it is
    (what ``pybabel extract -k _ -k N_`` finds)."""
    found: dict[str, str] = {}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in ("_", "N_")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    found.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _fields(message: str) -> set[str]:
    return {
        name for _text, name, _spec, _conv in string.Formatter().parse(message) if name is not None
    }


def test_every_wrapped_message_has_a_chinese_translation() -> None:
    messages = _wrapped_messages()
    assert len(messages) > 50  # the extraction finds the web's and the CLIs' messages
    zh = i18n.catalogue("zh-CN")
    missing = {m: where for m, where in messages.items() if m not in zh}
    assert not missing, f"no zh-CN translation (meterhub/locale/zh_CN/...): {missing}"
    for message, translation in zh.items():
        assert _fields(translation) == _fields(message), (message, translation)


def test_lookup_fills_placeholders_in_the_reader_language() -> None:
    with i18n.language("zh-CN"):
        assert _("{name} is required", name="amount") == "缺少 amount"
        assert _("a message nobody translated {x}", x=1) == "a message nobody translated 1"
    assert _("{name} is required", name="amount") == "amount is required"
    assert i18n.gettext("wrong user name or password", "zh-CN") == "用户名或密码错误"
    assert i18n.current() == "en"


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR, zh;q=0.5", "zh-CN"),
        ("en;q=0.2, zh-Hans-CN;q=0.7", "zh-CN"),
        ("zh-CN;q=0, en;q=0.1", "en"),
        ("de, fr", "en"),
        ("", "en"),
        (None, "en"),
        ("zh-TW;q=oops, ;;, en", "en"),
    ],
)
def test_accept_language(header: str | None, lang: str) -> None:
    assert i18n.negotiate(header) == lang


@given(st.text(max_size=200))
def test_any_accept_language_header_gives_a_supported_language(header: str) -> None:
    assert i18n.negotiate(header) in i18n.LANGUAGES


@pytest.mark.parametrize(
    ("env", "lang"),
    [
        ({"METERHUB_LANG": "zh-CN", "LANG": "en_US.UTF-8"}, "zh-CN"),
        ({"LC_ALL": "zh_CN.UTF-8", "LANG": "en_US.UTF-8"}, "zh-CN"),
        ({"LANG": "zh_CN.GB18030"}, "zh-CN"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "de_DE.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_cli_language_from_environment(env: dict[str, str], lang: str) -> None:
    assert i18n.from_environment(env) == lang


def test_numbers_money_and_times_per_language() -> None:
    assert i18n.number(Decimal("1234.5678"), 2, "en") == "1,234.57"
    assert i18n.yuan(Decimal("-1234.5"), "zh-CN") == "-¥1,234.50"
    assert i18n.yuan(Decimal("0.1"), "en") == "¥0.10"
    moment = datetime(2026, 12, 3, 7, 5, 9, tzinfo=UTC)
    beijing = timezone(timedelta(hours=8))
    assert i18n.when(moment, beijing, "zh-CN") == "2026年12月3日 15:05:09"
    assert i18n.when(moment, beijing, "en") == "Dec 3, 2026, 3:05:09\u202fPM"
