"""Trust: signed commands, replay protection, secret values and secret files.

Kernel code: imports no project part, so the gateway, billing and the launcher can all use it.
"""

from meterhub.security.files import InsecureFileError, check_private_file, write_private_file
from meterhub.security.replay import ReplayGuard, SqliteReplayGuard
from meterhub.security.secrets import Secret, SecretError, load_secret
from meterhub.security.signing import (
    CommandClaims,
    CommandSigner,
    Envelope,
    KeyFileError,
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

__all__ = [
    "CommandClaims",
    "CommandSigner",
    "Envelope",
    "InsecureFileError",
    "KeyFileError",
    "Keyring",
    "RefusalReason",
    "ReplayGuard",
    "Secret",
    "SecretError",
    "SignatureRefused",
    "SqliteReplayGuard",
    "check_private_file",
    "generate_private_key",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "load_secret",
    "verify",
    "write_private_file",
    "write_public_key",
]
