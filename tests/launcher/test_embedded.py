"""The embedded defaults a laptop runs on: amqtt (when no mosquitto binary) and pgserver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from launcher.embedded import amqtt_broker, embedded_postgres, mosquitto_broker
from meterhub import db

pytestmark = pytest.mark.integration


async def _round_trip(host: str, port: int) -> bytes:
    async with aiomqtt.Client(host, port, identifier="embedded-test") as client:
        await client.subscribe("meterhub/v1/t/g/readings", qos=1)
        await client.publish("meterhub/v1/t/g/readings", b"hello", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("no message")


async def test_amqtt_broker_carries_qos1() -> None:
    with amqtt_broker() as settings:
        assert await _round_trip(settings.host, settings.port) == b"hello"


async def test_mosquitto_binary_broker(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path) as settings:
        assert await _round_trip(settings.host, settings.port) == b"hello"


def test_pgserver_runs_migrations_twice(tmp_path: Path) -> None:
    with embedded_postgres(tmp_path / "pg") as url:
        first = db.migrate(url)
        assert first, "a new database gets every migration"
        assert db.migrate(url) == [], "migrations are applied once"
        with psycopg.connect(url) as conn:
            (count,) = conn.execute("SELECT count(*) FROM meterhub_migrations").fetchone() or (0,)
        assert count == len(first)
