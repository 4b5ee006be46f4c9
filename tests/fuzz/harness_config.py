"""Fuzz the gateway's config loader with TOML text, as an installer's editor would leave it.

Contract: :func:`gateway.config.load_config` returns a config or raises :class:`ConfigError`;
anything else is a crash.

    python tests/fuzz/harness_config.py -dict=tests/fuzz/toml.dict corpus/ tests/fuzz/corpus/config
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris
from fuzzkit import run

with atheris.instrument_imports(include=["gateway.config", "meterhub", "tomllib"]):
    from gateway.config import ConfigError, load_config

_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "gateway.toml"


def one_input(data: bytes) -> None:
    """One fuzz input: the bytes of a gateway.toml."""
    _FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(_FILE)


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
