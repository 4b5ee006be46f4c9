"""Signed webhooks to a site's subscribers (a property-management system, a call centre):
every notice of the kinds they asked for, as JSON, signed with their shared secret in the
scheme of :mod:`meterhub.security.webhooks` (HMAC over timestamp and body). ``Meterhub-Event``
carries a stable id (notice and subscriber) so the receiver can drop a redelivery; retries
with backoff are the queue's (2xx: done; 408, 429, 5xx, timeouts: again later; other 4xx:
the subscriber refuses it, given up)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import aiohttp

from meterhub.security.secrets import Secret
from meterhub.security.webhooks import SIGNATURE_HEADER, sign
from notify.channels.base import DeliveryError, Sent, http_error


@dataclass(frozen=True)
class WebhookTarget:
    name: str
    url: str
    secret: Secret
    kinds: frozenset[str] | None = None  # None: every kind
    timeout_s: float = 10.0

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


async def post_event(
    http: aiohttp.ClientSession, target: WebhookTarget, event: dict[str, object]
) -> Sent:
    body = json.dumps(event, ensure_ascii=False, sort_keys=True).encode()
    event_id = f"{event['notice_id']}:{target.name}"
    headers = {
        "Content-Type": "application/json",
        "Meterhub-Event": event_id,
        SIGNATURE_HEADER: sign(target.secret.reveal().encode(), body, int(time.time())),
    }
    try:
        async with http.post(
            target.url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=target.timeout_s),
        ) as r:
            if not 200 <= r.status < 300:
                raise http_error(r.status, f"webhook {target.name}", await r.text())
    except (aiohttp.ClientError, TimeoutError) as exc:  # by type: the text may hold the URL
        raise DeliveryError(f"webhook {target.name}: {type(exc).__name__}", retry=True) from None
    return Sent(event_id, f"accepted by {target.name}")
