"""Billing test fixtures: a connection to the test's own database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from billing_helpers import BillingKey


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def billing_key(tmp_path: Path) -> BillingKey:
    """A fresh signing key (0600, in the test's tmp_path) and the keyring trusting it."""
    return BillingKey.create(tmp_path)
