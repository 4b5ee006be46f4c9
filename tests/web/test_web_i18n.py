"""The page's catalogues (every key the page uses, in both languages, placeholders alike) and
the API answering in the asker's language (Accept-Language)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from web_helpers import Logins, same_origin

from meterhub import i18n
from web.openapi import DOCUMENT

Client = TestClient[web.Request, web.Application]

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"
LANGS = ("en", "zh-CN")


def _catalogue(lang: str) -> dict[str, Any]:
    return json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def _forms(message: Any) -> list[str]:
    """A message's texts: itself, or each plural form ({"one": ..., "other": ...})."""
    if isinstance(message, dict):
        assert "other" in message, message
        return list(message.values())
    assert isinstance(message, str) and message, message
    return [message]


def _placeholders(message: Any) -> set[str]:
    return {p for text in _forms(message) for p in re.findall(r"\{(\w+)\}", text)}


def _keys_used() -> set[str]:
    """Keys the page's scripts and markup name: t("a.b") and any "a.b" literal of a
    catalogue namespace (ternaries, header lists), data-i18n* attributes."""
    spaces = {key.split(".")[0] for key in _catalogue("en")}
    used: set[str] = set()
    for path in [*STATIC.glob("*.js"), STATIC / "index.html"]:
        for key in re.findall(r'"([a-z_]+\.[a-z0-9_]+)#?"', path.read_text(encoding="utf-8")):
            if key.split(".")[0] in spaces:
                used.add(key)
    return used


def test_both_catalogues_have_the_same_keys_and_placeholders() -> None:
    en, zh = _catalogue("en"), _catalogue("zh-CN")
    assert set(en) == set(zh), set(en) ^ set(zh)
    for key in en:
        assert _placeholders(en[key]) == _placeholders(zh[key]), key
        _forms(zh[key])


def test_every_key_the_page_uses_is_in_both_catalogues() -> None:
    used = _keys_used()
    assert len(used) > 200
    for lang in LANGS:
        missing = used - set(_catalogue(lang))
        assert not missing, f"{lang}.json lacks {sorted(missing)}"


def test_static_markup_is_translated() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    keys = set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', html))
    assert {"login.user", "login.password", "nav.fleet"} <= keys
    assert keys <= set(_catalogue("zh-CN"))


def _pattern_texts(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["x-pattern-text"]} if "x-pattern-text" in node else set()
        return own.union(*(_pattern_texts(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_pattern_texts(v) for v in node))
    return set()


def test_openapi_pattern_texts_are_translated() -> None:
    """web.validation shows a schema's x-pattern-text in the reader's language."""
    texts = _pattern_texts(DOCUMENT)
    assert texts
    assert texts <= set(i18n.catalogue("zh-CN")), texts - set(i18n.catalogue("zh-CN"))


async def test_api_answers_in_the_asked_language(client: Client, logins: Logins) -> None:
    """The page sends its language as Accept-Language; errors come back in it."""
    anonymous = await client.get("/api/v1/gateways", headers={"Accept-Language": "zh-CN"})
    body = await anonymous.json()
    assert anonymous.status == 401
    assert body["error"]["message"].startswith("请先登录")
    assert anonymous.headers["Content-Language"] == "zh-CN"

    wrong = await client.post(
        "/api/v1/session",
        json={"name": "nobody", "password": "x"},
        headers={"Accept-Language": "zh-CN,zh;q=0.9", **same_origin(client)},
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"]["message"] == "用户名或密码错误"

    bad = await client.get(
        "/api/v1/meters",
        params={"limit": "lots"},
        headers={**logins.auth("viewer"), "Accept-Language": "zh-CN"},
    )
    assert bad.status == 400
    assert "必须是整数" in (await bad.json())["error"]["message"]

    english = await client.get(
        "/api/v1/meters",
        params={"limit": "lots"},
        headers={**logins.auth("viewer"), "Accept-Language": "en-GB"},
    )
    assert "must be a whole number" in (await english.json())["error"]["message"]
    assert english.headers["Content-Language"] == "en"


@pytest.mark.parametrize("lang", LANGS)
async def test_catalogues_are_served(client: Client, lang: str) -> None:
    resp = await client.get(f"/static/i18n/{lang}.json")
    assert resp.status == 200
    assert (await resp.json())["nav.fleet"] == _catalogue(lang)["nav.fleet"]
