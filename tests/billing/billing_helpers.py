"""Helpers for billing tests: write validated intervals and meters the way the collector
does (its tables; its triggers put what is written on billing's change queue). A module of
its own name (not conftest) so it cannot be confused with another folder's conftest when the
whole suite runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiomqtt
import psycopg

from billing import BillingConfig, BillingEngine
from meterhub import wire
from meterhub.security import Keyring, generate_private_key
from meterhub.settings import MqttSettings

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, 08:00 in Shanghai


@dataclass(frozen=True)
class BillingKey:
    """Billing's command-signing key for a test, and the keyring a gateway trusting it holds."""

    path: Path
    keyring: Keyring

    @classmethod
    def create(cls, folder: Path) -> BillingKey:
        key = generate_private_key(folder / "billing-signing.pem")
        return cls(folder / "billing-signing.pem", Keyring([key.public_key()]))


def put_intervals(
    conn: psycopg.Connection,
    meter: str,
    kwhs: Sequence[Decimal | str],
    *,
    start: datetime = T0,
    step: timedelta = timedelta(minutes=15),
    quality: str = "A",
    held: bool = False,
) -> None:
    """Insert or replace intervals (the collector's triggers queue them for billing)."""
    conn.execute("INSERT INTO meters (meter_id) VALUES (%s) ON CONFLICT DO NOTHING", (meter,))
    rows = [
        (start + i * step, int(step.total_seconds()), int(Decimal(str(k)).scaleb(4)), quality,
         held, meter)
        for i, k in enumerate(kwhs)
    ]
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO intervals (meter, interval_start, seconds, kwh_e4, quality, held)
               SELECT meter_key, %s, %s, %s, %s, %s FROM meters WHERE meter_id = %s
               ON CONFLICT (meter, interval_start) DO UPDATE
               SET kwh_e4 = EXCLUDED.kwh_e4, quality = EXCLUDED.quality, held = EXCLUDED.held""",
            rows,
        )


def set_held(conn: psycopg.Connection, meter: str, start: datetime, held: bool) -> None:
    conn.execute(
        "UPDATE intervals i SET held = %s FROM meters m WHERE m.meter_key = i.meter"
        " AND m.meter_id = %s AND i.interval_start = %s",
        (held, meter, start),
    )


def put_meter(conn: psycopg.Connection, meter: str, site: str, gateway: str) -> None:
    conn.execute(
        """INSERT INTO meters (meter_id, gateway, site, protocol, expected_interval_s,
               first_seen, last_seen) VALUES (%s, %s, %s, 'dlt645', 900, now(), now())
           ON CONFLICT (meter_id) DO UPDATE SET gateway = EXCLUDED.gateway,
               site = EXCLUDED.site""",
        (meter, gateway, site),
    )


def config(db_url: str, mqtt: MqttSettings, key: BillingKey, **kw: object) -> BillingConfig:
    base: dict[str, object] = {"poll_interval_s": 0.1,
                               "ack_timeout_s": 2.0, "retry_backoff_s": 0.2}
    base.update(kw)
    return BillingConfig(database_url=db_url, mqtt=mqtt, signing_key_path=key.path,
                         **base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def engines(*cfgs: BillingConfig) -> AsyncIterator[list[BillingEngine]]:
    stop = asyncio.Event()
    engs = [BillingEngine(c) for c in cfgs]
    tasks = [asyncio.create_task(e.run(stop)) for e in engs]
    try:
        yield engs
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def q(db_url: str, sql: str, *args: object) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as c:
        return c.execute(sql, args).fetchall()  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def billing_events(mqtt: MqttSettings, site: str) -> AsyncIterator[list[dict]]:
    """The alert events billing publishes for ``site``, collected while the block runs."""
    events: list[dict] = []

    async def watch() -> None:
        async with aiomqtt.Client(mqtt.host, mqtt.port) as cl:
            await cl.subscribe(wire.topic(site, "billing", "events"), qos=1)
            async for m in cl.messages:
                events.extend(json.loads(m.payload)["events"])  # type: ignore[arg-type]

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # subscribed before anything is published
    try:
        yield events
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
