"""Fuzz the command path of a gateway: ``wire.decode_command`` checks form and signature
against a test keyring.

Contract: ``decode_command`` returns a :class:`SignedCommand` or raises :class:`WireError` or
:class:`SignatureRefused`; a command it accepts signs and encodes back. Anything else is a
crash. The seeds carry commands signed by the test key, so the fuzzer starts past the
signature check.

    python tests/fuzz/harness_command.py -dict=tests/fuzz/json.dict corpus/ \\
        tests/fuzz/corpus/command
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime

import atheris
from fuzzkit import run

with atheris.instrument_imports(include=["meterhub"]):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meterhub import wire
    from meterhub.security import signing

# A fixed test key: the seed generator signs with the same one (never a real key).
SIGNER = signing.CommandSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEYRING = signing.Keyring([SIGNER.public_key])
GATEWAY = "gw-1"
NOW = datetime(2025, 1, 1, 0, 1, tzinfo=UTC)


def one_input(data: bytes) -> None:
    """One fuzz input: a command payload as it arrives on the gateway's cmd topic."""
    with contextlib.suppress(wire.WireError, signing.SignatureRefused):
        signed = wire.decode_command(data, KEYRING, gateway=GATEWAY, now=NOW)
        wire.encode_command(signed.command, signed.gateway, SIGNER, nonce=signed.nonce)




if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
