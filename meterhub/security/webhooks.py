"""HMAC-signed HTTP notifications, one scheme for both directions: payment providers
notifying billing, and notify's webhooks notifying a site's subscribers.

The header ``Meterhub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
(Stripe's shape) binds the body to a time, so a captured request replayed later is refused
by the timestamp tolerance, and a genuine redelivery inside it is left to the receiver's
idempotency (a transaction or event id).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime

SIGNATURE_HEADER = "Meterhub-Signature"
_HEADER = re.compile(r"t=(\d{1,12}),v1=([0-9a-f]{64})")


class SignatureError(ValueError):
    """Forged, unsigned or replayed: refused before the body is believed."""


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes, header: str | None, body: bytes, *, now: datetime, tolerance_s: float
) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``body`` and is fresh."""
    if not header:
        raise SignatureError(f"{SIGNATURE_HEADER}: missing; notifications must be signed")
    match = _HEADER.fullmatch(header.strip())
    if match is None:
        raise SignatureError(f"{SIGNATURE_HEADER}: not in the form t=<seconds>,v1=<hex>")
    stamp = int(match[1])
    expected = sign(secret, body, stamp).partition(",v1=")[2]
    if not hmac.compare_digest(expected, match[2]):
        raise SignatureError(f"{SIGNATURE_HEADER}: signature does not match; refused")
    age = now.timestamp() - stamp
    if abs(age) > tolerance_s:
        raise SignatureError(
            f"{SIGNATURE_HEADER}: timestamp is {age:.0f} s from now "
            f"(tolerance {tolerance_s:.0f} s): a replay or a wrong clock"
        )
