"""Messages people read, in English or Simplified Chinese (zh-CN).

English is the source language: a message is written in English where it is raised or
printed, wrapped in ``_()``, and looked up in the gettext catalogue of the reader's language
(``meterhub/locale/<lang>/LC_MESSAGES/meterhub.po``, read with Babel; no compile step).
Placeholders are ``{name}``, filled after the lookup, so the translation can move them::

    from meterhub.i18n import _
    raise SettingsError(_("no meter at address {address}", address=addr))

The language is a context variable: a CLI sets it once from the environment
(``METERHUB_LANG``, then ``LC_ALL``, ``LC_MESSAGES``, ``LANG``), the web per request from
``Accept-Language``. A message without a translation is shown in English, never dropped.
Numbers, money and times are formatted for the language with :func:`number`,
:func:`yuan` and :func:`when`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime, tzinfo
from decimal import Decimal
from functools import cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

LANGUAGES = ("en", "zh-CN")
DEFAULT = "en"
LANG_ENV = "METERHUB_LANG"
LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "meterhub"

_current: ContextVar[str] = ContextVar("meterhub_language", default=DEFAULT)


def supported(tag: str | None) -> str | None:
    """The supported language for a tag ("zh", "zh_CN.UTF-8", "zh-Hans" -> "zh-CN";
    "en-GB", "C" -> "en"), or None for a language we do not have."""
    if not tag:
        return None
    low = tag.split(".")[0].split("@")[0].replace("_", "-").lower()
    if low.startswith("zh"):
        return "zh-CN"
    if low.startswith("en") or low in ("c", "posix"):
        return "en"
    return None


def negotiate(accept_language: str | None) -> str:
    """The best supported language of an Accept-Language header (q-values honoured,
    malformed parts skipped); English when none is supported."""
    choices: list[tuple[float, int, str]] = []
    for n, part in enumerate((accept_language or "").split(",")):
        tag, _sep, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _eq, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        lang = supported(tag.strip())
        if lang and quality > 0:
            choices.append((-quality, n, lang))
    return min(choices)[2] if choices else DEFAULT


def from_environment(env: Mapping[str, str] | None = None) -> str:
    """The CLI's language: the first of METERHUB_LANG, LC_ALL, LC_MESSAGES, LANG that is set
    (an unsupported one means English, as gettext would)."""
    env = os.environ if env is None else env
    for name in (LANG_ENV, "LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(name):
            return supported(env[name]) or DEFAULT
    return DEFAULT


def current() -> str:
    return _current.get()


def set_language(lang: str) -> None:
    """Use ``lang`` (a supported code, else English) from now on in this context."""
    _current.set(lang if lang in LANGUAGES else DEFAULT)


@contextlib.contextmanager
def language(lang: str) -> Iterator[None]:
    """Use ``lang`` inside the block only."""
    token = _current.set(lang if lang in LANGUAGES else DEFAULT)
    try:
        yield
    finally:
        _current.reset(token)


@cache
def catalogue(lang: str) -> dict[str, str]:
    """English message -> translation, from the language's .po file (fuzzy and empty
    entries left out, so they fall back to English)."""
    path = LOCALE_DIR / lang.replace("-", "_") / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.exists():
        return {}
    with path.open("rb") as f:
        po = read_po(f, locale=lang.replace("-", "_"))
    return {
        str(m.id): str(m.string)
        for m in po
        if m.id and isinstance(m.id, str) and m.string and not m.fuzzy
    }


def gettext(message: str, lang: str | None = None, /, **params: object) -> str:
    """``message`` in ``lang`` (default: the current language), placeholders filled."""
    lang = lang or current()
    text = catalogue(lang).get(message, message) if lang != "en" else message
    return text.format(**params) if params else text


def _(message: str, /, **params: object) -> str:
    """``message`` in the current language, ``{name}`` placeholders filled from params."""
    return gettext(message, None, **params)


def N_(message: str, /) -> str:
    """Marks a message for the catalogue that is translated later, where it is shown
    (``_(value)``): e.g. a text kept in a data structure. Returns it unchanged."""
    return message


def _babel_locale(lang: str | None) -> Locale:
    try:
        return Locale.parse((lang or current()).replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def number(value: Decimal | float | int, digits: int = 3, lang: str | None = None) -> str:
    """A number as the language writes it, at most ``digits`` decimals."""
    pattern = "#,##0" + ("." + "#" * digits if digits else "")
    return format_decimal(value, format=pattern, locale=_babel_locale(lang))


def yuan(value: Decimal, lang: str | None = None) -> str:
    """Money in yuan with two decimals ("¥1,234.50"); a Decimal, never a float."""
    text = format_decimal(abs(value), format="#,##0.00", locale=_babel_locale(lang))
    return f"{'-' if value < 0 else ''}¥{text}"


def when(moment: datetime, tz: tzinfo | None = None, lang: str | None = None) -> str:
    """A timezone-aware moment in local time (``tz``, default the machine's), as the
    language writes a date and time."""
    local = moment.astimezone(tz)
    return format_datetime(local, format="medium", tzinfo=local.tzinfo, locale=_babel_locale(lang))
