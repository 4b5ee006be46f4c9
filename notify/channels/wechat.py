"""WeChat template messages through the official account API, in its HTTP shape.

``GET <api>/cgi-bin/token?grant_type=client_credential&appid=..&secret=..`` gives an
access token (kept until a minute before ``expires_in``); ``POST
<api>/cgi-bin/message/template/send?access_token=..`` with ``{"touser": openid,
"template_id", "data": {field: {"value": text}}}`` answers ``{"errcode": 0, "msgid"}``.
Error codes: 40001/40014/42001 the token is stale (fetched again, once); 43004 the user does
not follow the account and 40003 a wrong openid (the contact is dead); 45009/-1 retry later.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from meterhub.security.secrets import Secret
from notify.channels.base import DeliveryError, Message, Sent, request_json
from notify.templates import ProviderTemplate

TOKEN_STALE = frozenset({40001, 40014, 42001})
DEAD = frozenset({43004, 40003})
RETRY = frozenset({-1, 45009, 45047})


@dataclass(frozen=True)
class WechatSettings:
    appid: str
    secret: Secret
    api_base: str = "https://api.weixin.qq.com"
    templates: Mapping[str, ProviderTemplate] = field(default_factory=dict)  # by notice kind
    timeout_s: float = 15.0


class WechatChannel:
    name = "wechat"

    def __init__(self, settings: WechatSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self._token: tuple[str, float] | None = None

    def carries(self, kind: str) -> bool:
        return kind in self.settings.templates

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = self.settings.api_base.rstrip("/") + path
        return await request_json(self.http, method, url, "wechat", self.settings.timeout_s, **kw)

    async def _access_token(self, fresh: bool = False) -> str:
        if self._token and not fresh and self._token[1] > time.monotonic():
            return self._token[0]
        answer = await self._call(
            "GET",
            "/cgi-bin/token",
            params={
                "grant_type": "client_credential",
                "appid": self.settings.appid,
                "secret": self.settings.secret.reveal(),
            },
        )
        token, ttl = answer.get("access_token"), answer.get("expires_in", 7200)
        if not isinstance(token, str) or not isinstance(ttl, int):
            raise DeliveryError(
                f"wechat: no access token (errcode {answer.get('errcode')})", retry=True
            )
        self._token = (token, time.monotonic() + max(ttl - 60, 1))
        return token

    async def send(self, to: str, message: Message) -> Sent:
        template_id, data = self.settings.templates[message.kind].render(
            message, f"wechat.templates.{message.kind}"
        )
        body = {
            "touser": to,
            "template_id": template_id,
            "data": {k: {"value": v} for k, v in data.items()},
        }
        for fresh in (False, True):
            token = await self._access_token(fresh)
            answer = await self._call(
                "POST", "/cgi-bin/message/template/send", params={"access_token": token}, json=body
            )
            code = answer.get("errcode", 0)
            if code == 0 and "msgid" in answer:
                return Sent(str(answer["msgid"])[:128], "accepted by wechat")
            if code not in TOKEN_STALE:
                break
        reason = f"wechat: errcode {code}: {str(answer.get('errmsg', ''))[:120]}"
        raise DeliveryError(
            reason, retry=code in RETRY or code in TOKEN_STALE, dead_contact=code in DEAD
        )
