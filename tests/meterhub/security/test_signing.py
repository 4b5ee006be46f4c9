"""Signed commands: any change to a signed field breaks verification; rotation; refusals."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meterhub.security import (
    CommandSigner,
    Envelope,
    InsecureFileError,
    Keyring,
    RefusalReason,
    SignatureRefused,
    generate_private_key,
    key_id_of,
    load_private_key,
    load_public_key,
    verify,
    write_public_key,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIGNER = CommandSigner(Ed25519PrivateKey.generate())
KEYRING = Keyring([SIGNER.public_key])


def _sign(signer: CommandSigner = SIGNER, **over: Any) -> Envelope:
    fields: dict[str, Any] = {
        "command_id": "c-1", "gateway": "gw-a", "meter": "000000000001",
        "action": "relay_open", "issued_at": NOW, "expires_at": NOW + timedelta(minutes=5),
        "params": {"hold_until": "2026-03-02T00:00:00.000Z", "attempts": 3},
    }
    fields.update(over)
    return signer.sign(**fields)


def _refused(payload: Any, keyring: Keyring = KEYRING, **kw: Any) -> RefusalReason:
    with pytest.raises(SignatureRefused) as info:
        verify(payload, keyring, gateway=kw.pop("gateway", "gw-a"), now=kw.pop("now", NOW), **kw)
    return info.value.reason


def test_signed_command_verifies_after_a_json_round_trip() -> None:
    wire = json.loads(json.dumps({"schema": 1, "attempt": 2, **_sign().to_json()}))
    claims = verify(wire, KEYRING, gateway="gw-a", now=NOW)
    assert (claims.command_id, claims.meter, claims.action) == ("c-1", "000000000001",
                                                                  "relay_open")
    assert claims.params["hold_until"] == "2026-03-02T00:00:00.000Z"


def test_microseconds_are_dropped_before_signing_so_the_wire_form_still_verifies() -> None:
    env = _sign(issued_at=NOW + timedelta(microseconds=123456))
    assert env.claims.issued_at.microsecond == 123000
    verify(json.loads(json.dumps(env.to_json())), KEYRING, gateway="gw-a", now=NOW)


_TAMPER = {
    "command_id": st.text(min_size=1, max_size=20),
    "gateway": st.text(min_size=1, max_size=20),
    "meter": st.text(min_size=1, max_size=20),
    "action": st.sampled_from(["relay_close", "relay_close_permitted", "time_sync", "x"]),
    "nonce": st.text(min_size=1, max_size=30),
    "issued_at": st.integers(1, 10**6).map(lambda m: f"2026-03-01T11:5{m % 9}:00.000Z"),
    "expires_at": st.integers(1, 10**6).map(lambda s: f"2026-03-01T12:{s % 60:02d}:59.999Z"),
    "params": st.dictionaries(st.text(max_size=8),
                              st.one_of(st.text(max_size=8), st.integers(), st.booleans()),
                              max_size=3),
    "key_id": st.text(min_size=1, max_size=16),
}


@settings(deadline=None)
@given(st.one_of(*(st.tuples(st.just(name), values) for name, values in _TAMPER.items())))
def test_any_change_to_any_signed_field_breaks_verification(change: tuple[str, Any]) -> None:
    name, value = change
    payload = _sign().to_json()
    if payload[name] == value:
        return  # not a change
    payload[name] = value
    assert _refused(payload) in (RefusalReason.BAD_SIGNATURE, RefusalReason.UNKNOWN_KEY,
                                 RefusalReason.MALFORMED)


@settings(deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_a_forged_signature_is_refused(sig: bytes) -> None:
    env = _sign()
    forged = Envelope(env.claims, env.key_id, sig)
    if sig != env.signature:
        assert _refused(forged) is RefusalReason.BAD_SIGNATURE


def test_rotation_old_and_new_keys_both_valid_until_the_old_is_removed() -> None:
    old, new = SIGNER, CommandSigner(Ed25519PrivateKey.generate())
    ring = Keyring([old.public_key, new.public_key])
    assert set(ring) == {old.key_id, new.key_id}
    verify(_sign(old), ring, gateway="gw-a", now=NOW)
    verify(_sign(new), ring, gateway="gw-a", now=NOW)
    ring.remove(old.key_id)
    assert _refused(_sign(old), ring) is RefusalReason.UNKNOWN_KEY
    verify(_sign(new), ring, gateway="gw-a", now=NOW)


def test_a_key_id_cannot_be_claimed_for_another_key() -> None:
    """An attacker's key signing under a trusted key id fails the signature check."""
    attacker = CommandSigner(Ed25519PrivateKey.generate())
    env = _sign(attacker)
    assert _refused(Envelope(env.claims, SIGNER.key_id, env.signature)) is \
        RefusalReason.BAD_SIGNATURE
    assert _refused(env) is RefusalReason.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, RefusalReason.UNSIGNED),
        ({"command_id": "c-1", "meter": "m", "action": "relay_open"}, RefusalReason.UNSIGNED),
        ([1, 2], RefusalReason.MALFORMED),
        ({"sig": "abc", "key_id": "k"}, RefusalReason.MALFORMED),
    ],
)
def test_unsigned_and_malformed(payload: Any, reason: RefusalReason) -> None:
    assert _refused(payload) is reason


