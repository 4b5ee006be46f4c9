"""Signed relay commands: only a holder of a trusted Ed25519 key can switch a meter.

Billing (and the operator's manual path) sign each command; a gateway holds only public keys,
by key id, and refuses anything it cannot verify. The signature covers every field that
decides what happens to a meter, in a canonical byte form both ends compute alike:

    ``meterhub-cmd-v1\\n`` + JSON(sorted keys, no spaces, UTF-8) of
    action, command_id, expires_at, gateway, issued_at, key_id, meter, nonce, params

Times are ISO-8601 UTC with milliseconds (the wire's precision: a signer's microseconds are
dropped before signing, so a round trip through the wire still verifies). Parameters may hold
strings, integers, booleans, null, lists and objects with string keys, but no floats: two
JSON libraries may print the same float differently, and a signature must not depend on that.

Rotation: a gateway's :class:`Keyring` holds the old and the new public key until every
signer uses the new one; key ids are a short hash of the public key, so they cannot collide
by accident or be chosen by an attacker to shadow a trusted key.

Replay and meter ownership are the gateway's checks (it knows its meters and owns a store);
:mod:`meterhub.security.replay` gives it a persistent seen-ids guard.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterhub.security.files import read_private_file, write_private_file

DOMAIN = b"meterhub-cmd-v1\n"
KEY_ID_LENGTH = 16  # hex digits of SHA-256(raw public key): 64 bits, short enough to read
SIGNATURE_LENGTH = 64  # Ed25519
DEFAULT_MAX_FUTURE_SKEW = timedelta(seconds=60)

# the names of the signed fields inside a command payload (the envelope's JSON form)
CLAIM_FIELDS = ("command_id", "gateway", "meter", "action", "params", "issued_at",
                "expires_at", "nonce")
KEY_ID_FIELD = "key_id"
SIGNATURE_FIELD = "sig"


class RefusalReason(StrEnum):
    """Why a command was refused; the value goes into the ack and the security event."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    WRONG_GATEWAY = "wrong_gateway"
    EXPIRED = "expired"
    FUTURE = "issued_in_future"
    TOO_LONG_LIVED = "too_long_lived"
    REPLAYED = "replayed"  # raised by the gateway with a ReplayGuard


class SignatureRefused(Exception):
    """A command the gateway must not execute; ``reason`` is machine-readable."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class KeyFileError(ValueError):
    """A key file that cannot be used (wrong type, unreadable PEM)."""


# ---------------------------------------------------------------------------- canonical form


def _time(ts: datetime, name: str) -> str:
    if ts.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_millis(ts: datetime, name: str) -> datetime:
    _time(ts, name)  # refuses a naive time before astimezone() would read it as local
    return ts.astimezone(UTC).replace(microsecond=ts.microsecond // 1000 * 1000)


def _check_param(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floats cannot be signed (send a string or an integer)")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_param(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object keys must be strings, got {key!r}")
            _check_param(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} cannot be signed")


@dataclass(frozen=True, slots=True)
class CommandClaims:
    """What a signature vouches for: which meter on which gateway does what, and when."""

    command_id: str
    gateway: str
    meter: str
    action: str
    issued_at: datetime
    expires_at: datetime
    nonce: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("command_id", "gateway", "meter", "action", "nonce"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        _check_param(dict(self.params), "params")
        _time(self.issued_at, "issued_at")
        _time(self.expires_at, "expires_at")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "gateway": self.gateway,
            "meter": self.meter,
            "action": self.action,
            "params": dict(self.params),
            "issued_at": _time(self.issued_at, "issued_at"),
            "expires_at": _time(self.expires_at, "expires_at"),
            "nonce": self.nonce,
        }


def canonical_bytes(claims: CommandClaims, key_id: str) -> bytes:
    """The exact bytes signed and verified (key id included, so a signature cannot be
    re-attributed to another key)."""
    body = claims.to_json()
    body[KEY_ID_FIELD] = key_id
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return DOMAIN + text.encode("utf-8")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_signature(text: str) -> bytes:
    raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if len(raw) != SIGNATURE_LENGTH:
        raise ValueError(f"sig must be {SIGNATURE_LENGTH} bytes (base64url), got {len(raw)}")
    return raw


# ---------------------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True)
class Envelope:
    """Signed claims as they travel: the claims, the signer's key id and the signature."""

    claims: CommandClaims
    key_id: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        """The envelope's fields, ready to merge into (or nest in) a command payload."""
        body = self.claims.to_json()
        body[KEY_ID_FIELD] = self.key_id
        body[SIGNATURE_FIELD] = _b64encode(self.signature)
        return body

    @classmethod
    def from_json(cls, obj: Any) -> Envelope:
        """Read an envelope from a decoded payload; extra keys (``schema``, ``attempt``) are
        ignored. Raises :class:`SignatureRefused` (unsigned or malformed)."""
        if not isinstance(obj, Mapping):
            raise SignatureRefused(RefusalReason.MALFORMED, "command is not a JSON object")
        if obj.get(SIGNATURE_FIELD) in (None, "") and obj.get(KEY_ID_FIELD) in (None, ""):
            raise SignatureRefused(RefusalReason.UNSIGNED, "command carries no signature")
        try:
            missing = [k for k in (*CLAIM_FIELDS, KEY_ID_FIELD, SIGNATURE_FIELD) if k not in obj]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            texts = {k: obj[k] for k in (KEY_ID_FIELD, SIGNATURE_FIELD, "issued_at",
                                           "expires_at")}
            for key, value in texts.items():
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be a string")
            if not isinstance(obj["params"], Mapping):
                raise ValueError("params must be an object")
            signature = _decode_signature(texts[SIGNATURE_FIELD])
            claims = CommandClaims(
                command_id=obj["command_id"], gateway=obj["gateway"], meter=obj["meter"],
                action=obj["action"], params=dict(obj["params"]), nonce=obj["nonce"],
                issued_at=_parse_time(texts["issued_at"], "issued_at"),
                expires_at=_parse_time(texts["expires_at"], "expires_at"),
            )
            # text that cannot be UTF-8 (a lone surrogate) cannot have been signed
            canonical_bytes(claims, texts[KEY_ID_FIELD])
        except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
            raise SignatureRefused(RefusalReason.MALFORMED, str(exc)) from None
        return cls(claims, texts[KEY_ID_FIELD], signature)


