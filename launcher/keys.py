"""``meterhub keys generate``: a command-signing key pair for billing or the operator tool.

The private key (0600) stays with the signer; the public key file is what gateways list as
trusted. Rotation: generate a new pair, add its public key to every gateway, switch the
signer, then remove the old public key from the gateways.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from meterhub.security.signing import generate_private_key, write_public_key


def generate_key_pair(private_path: Path) -> tuple[str, Path]:
    """Write ``private_path`` (0600, never overwritten) and ``<name>.pub`` next to it;
    returns the key id and the public key's path."""
    key = generate_private_key(private_path)
    public_path = private_path.with_suffix(".pub")
    return write_public_key(public_path, key.public_key()), public_path


def register(subparsers: Any) -> None:
    """Add ``keys generate`` to the ``meterhub`` command."""
    parser = subparsers.add_parser("keys", help="command-signing keys",
                                   description="Ed25519 keys that sign relay commands.")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="write a new private key and its public key")
    gen.add_argument("path", type=Path, help="private key file to create, e.g. billing.pem")
    gen.set_defaults(handler=_generate_command)


def _generate_command(args: argparse.Namespace) -> int:
    key_id, public_path = generate_key_pair(args.path)
    print(f"key id {key_id}\nprivate key: {args.path} (keep it with the signer)\n"
          f"public key: {public_path} (give it to the gateways)")
    return 0