def test_malformed_fields_inside_a_signed_payload() -> None:
    for name, value in (("issued_at", "yesterday"), ("params", [1]), ("meter", 7),
                        ("sig", "!!!"), ("expires_at", "2026-03-01T12:00:00")):
        payload = _sign().to_json()
        payload[name] = value
        assert _refused(payload) is RefusalReason.MALFORMED, name


def test_wrong_gateway_expired_and_future() -> None:
    assert _refused(_sign(), gateway="gw-b") is RefusalReason.WRONG_GATEWAY
    assert _refused(_sign(), now=NOW + timedelta(minutes=5)) is RefusalReason.EXPIRED
    ahead = _sign(issued_at=NOW + timedelta(minutes=2), expires_at=NOW + timedelta(minutes=9))
    assert _refused(ahead) is RefusalReason.FUTURE
    verify(ahead, KEYRING, gateway="gw-a", now=NOW, max_future_skew=timedelta(minutes=3))
    assert _refused(_sign(), max_lifetime=timedelta(minutes=1)) is \
        RefusalReason.TOO_LONG_LIVED


def test_refusal_message_names_the_reason() -> None:
    with pytest.raises(SignatureRefused, match="wrong_gateway: signed for gateway 'gw-a'"):
        verify(_sign(), KEYRING, gateway="gw-b", now=NOW)


def test_unsignable_claims_are_refused_at_the_signer() -> None:
    with pytest.raises(ValueError, match="floats"):
        _sign(params={"kwh": 1.5})
    with pytest.raises(ValueError, match="timezone"):
        _sign(issued_at=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="after issued_at"):
        _sign(expires_at=NOW)


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "billing.pem"
    key = generate_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        generate_private_key(path)
    signer = CommandSigner.from_file(path)
    assert signer.key_id == key_id_of(key.public_key())
    kid = write_public_key(tmp_path / "billing.pub", signer.public_key)
    ring = Keyring.from_files([tmp_path / "billing.pub"])
    assert kid in ring and len(kid) == 16
    assert key_id_of(load_public_key(tmp_path / "billing.pub")) == kid
    verify(_sign(signer), ring, gateway="gw-a", now=NOW)

    os.chmod(path, 0o640)
    with pytest.raises(InsecureFileError, match="chmod 600"):
        load_private_key(path)


@pytest.mark.parametrize("field,value", [
    ("meter", "\ud800"),
    ("command_id", "c-\udfff"),
    ("issued_at", "9999-12-31T23:59:59-01:00"),
])
def test_unencodable_or_overflowing_claims_are_malformed(field: str, value: str) -> None:
    signer = CommandSigner(Ed25519PrivateKey.generate())
    body = signer.sign(command_id="c-1", gateway="gw", meter="m", action="relay_open",
                       issued_at=datetime(2026, 1, 1, tzinfo=UTC),
                       expires_at=datetime(2026, 1, 1, 0, 5, tzinfo=UTC)).to_json()
    body[field] = value
    with pytest.raises(SignatureRefused) as refused:
        verify(body, Keyring([signer.public_key]), gateway="gw",
               now=datetime(2026, 1, 1, tzinfo=UTC))
    assert refused.value.reason == RefusalReason.MALFORMED