def _parse_time(text: str, name: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"{name} {text!r} has no timezone")
    return ts.astimezone(UTC)


# ---------------------------------------------------------------------------- keys


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Short hash of the raw public key: the name a gateway trusts the key under."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_LENGTH]


def generate_private_key(path: Path) -> Ed25519PrivateKey:
    """Create a new signing key as PEM (PKCS#8) at ``path``, mode 0600; never overwrites."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(path, pem, overwrite=False)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a signing key, refusing a file group or others can read."""
    pem = read_private_file(path, f"signing key {path.name}")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def write_public_key(path: Path, public_key: Ed25519PublicKey) -> str:
    """Write the public half for gateways (world-readable is fine); returns its key id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(public_key_pem(public_key))
    return key_id_of(public_key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


class Keyring:
    """The public keys a gateway trusts, by key id (old and new both, during a rotation)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Keyring:
        return cls(load_public_key(p) for p in paths)

    def add(self, public_key: Ed25519PublicKey) -> str:
        kid = key_id_of(public_key)
        self._keys[kid] = public_key
        return kid

    def remove(self, key_id: str) -> None:
        """Stop trusting a key (end of a rotation, or a leaked key)."""
        self._keys.pop(key_id, None)

    def get(self, key_id: str) -> Ed25519PublicKey | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


class CommandSigner:
    """Signs commands with one private key (billing's, or the operator tool's)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id_of(private_key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> CommandSigner:
        return cls(load_private_key(path))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(
        self,
        *,
        command_id: str,
        gateway: str,
        meter: str,
        action: str,
        issued_at: datetime,
        expires_at: datetime,
        params: Mapping[str, Any] | None = None,
        nonce: str | None = None,
    ) -> Envelope:
        """Sign one command; raises ValueError for claims that cannot be signed (floats,
        naive times, expiry not after issue)."""
        claims = CommandClaims(
            command_id=command_id, gateway=gateway, meter=meter, action=action,
            issued_at=_to_millis(issued_at, "issued_at"),
            expires_at=_to_millis(expires_at, "expires_at"),
            nonce=nonce or secrets.token_urlsafe(16), params=dict(params or {}),
        )
        return Envelope(claims, self.key_id, self._key.sign(canonical_bytes(claims, self.key_id)))


def verify(
    envelope: Envelope | Mapping[str, Any] | None,
    keyring: Keyring,
    *,
    gateway: str,
    now: datetime,
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
    max_lifetime: timedelta | None = None,
) -> CommandClaims:
    """Return the claims a trusted key signed for this gateway and that are valid at ``now``.

    Raises :class:`SignatureRefused` otherwise. The signature is checked before anything
    the claims say, so an unsigned sender learns nothing but "refused". The caller executes
    the returned claims (not unsigned fields next to them), then checks replay and meter
    ownership itself.
    """
    if envelope is None:
        raise SignatureRefused(RefusalReason.UNSIGNED, "command carries no signature")
    if not isinstance(envelope, Envelope):
        envelope = Envelope.from_json(envelope)
    public_key = keyring.get(envelope.key_id)
    if public_key is None:
        raise SignatureRefused(RefusalReason.UNKNOWN_KEY,
                               f"key {envelope.key_id!r} is not trusted by this gateway")
    claims = envelope.claims
    try:
        public_key.verify(envelope.signature, canonical_bytes(claims, envelope.key_id))
    except InvalidSignature:
        raise SignatureRefused(RefusalReason.BAD_SIGNATURE,
                               f"signature does not match key {envelope.key_id}") from None
    if claims.gateway != gateway:
        raise SignatureRefused(RefusalReason.WRONG_GATEWAY,
                               f"signed for gateway {claims.gateway!r}, this is {gateway!r}")
    if now >= claims.expires_at:
        raise SignatureRefused(RefusalReason.EXPIRED,
                               f"expired at {_time(claims.expires_at, 'expires_at')}")
    if claims.issued_at > now + max_future_skew:
        raise SignatureRefused(
            RefusalReason.FUTURE,
            f"issued at {_time(claims.issued_at, 'issued_at')}, more than "
            f"{max_future_skew.total_seconds():.0f} s ahead of this gateway's clock",
        )
    if max_lifetime is not None and claims.expires_at - claims.issued_at > max_lifetime:
        raise SignatureRefused(
            RefusalReason.TOO_LONG_LIVED,
            f"valid for {claims.expires_at - claims.issued_at}, longer than {max_lifetime}",
        )
    return claims
