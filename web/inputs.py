"""Checking what a client sent, once, at the door: query parameters and JSON bodies.

Every function raises :class:`web.errors.BadRequest` naming the parameter and what is wrong,
so a bad request is a 400 a person can fix and never a database error (a 500).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

import billing
from meterhub.i18n import _
from web.errors import BadRequest

MAX_TEXT = 500
BIGINT_MAX = 2**63 - 1


def text(value: Any, name: str, *, required: bool = True, max_len: int = MAX_TEXT,
         min_len: int = 1) -> str | None:
    """A string PostgreSQL can store: no NUL bytes, bounded length."""
    if value is None:
        if required:
            raise BadRequest(_("{name} is required", name=name))
        return None
    if not isinstance(value, str):
        raise BadRequest(_("{name} must be a string, got {kind}", name=name,
                                   kind=type(value).__name__))
    if "\x00" in value:
        raise BadRequest(_("{name} must not contain NUL characters", name=name))
    if len(value.strip()) < min_len:
        raise BadRequest(_("{name} must not be empty", name=name))
    if len(value) > max_len:
        raise BadRequest(_("{name} is longer than {max_len} characters", name=name,
                                   max_len=max_len))
    return value


def path_text(request: web.Request, name: str) -> str:
    value = text(request.match_info.get(name), name, min_len=0)
    assert value is not None
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(_("{name} must be a whole number, got {raw!r}", name=name,
                           raw=raw)) from None
    if not 1 <= value <= BIGINT_MAX:
        raise BadRequest(_("{name} must be between 1 and {hi}", name=name, hi=BIGINT_MAX))
    return value


def query_text(request: web.Request, name: str, *, choices: tuple[str, ...] | None = None,
               default: str | None = None) -> str | None:
    """A text parameter; empty or only whitespace means absent (a search box left blank)
    unless it must be one of ``choices``."""
    raw = request.query.get(name)
    if raw is None or (not raw.strip() and choices is None):
        return default
    value = text(raw, name)
    if choices is not None and value not in choices:
        raise BadRequest(_("{name} must be one of {choices}; got {raw!r}", name=name,
                           choices=", ".join(choices), raw=raw))
    return value


def query_int(request: web.Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(_("{name} must be a whole number, got {raw!r}", name=name,
                           raw=raw)) from None
    if not lo <= value <= hi:
        raise BadRequest(_("{name} must be between {lo} and {hi}, got {value}", name=name,
                           lo=lo, hi=hi, value=value))
    return value


def parse_time(raw: str, name: str) -> datetime:
    try:
        ts = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(_("{name} must be an ISO-8601 time like 2026-01-31T08:00:00Z, got "
                           "{raw!r}", name=name, raw=raw)) from None
    if ts.tzinfo is None:
        raise BadRequest(_("{name} needs a timezone (e.g. a trailing Z for UTC), got {raw!r}",
                           name=name, raw=raw))
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        raise BadRequest(_("{name} is outside the years 1 to 9999 in UTC: {raw!r}", name=name,
                           raw=raw)) from None


def query_time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    return parse_time(raw, name)


async def json_body(request: web.Request) -> Mapping[str, Any]:
    """The request's JSON object; a body that is missing, not JSON or not an object is a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(_("request body is not valid JSON: {error}", error=exc)) from None
    if not isinstance(body, dict):
        raise BadRequest(_("request body must be a JSON object, got {kind}",
                           kind=type(body).__name__))
    return body


def only_keys(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """No fields we do not know (a typo would be ignored silently) and no nulls (leave a field
    out instead: null has no meaning in any of our requests)."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(_("unknown field(s) {unknown}; expected {allowed}",
                           unknown=", ".join(map(repr, unknown)), allowed=", ".join(allowed)))
    nulls = sorted(k for k, v in body.items() if v is None)
    if nulls:
        raise BadRequest(_("{names} must not be null; leave it out instead",
                           names=", ".join(nulls)))


def money(value: Any, name: str, *, max_yuan: Decimal) -> Decimal:
    """A positive amount in yuan, by billing's one parser (:func:`billing.parse_yuan`):
    the CLI, this API and the page accept exactly the same text."""
    if value is None:
        raise BadRequest(_("{name} is required", name=name))
    try:
        return billing.parse_yuan(value, max_yuan=max_yuan, field=name)
    except billing.MoneyError as exc:
        raise BadRequest(str(exc), details={"field": name}) from None
