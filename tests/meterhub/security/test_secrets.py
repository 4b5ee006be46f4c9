"""Secrets come from 0600 files or the environment and never show in repr/str/logs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from meterhub.security import Secret, SecretError, load_secret, write_private_file


def test_file_secret_0600_loads_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.password"
    write_private_file(path, b"hunter2\n")
    secret = load_secret("mqtt.password", {"file": "mqtt.password"}, base_dir=tmp_path)
    assert secret.reveal() == "hunter2"
    assert not secret.inline


def test_world_readable_file_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.password"
    path.write_text("hunter2")
    os.chmod(path, 0o644)
    with pytest.raises(SecretError) as info:
        load_secret("gateway.mqtt.password", {"file": str(path)})
    message = str(info.value)
    assert "gateway.mqtt.password" in message and "0644" in message
    assert "hunter2" not in message


def test_missing_file_and_env_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"^db\.password: .* does not exist"):
        load_secret("db.password", {"file": str(tmp_path / "nope")})
    with pytest.raises(SecretError, match=r"db\.password: environment variable X_PW is not set"):
        load_secret("db.password", {"env": "X_PW"}, environ={})
    with pytest.raises(SecretError, match=r"db\.password: expected"):
        load_secret("db.password", {"file": "a", "env": "B"})


def test_env_secret() -> None:
    secret = load_secret("k", {"env": "X_PW"}, environ={"X_PW": "s3"})
    assert secret.reveal() == "s3" and secret.source == "env X_PW"


def test_inline_is_allowed_but_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        secret = load_secret("meters.password", "123456")
    assert secret.inline and secret.reveal() == "123456"
    assert "inline" in caplog.text and "123456" not in caplog.text


def test_repr_and_str_hide_the_value(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("topsecret", "env X")
    assert "topsecret" not in repr(secret)
    assert "topsecret" not in str(secret)
    assert "topsecret" not in f"{secret} {secret!r} {[secret]} {({'pw': secret})}"
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("connecting with %s", secret)
    assert "topsecret" not in caplog.text
    assert secret == Secret("topsecret", "file /x")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)
