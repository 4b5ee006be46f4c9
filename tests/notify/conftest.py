"""Notify test fixtures: a connection to the test's own database, a secret file maker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from meterhub.security.files import write_private_file


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def secret_file(tmp_path: Path) -> Callable[[str, str], dict[str, str]]:
    """Write a 0600 secret file; returns the config value pointing at it."""

    def make(name: str, value: str) -> dict[str, str]:
        path = tmp_path / f"{name}.secret"
        write_private_file(path, value.encode())
        return {"file": str(path)}

    return make
