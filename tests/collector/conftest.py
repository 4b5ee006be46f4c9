"""Fixtures of the collector tests (the services come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from collector_helpers import Publisher

from meterhub.settings import MqttSettings


@pytest.fixture
def pub(mqtt: MqttSettings) -> Iterator[Publisher]:
    """A QoS 1 publisher on the test broker."""
    p = Publisher(mqtt)
    yield p
    p.close()
