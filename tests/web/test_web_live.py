"""Live telemetry over Server-Sent Events: new readings and gateway status reach a listener
within seconds, from the database and straight from the broker's status topic."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from web_helpers import Fleet, Logins, put_readings

from meterhub import wire
from meterhub.settings import MqttSettings
from web import create_app

Client = TestClient[web.Request, web.Application]


async def _events(resp: ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    kind, data = "", ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            yield kind, json.loads(data)
            kind, data = "", ""


async def _wait_for(resp: ClientResponse, kind: str, match: Any,
                    timeout: float = 5.0) -> tuple[Any, float]:
    """The first ``kind`` event whose data satisfies ``match``, and when it came."""
    async def find() -> Any:
        async for k, data in _events(resp):
            if k == kind and match(data):
                return data
        raise AssertionError("stream ended")

    data = await asyncio.wait_for(find(), timeout)
    return data, time.monotonic()


async def test_new_reading_and_offline_gateway_are_pushed(client: Client, logins: Logins,
                                                          fleet: Fleet, db_url: str) -> None:
    resp = await client.get("/api/v1/live", headers=logins.auth("viewer"))
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    snapshot, _ = await _wait_for(resp, "snapshot", lambda d: True)
    assert {g["gateway"] for g in snapshot["gateways"]} == {fleet.gateway,
                                                            fleet.offline_gateway}
    assert snapshot["open_reviews"] == 1
    await asyncio.sleep(0.5)  # the poller has taken its first look

    meter = fleet.meters[0]
    at = datetime.now(UTC) + timedelta(seconds=1)
    with psycopg.connect(db_url) as conn:
        put_readings(conn, [(meter, "power_active_total", at, 7.25)])
        conn.execute("UPDATE meters SET last_seen = %s WHERE meter_id = %s", (at, meter))
    sent = time.monotonic()
    update, got = await _wait_for(
        resp, "meter", lambda d: d["meter"] == meter
        and d["values"]["power_active_total"]["value"] == 7.25)
    assert update["last_seen"].startswith(at.isoformat()[:19])
    assert got - sent < 3.0

    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE gateways SET state = 'offline', status_at = now()"
                     " WHERE gateway = %s", (fleet.gateway,))
    sent = time.monotonic()
    gw, got = await _wait_for(resp, "gateway", lambda d: d["gateway"] == fleet.gateway
                              and d["status"] == "offline")
    assert gw["offline_reason"].startswith("the gateway reported offline")
    assert got - sent < 3.0
    resp.close()


async def test_live_needs_a_login(client: Client) -> None:
    resp = await client.get("/api/v1/live")
    assert resp.status == 401
    assert "log in" in (await resp.json())["error"]["message"]


async def test_last_will_from_the_broker_shows_at_once(db_url: str, logins: Logins,
                                                       mqtt: MqttSettings, site: str) -> None:
    """No collector running: the hub's own status subscription carries the offline."""
    app = create_app(db_url, mqtt=mqtt, live_interval_s=30)  # the DB poll would be too slow
    gateway, stranger = f"{site}-gw", f"{site}-other-db"
    with psycopg.connect(db_url) as conn:  # as the collector recorded it
        conn.execute("INSERT INTO gateways (gateway, site, state, last_seen)"
                     " VALUES (%s, %s, 'online', now())", (gateway, site))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/live", headers=logins.auth("viewer"))
        await _wait_for(resp, "snapshot", lambda d: True)
        await asyncio.sleep(1.0)  # the hub's subscription is in place
        async with aiomqtt.Client(mqtt.host, mqtt.port) as pub:
            # A gateway of another deployment on the same broker is not shown.
            other = wire.topic(site, stranger, "status")
            await pub.publish(other, wire.offline_status(stranger, site), qos=1)
            topic = wire.topic(site, gateway, "status")
            await pub.publish(topic, wire.offline_status(gateway, site), qos=1, retain=True)
            sent = time.monotonic()
            try:
                gw, got = await _wait_for(
                    resp, "gateway", lambda d: d["gateway"] in (gateway, stranger))
            finally:
                await pub.publish(topic, b"", qos=1, retain=True)  # clear the retained one
        assert gw["gateway"] == gateway
        assert gw["status"] == "offline" and gw["source"] == "mqtt"
        assert got - sent < 2.0
        resp.close()


async def test_future_clock_meter_hides_no_one(client: Client, logins: Logins, fleet: Fleet,
                                               db_url: str) -> None:
    """A meter whose clock runs a day ahead must not hide the others' updates, and a new
    review item moves the open count."""
    resp = await client.get("/api/v1/live", headers=logins.auth("viewer"))
    await _wait_for(resp, "snapshot", lambda d: True)
    await asyncio.sleep(0.5)
    skewed, normal = fleet.meters[1], fleet.meters[2]
    ahead = datetime.now(UTC) + timedelta(days=1)
    with psycopg.connect(db_url) as conn:
        put_readings(conn, [(skewed, "voltage_a", ahead, 231.0)])
        conn.execute("UPDATE meters SET last_seen = %s WHERE meter_id = %s", (ahead, skewed))
    await _wait_for(resp, "meter", lambda d: d["meter"] == skewed)
    at = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        put_readings(conn, [(normal, "voltage_a", at, 229.5)])
        conn.execute("UPDATE meters SET last_seen = %s WHERE meter_id = %s", (at, normal))
    update, _ = await _wait_for(resp, "meter", lambda d: d["meter"] == normal
                                and d["values"]["voltage_a"]["value"] == 229.5)
    assert update["last_seen"].startswith(at.isoformat()[:19])

    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO review_items (meter_id, rule, period_start, period_end,"
                     " reason) VALUES (%s, 'drop', now(), now(), 'drop to zero')", (normal,))
    review, _ = await _wait_for(resp, "review", lambda d: d["open"] == 2)
    assert review == {"open": 2}
    resp.close()
