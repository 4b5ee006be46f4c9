"""Secrets in configuration: point to a file or an environment variable, never print the value.

A config value may be given three ways::

    password = { file = "/etc/meterhub/gw-1.password" }   # file, mode 0600 (preferred)
    password = { env = "METERHUB_MQTT_PASSWORD" }          # environment variable
    password = "s3cret"                                    # inline: allowed, but flagged

:func:`load_secret` returns a :class:`Secret` whose ``repr`` and ``str`` never show the value,
so a secret that ends up in a log line, a traceback or a status payload shows as ``***``.
Code that must hand the value to a library calls :meth:`Secret.reveal` at that one spot.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meterhub.security.files import InsecureFileError, read_private_file

log = logging.getLogger(__name__)


class SecretError(ValueError):
    """A secret that cannot be loaded; the message names the config key, never the value."""


class Secret:
    """A value that never shows itself: ``repr``/``str`` print where it came from, not what."""

    __slots__ = ("_value", "inline", "source")

    def __init__(self, value: str, source: str, *, inline: bool = False) -> None:
        self._value = value
        self.source = source  # "file /path", "env NAME" or "inline"
        self.inline = inline

    def reveal(self) -> str:
        """The value, for the one call that needs it (a client's password argument)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source}, ***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled (it would leave the process in clear)")


def load_secret(
    key: str,
    spec: str | Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Secret:
    """Resolve a secret given as ``{file = ...}``, ``{env = ...}`` or an inline string.

    ``key`` is the config key (e.g. ``"mqtt.password"``) every error message names.
    ``base_dir`` resolves a relative file path (the config file's folder). A file must be
    mode 0600 (or stricter); its trailing newline is dropped. An inline value is accepted
    with a warning, so a site can migrate, but :attr:`Secret.inline` lets a strict caller
    refuse it.
    """
    if isinstance(spec, str):
        if not spec:
            raise SecretError(f"{key}: empty secret")
        log.warning("secret given inline in the config; use {file = ...} or {env = ...}",
                    extra={"key": key})
        return Secret(spec, "inline", inline=True)
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in ("file", "env"):
        raise SecretError(f"{key}: expected {{file = \"PATH\"}}, {{env = \"NAME\"}} "
                          "or a string")
    (kind, where), = spec.items()
    if not isinstance(where, str) or not where:
        raise SecretError(f"{key}: {kind} must be a non-empty string")
    if kind == "env":
        value = (os.environ if environ is None else environ).get(where)
        if not value:
            raise SecretError(f"{key}: environment variable {where} is not set or empty")
        return Secret(value, f"env {where}")
    path = Path(where).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        raw = read_private_file(path, key)
    except (InsecureFileError, FileNotFoundError) as exc:
        raise SecretError(str(exc)) from None
    except OSError as exc:
        raise SecretError(f"{key}: cannot read {path}: {exc.strerror}") from None
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretError(f"{key}: {path} is not UTF-8 text") from None
    if not value:
        raise SecretError(f"{key}: {path} is empty")
    return Secret(value, f"file {path}")
