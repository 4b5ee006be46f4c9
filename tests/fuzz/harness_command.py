"""Fuzz the command path of a gateway: the wire decoder and the signature check against a
test keyring.

Contract: ``wire.decode_command`` returns or raises :class:`WireError` (or
:class:`SignatureRefused` once it checks signatures itself); ``signing.verify`` on the decoded
JSON returns claims or raises :class:`SignatureRefused`; a decoded command encodes back.
Anything else is a crash. The seeds carry commands signed by the test key, so the fuzzer
starts past the signature check.

    python tests/fuzz/harness_command.py -dict=tests/fuzz/json.dict corpus/ \
        tests/fuzz/corpus/command
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from datetime import UTC, datetime
from typing import Any

import atheris
from fuzzkit import Known, run

with atheris.instrument_imports(include=["meterhub"]):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meterhub import wire
    from meterhub.security import signing

# A fixed test key: the seed generator signs with the same one (never a real key).
TEST_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYRING = signing.Keyring([TEST_KEY.public_key()])
GATEWAY = "gw-1"
NOW = datetime(2025, 1, 1, 0, 1, tzinfo=UTC)

# decode_command is gaining the signature check (issue 12); pass what its signature asks for
_CONTEXT = {"keyring": KEYRING, "gateway": GATEWAY, "gateway_id": GATEWAY, "now": NOW}
_KWARGS = {name: _CONTEXT[name] for name in inspect.signature(wire.decode_command).parameters
           if name in _CONTEXT}


def decode_command(payload: bytes) -> wire.Command:
    """The gateway's decoder, given the test keyring when it takes one."""
    return wire.decode_command(payload, **_KWARGS)


def _verify(payload: bytes) -> None:
    try:
        obj: Any = json.loads(payload)
    except ValueError:
        return  # not JSON: the wire decoder's refusal, checked above
    with contextlib.suppress(signing.SignatureRefused):
        signing.verify(obj, KEYRING, gateway=GATEWAY, now=NOW)


def one_input(data: bytes) -> None:
    """One fuzz input: a command payload as it arrives on the gateway's cmd topic."""
    with contextlib.suppress(wire.WireError, signing.SignatureRefused):
        wire.encode_command(decode_command(data))
    _verify(data)


# Reported, pinned by strict-xfail tests in tests/fuzz/test_fuzz_regressions.py; the fixes
# belong to meterhub/wire.py and meterhub/security/signing.py (other branches).
KNOWN = (
    Known(UnicodeEncodeError, "surrogates not allowed", "test_command_refuses_lone_surrogates"),
    Known(ValueError, "Out of range float values", "test_command_refuses_non_finite_params"),
    Known(ValueError, "Exceeds the limit (4300 digits)", "test_wire_refuses_huge_integers"),
    Known(RecursionError, "maximum recursion depth", "test_wire_refuses_deep_nesting"),
    Known(OverflowError, "date value out of range", "test_verify_refuses_unrepresentable_times"),
)


if __name__ == "__main__":
    run(one_input, KNOWN)
    sys.exit(0)
