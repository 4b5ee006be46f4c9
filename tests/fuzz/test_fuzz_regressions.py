"""Crashes the fuzz harnesses found (or that the issue-12 poisons reproduce), each fed to its
entry point: the documented error must come out, nothing else.

All fixed: the protocol codecs, the wire decoders' payload limits, the signed-command
envelope, the gateway config loader and the MQTT URL setting. A new crash gets its test here
with its fix.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import ConfigError, load_config
from meterhub import wire
from meterhub.protocols.modbus import rtu
from meterhub.protocols.modbus.registermap import RegisterMapError, load_map
from meterhub.security import signing

# a command signed by the harness's test key (tests/fuzz/corpus/command/signed-relay_open-*)
SIGNED = (
    b'{"schema":1,"attempt":1,"command_id":"c-relay_open","gateway":"gw-1",'
    b'"meter":"000000000001","action":"relay_open","params":{"reason":"arrears","tries":2},'
    b'"issued_at":"2025-01-01T00:00:00.000Z","expires_at":"2025-01-01T00:05:00.000Z",'
    b'"nonce":"n1","key_id":"56475aa75463474c","sig":"qYfe3ejDkQYkuu8f9p3w9tci_-56kpHT6Ek6V2oZ'
    b'miLXHpmBHPTCPT6cbLpAmNrzcQdSuaBxBQOjPIluwkgYAA"}'
)
READINGS = (
    b'{"schema":1,"gateway":"gw-1","site":"s1","seq":7,"sent_at":"2025-01-01T00:00:00.000Z",'
    b'"readings":[{"meter":"000000000001","taken_at":"2025-01-01T00:00:00.000Z","values":'
    b'{"energy_import_total":{"value":0.26,"unit":"kW\\ud800h"}},"relay":"closed"}]}'
)
ACK_FAR_FUTURE = (
    b'{"schema":1,"command_id":"c","gateway":"g","meter":"m","stage":"accepted",'
    b'"at":"9999-12-31T23:59:59-01:00"}'
)
TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # harness_command's key
KEYRING = signing.Keyring([TEST_KEY.public_key()])
NOW = datetime(2025, 1, 1, 0, 1, tzinfo=UTC)


def decode_command(payload: bytes) -> wire.SignedCommand:
    """The gateway's decoder with harness_command's keyring, gateway and clock."""
    return wire.decode_command(payload, KEYRING, gateway="gw-1", now=NOW)


WIRE_DECODERS = (wire.decode_readings, wire.decode_ack, wire.decode_status,
                 wire.decode_events, decode_command)



# ---------------------------------------------------------------------------- fixed here


def test_modbus_reply_framer_never_asks_for_fewer_than_one_byte() -> None:
    # harness_modbus: an exception reply answering FC03, then 120 bytes of noise in the same
    # read; needed() said -120 (a serial reader would not wait at all).
    framer = rtu.ReplyFramer(1, 3)
    assert framer.feed(bytes.fromhex("01 83 02 C0 F1") + b"\x29" * 120)
    assert framer.needed() == 1


@pytest.mark.parametrize("text", [b"a = " + b"1" * 5000, b"a = " + b"[" * 5000 + b"]" * 5000],
                         ids=["integer-of-5000-digits", "arrays-nested-5000-deep"])
def test_register_map_file_that_tomllib_cannot_hold_is_a_map_error(
        tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "odd.toml"
    path.write_bytes(text + b"\n")
    with pytest.raises(RegisterMapError, match="not usable TOML"):
        load_map(path)


# ---------------------------------------------------------------------------- wire.py


def test_wire_refuses_lone_surrogates() -> None:
    with pytest.raises(wire.WireError):
        wire.encode_readings(wire.decode_readings(READINGS))


def test_command_refuses_lone_surrogates() -> None:
    poison = SIGNED.replace(b'"reason"', b'"\\ud800"')
    with pytest.raises((wire.WireError, signing.SignatureRefused)):
        decode_command(poison)


def test_command_refuses_non_finite_params() -> None:
    # harness_command (before commands were signed): params "tries": 1e400 decoded to inf
    # and could not be encoded again; the command limits refuse it while parsing
    poison = SIGNED.replace(b'"tries":2', b'"tries":1e400')
    with pytest.raises(wire.WireError, match="out of range"):
        decode_command(poison)


@pytest.mark.parametrize("decode", WIRE_DECODERS)
def test_wire_refuses_huge_integers(decode) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError):
        decode(b'{"schema":1,"seq":' + b"1" * 5000 + b"}")


@pytest.mark.parametrize("decode", WIRE_DECODERS)
def test_wire_refuses_deep_nesting(decode) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(wire.WireError):
        decode(b"[" * 100_000)


@pytest.mark.parametrize("payload", [
    ACK_FAR_FUTURE, ACK_FAR_FUTURE.replace(b"9999-12-31T23:59:59-01:00",
                                           b"0001-01-01T00:00:00+01:00")])
def test_wire_refuses_unrepresentable_times(payload: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_ack(payload)


@pytest.mark.parametrize("payload", [
    b'{"schema":1,"gateway":"gw-1","events":[{"kind":"comm_error",'
    b'"at":"2025-01-01T00:00:00.000Z","data":{"tries":1e4003}}]}',
    b'{"schema":1,"gateway":"gw-1","site":"s1","state":"online",'
    b'"at":"2025-01-01T00:00:00.000Z","health":{"backlog":-1e400}}',
], ids=["events-data", "status-health"])
def test_wire_refuses_non_finite_free_form(payload: bytes) -> None:
    # harness_wire (budget run): the events payload, reduced
    with pytest.raises(wire.WireError):
        if b'"events"' in payload:
            wire.encode_events(*wire.decode_events(payload))
        else:
            wire.encode_status(wire.decode_status(payload))


# ---------------------------------------------------------------------------- signing.py


def test_verify_refuses_unrepresentable_times() -> None:
    import json

    obj = json.loads(SIGNED)
    obj["issued_at"] = "9999-12-31T23:59:59-01:00"
    with pytest.raises(signing.SignatureRefused):
        signing.verify(obj, KEYRING, gateway="gw-1", now=NOW)


# ---------------------------------------------------------------------------- config.py

_MODBUS_BUS = (b'[gateway]\nid = "gw1"\nsite = "north"\n[[buses]]\nname = "b"\n'
               b'protocol = "modbus"\nmodel = "eastron-sdm120"\n')


def test_config_refuses_non_utf8(tmp_path: Path) -> None:
    # harness_config: read_text raises UnicodeDecodeError; catch it beside OSError
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[gateway]\nid = "gw\xd9"\n')
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("tail", ['tcp = "h:²"\n[[buses.meters]]\nunit = 1\n',
                                  'port = "/dev/x"\n[[buses.meters]]\nunit = "²"\n'],
                         ids=["tcp-port", "modbus-unit"])
def test_config_refuses_non_ascii_digits(tmp_path: Path, tail: str) -> None:
    # str.isdigit() accepts '²' but int() does not: _tcp_endpoint and _modbus_unit raise
    # ValueError; test with re.fullmatch(r"[0-9]+", ...) (or str.isascii() too) instead
    path = tmp_path / "gateway.toml"
    path.write_bytes(_MODBUS_BUS + tail.encode())
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("text", [b"a = " + b"1" * 5000, b"a = " + b"[" * 5000 + b"]" * 5000],
                         ids=["integer-of-5000-digits", "arrays-nested-5000-deep"])
def test_config_refuses_unusable_toml(tmp_path: Path, text: bytes) -> None:
    # tomllib raises ValueError / RecursionError for these, not TOMLDecodeError
    path = tmp_path / "gateway.toml"
    path.write_bytes(text + b"\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_signed_seed_still_verifies() -> None:
    """The regressions above start from a genuinely signed command (else they prove nothing
    about the path past the signature)."""

    assert decode_command(SIGNED).command.command_id == "c-relay_open"


def test_config_refuses_unsplittable_mqtt_url(tmp_path: Path) -> None:
    # harness_config: url = "mqtt://127.0.[[" -> ValueError through _check_mqtt's url check
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[gateway]\nid = "gw1"\nsite = "north"\n[mqtt]\n'
                     b'url = "mqtt://127.0.[["\n')
    with pytest.raises(ConfigError):
        load_config(path)
