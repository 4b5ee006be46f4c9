"""The key that signs session cookies: from a 0600 file or the environment, never from the
database it protects.

``METERHUB_WEB_SESSION_KEY_FILE`` names a file (mode 0600) holding the key;
``METERHUB_WEB_SESSION_KEY`` holds it directly. Several web processes behind one balancer
share sessions by sharing the key. Without either, a dev or demo run gets a key file of its
own in the data directory (created 0600 once, and said so in the log).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from meterhub import settings
from meterhub.security import SecretError, load_secret, write_private_file

log = logging.getLogger(__name__)

KEY_FILE_ENV = "METERHUB_WEB_SESSION_KEY_FILE"
KEY_ENV = "METERHUB_WEB_SESSION_KEY"
GENERATED_NAME = "web-session.key"
MIN_KEY_CHARS = 32


def session_key(key_file: str | None = None, *, environ: Mapping[str, str] | None = None,
                data_dir: Path | None = None) -> bytes:
    """The signing key: ``key_file`` (a setting) first, then the two environment variables,
    else a generated file in ``data_dir`` (default: meterhub's data directory).

    Raises SecretError for a key file others can read, or a key too short to be one."""
    env = os.environ if environ is None else environ
    path = key_file or env.get(KEY_FILE_ENV)
    if path:
        secret = load_secret("web session key", {"file": path})
    elif env.get(KEY_ENV):
        secret = load_secret("web session key", {"env": KEY_ENV}, environ=env)
    else:
        return _generated(data_dir or settings.data_dir())
    value = secret.reveal()
    if len(value) < MIN_KEY_CHARS:
        raise SecretError(f"web session key ({secret.source}) is shorter than "
                          f"{MIN_KEY_CHARS} characters; make one with: "
                          "python -c 'import secrets; print(secrets.token_urlsafe(48))'")
    return value.encode()


def _generated(data_dir: Path) -> bytes:
    path = data_dir / GENERATED_NAME
    try:
        write_private_file(path, secrets.token_urlsafe(48).encode(), overwrite=False)
    except FileExistsError:  # made earlier, or by another process just now
        log.info("session key from the generated file %s", path)
    else:
        log.warning("no session key configured (%s or %s): generated %s (mode 0600); set "
                    "one of them for a site, and share it between web processes",
                    KEY_FILE_ENV, KEY_ENV, path)
    return load_secret("web session key", {"file": str(path)}).reveal().encode()
