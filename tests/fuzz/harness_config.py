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
from fuzzkit import Known, run

with atheris.instrument_imports(include=["gateway.config", "meterhub", "tomllib"]):
    from gateway.config import ConfigError, load_config

_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "gateway.toml"


def one_input(data: bytes) -> None:
    """One fuzz input: the bytes of a gateway.toml."""
    _FILE.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(_FILE)


# Reported, pinned by strict-xfail tests in tests/fuzz/test_fuzz_regressions.py; the fixes
# belong to gateway/config.py and meterhub/settings.py (other branches).
KNOWN = (
    Known(UnicodeDecodeError, "codec can't decode", "test_config_refuses_non_utf8"),
    Known(ValueError, "invalid literal for int()", "test_config_refuses_non_ascii_digits"),
    Known(ValueError, "Exceeds the limit (4300 digits)", "test_config_refuses_unusable_toml"),
    Known(RecursionError, "maximum recursion depth", "test_config_refuses_unusable_toml"),
    Known(ValueError, "Invalid IPv6 URL", "test_config_refuses_unsplittable_mqtt_url"),
)


if __name__ == "__main__":
    run(one_input, KNOWN)
    sys.exit(0)
