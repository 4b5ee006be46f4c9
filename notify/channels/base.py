"""What every channel shares: the rendered message, the outcome, the error classes, and a
per-channel send rate (providers throttle; a burst of cut-off notices must not trip them)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class Message:
    """One notice rendered for one customer: texts in their language, parameters as given."""

    notice_id: int
    account_id: str
    kind: str
    required: bool
    language: str
    subject: str
    body: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sent:
    provider_id: str
    detail: str = ""


class DeliveryError(Exception):
    """A send that did not work. ``retry``: a later attempt may (timeouts, 5xx, throttling).
    ``dead_contact``: the address itself is wrong (unknown number, bounced mailbox,
    unfollowed WeChat account): list it for staff and try the customer's next channel."""

    def __init__(self, reason: str, *, retry: bool, dead_contact: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.dead_contact = dead_contact


class RateLimit:
    """At most ``per_s`` sends a second on one channel (a token bucket of one second)."""

    def __init__(self, per_s: float) -> None:
        if per_s <= 0:
            raise ValueError("rate_per_s: must be more than zero")
        self.per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.per_s)


def http_error(status: int, what: str, text: str) -> DeliveryError:
    """An HTTP answer that is not success: 408/429/5xx retry, other 4xx do not."""
    retry = status in (408, 429) or status >= 500
    return DeliveryError(f"{what}: HTTP {status}: {text[:200]}", retry=retry)


async def request_json(
    http: aiohttp.ClientSession, method: str, url: str, what: str, timeout_s: float, **kw: Any
) -> dict[str, Any]:
    """One HTTP call to a provider whose answer is a JSON object. Network errors and
    timeouts are worth a retry; they are named by type only, since a client error's text may
    carry the URL and with it a query-string secret."""
    try:
        async with http.request(
            method, url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kw
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise http_error(r.status, what, text)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}", retry=True) from None
    try:
        answer = json.loads(text)
    except ValueError:
        raise DeliveryError(f"{what}: the answer is not JSON", retry=True) from None
    if not isinstance(answer, dict):
        raise DeliveryError(f"{what}: the answer is not a JSON object", retry=True)
    return answer
