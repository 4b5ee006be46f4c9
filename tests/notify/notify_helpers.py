"""Real servers standing in for the outside world of notify: an SMTP server (aiosmtpd), an
SMS provider and a WeChat API (aiohttp) that check what they get the way the real ones do,
and a webhook receiver that verifies the HMAC. Plus billing-side setup: a customer, an
account and a notice."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import psycopg
from aiohttp import web
from aiosmtpd.controller import Controller

from billing import create_account, create_customer, link_account, record_notice
from meterhub.security.webhooks import verify_signature


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ SMTP


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # recipients answered 550

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 2.0.0 queued"


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


# ------------------------------------------------------------------------------ HTTP


@dataclass
class Provider:
    """What the HTTP stand-ins received and will answer."""

    received: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # then OK
    url: str = ""


def sms_provider_app(
    provider: Provider, key_id: str, secret: bytes, templates: dict[str, set[str]]
) -> web.Application:
    """An SMS gateway: checks the key, the HMAC over the canonical string (written here
    from the adapter's documentation, not with its code), the clock, and that the template
    code is one it knows with exactly its parameters."""

    async def send(request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        canonical = "\n".join(
            [
                "POST",
                request.path,
                h.get("X-Sms-Timestamp", ""),
                h.get("X-Sms-Nonce", ""),
                hashlib.sha256(body).hexdigest(),
            ]
        )
        good = hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()
        if h.get("X-Sms-Key-Id") != key_id or not hmac.compare_digest(
            good, h.get("X-Sms-Signature", "")
        ):
            provider.refused.append("signature")
            return web.json_response({"code": "SIGNATURE_INVALID"}, status=401)
        doc = json.loads(body)
        if (
            doc["template_code"] not in templates
            or set(doc["params"]) != templates[doc["template_code"]]
        ):
            provider.refused.append("template")
            return web.json_response({"code": "TEMPLATE_MISMATCH", "message": "bad params"})
        provider.received.append(doc)
        if provider.answers:
            status, answer = provider.answers.pop(0)
            return web.json_response(answer, status=status)
        return web.json_response({"code": "OK", "message_id": f"sms-{len(provider.received)}"})

    app = web.Application()
    app.router.add_post("/v1/sms/send", send)
    return app


def wechat_app(provider: Provider, appid: str, secret: str) -> web.Application:
    tokens: list[str] = []

    async def token(request: web.Request) -> web.Response:
        q = request.query
        if q.get("appid") != appid or q.get("secret") != secret:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        tokens.append(f"tok{len(tokens)}")
        return web.json_response({"access_token": tokens[-1], "expires_in": 7200})

    async def send(request: web.Request) -> web.Response:
        if not tokens or request.query.get("access_token") != tokens[-1]:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        doc = await request.json()
        provider.received.append(doc)
        if provider.answers:
            _, answer = provider.answers.pop(0)
            return web.json_response(answer)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "msgid": 2000 + len(provider.received)}
        )

    app = web.Application()
    app.router.add_get("/cgi-bin/token", token)
    app.router.add_post("/cgi-bin/message/template/send", send)
    return app


def webhook_receiver_app(provider: Provider, secret: bytes) -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify_signature(
                secret,
                request.headers.get("Meterhub-Signature"),
                body,
                now=datetime.now().astimezone(),
                tolerance_s=60,
            )
        except ValueError as exc:
            provider.refused.append(str(exc))
            return web.json_response({"error": str(exc)}, status=401)
        if provider.answers:
            status, answer = provider.answers.pop(0)
            return web.json_response(answer, status=status)
        provider.received.append({"event": request.headers["Meterhub-Event"], **json.loads(body)})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


@contextlib.asynccontextmanager
async def http_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------ billing


def customer_with_account(conn: psycopg.Connection, n: int = 1, **fields: Any) -> str:
    account = f"acc-{n}"
    create_account(conn, account, meters=[f"m-{n}"], tariff="residential-flat")
    values = {
        "phones": [f"+861380013800{n}"],
        "email": f"tenant{n}@example.com",
        "wechat_openid": f"oOpenId_{n:04d}",
        "preferred_channel": "email",
        "language": "en",
    } | fields
    create_customer(conn, f"c-{n}", name=f"Tenant {n}", **values)
    link_account(conn, account, f"c-{n}")
    return account


def notice(
    conn: psycopg.Connection,
    account: str,
    kind: str,
    at: datetime,
    *,
    required: bool = False,
    key: str | None = None,
    **params: str,
) -> int:
    texts = {
        "zh-CN": {"subject": f"{kind} 通知", "body": f"账户 {account}: {params}"},
        "en": {"subject": f"{kind} notice", "body": f"Account {account}: {params}"},
    }
    return record_notice(
        conn,
        account_id=account,
        kind=kind,
        required=required,
        not_before=at,
        params=params,
        texts=texts,
        dedupe_key=key or f"{kind}:{account}:{at.isoformat()}",
    )
