"""SMS through an HTTP provider: a pre-approved template code and its parameters, signed.

The adapter speaks the common shape of Chinese SMS gateways (Aliyun, Tencent Cloud): a JSON
POST ``{"to", "sign_name", "template_code", "params", "request_id"}``, authenticated by
headers ``X-Sms-Key-Id``, ``X-Sms-Timestamp``, ``X-Sms-Nonce`` and ``X-Sms-Signature``, the
hex HMAC-SHA256 under the key's secret of the canonical string
``"POST\\n<path>\\n<timestamp>\\n<nonce>\\n<hex SHA-256 of the body>"``. The answer is
``{"code": "OK", "message_id"}``, or a code saying why not: ``INVALID_NUMBER``,
``UNKNOWN_SUBSCRIBER`` and ``BLACKLISTED`` mean the number is dead, ``THROTTLED`` to retry.
A provider with another shape needs another adapter of this size.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from meterhub.security.secrets import Secret
from notify.channels.base import DeliveryError, Message, Sent, request_json
from notify.templates import ProviderTemplate

DEAD_CODES = frozenset({"INVALID_NUMBER", "UNKNOWN_SUBSCRIBER", "BLACKLISTED"})
RETRY_CODES = frozenset({"THROTTLED", "BUSY"})


def canonical(path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"POST\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()


@dataclass(frozen=True)
class SmsSettings:
    url: str
    key_id: str
    secret: Secret
    sign_name: str  # the registered signature shown in front of the text, e.g. 【某某电力】
    templates: Mapping[str, ProviderTemplate] = field(default_factory=dict)  # by notice kind
    timeout_s: float = 15.0


class SmsChannel:
    name = "sms"

    def __init__(self, settings: SmsSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http

    def carries(self, kind: str) -> bool:
        return kind in self.settings.templates

    async def send(self, to: str, message: Message) -> Sent:
        s = self.settings
        code, params = s.templates[message.kind].render(message, f"sms.templates.{message.kind}")
        body = json.dumps(
            {
                "to": to,
                "sign_name": s.sign_name,
                "template_code": code,
                "params": params,
                "request_id": f"notice-{message.notice_id}-{uuid.uuid4().hex[:12]}",
            },
            ensure_ascii=False,
        ).encode()
        stamp, nonce = str(int(time.time())), secrets.token_hex(8)
        mac = hmac.new(
            s.secret.reveal().encode(),
            canonical(urlsplit(s.url).path or "/", stamp, nonce, body),
            hashlib.sha256,
        ).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Sms-Key-Id": s.key_id,
            "X-Sms-Timestamp": stamp,
            "X-Sms-Nonce": nonce,
            "X-Sms-Signature": mac,
        }
        answer = await request_json(
            self.http, "POST", s.url, "sms provider", s.timeout_s, data=body, headers=headers
        )
        result = answer.get("code")
        if result == "OK" and isinstance(answer.get("message_id"), str):
            return Sent(answer["message_id"][:128], "accepted by the sms provider")
        reason = f"sms provider: {str(result)[:40]}: {str(answer.get('message', ''))[:120]}"
        raise DeliveryError(reason, retry=result in RETRY_CODES, dead_contact=result in DEAD_CODES)
