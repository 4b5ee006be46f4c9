"""Live telemetry for the page: Server-Sent Events fed by one shared poller.

One task per process polls a few cheap queries (the small ``gateways`` and ``meters`` tables,
then the newest readings of only the meters whose ``last_seen`` moved) and fans the changes
out to every connected browser, so the database load does not grow with viewers. When an
MQTT broker is configured the hub also listens to the gateways' retained ``status`` topic:
a last-will "offline" reaches the page at once, without waiting for the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiohttp import web

from collector import read_model as collector_read
from meterhub import wire
from meterhub.settings import MqttSettings
from web import database, queries
from web._http import current_user
from web.errors import Forbidden

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
WATERMARK_MARGIN = timedelta(minutes=2)
_QUEUE_MAX = 256


@dataclass
class _Snapshot:
    gateways: dict[str, collector_read.Gateway] = field(default_factory=dict)
    meter_seen: dict[str, datetime] = field(default_factory=dict)
    watermark: datetime | None = None  # newest last_seen so far, minus a margin
    open_reviews: int | None = None
    review_version: tuple[int, Any] | None = None


class LiveHub:
    """Polls while anybody listens; each subscriber gets a bounded queue of events."""

    def __init__(self, app: web.Application, interval_s: float, offline_after_s: float,
                 mqtt: MqttSettings | None) -> None:
        self._app = app
        self._interval = interval_s
        self._offline_after = offline_after_s
        self._mqtt = mqtt
        self._subscribers: set[asyncio.Queue[tuple[str, Any]]] = set()
        self._snapshot = _Snapshot()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="web-live-poll"))
        # Learn the current state now, so a change in the first seconds after the first
        # viewer connects is pushed rather than taken for the starting point.
        with contextlib.suppress(Exception):
            await database.run(self._app, self._poll_once)
        if self._mqtt is not None:
            self._tasks.append(asyncio.create_task(self._mqtt_loop(), name="web-live-mqtt"))

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for queue in list(self._subscribers):
            self._offer(queue, ("bye", {}))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # ------------------------------------------------------------------ subscribers

    async def handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v1/live``: an event stream (``snapshot`` first, then changes); staff
        only (a customer sees their own accounts, not the fleet)."""
        user = current_user(request)
        if not user.can("viewer"):
            raise Forbidden(f"this needs the viewer role; {user.name} is {user.role}")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(_QUEUE_MAX)
        self._subscribers.add(queue)
        self._wake.set()
        try:
            try:
                snapshot = await database.run(request, queries.fleet_snapshot,
                                              self._offline_after)
            except psycopg.Error:
                # Headers are sent: say it in the stream; EventSource retries by itself.
                log.warning("live snapshot failed", exc_info=True)
                await _send(response, "unavailable",
                            {"message": "the database is not reachable right now"})
                return response
            await _send(response, "snapshot", snapshot)
            while not self._stopping.is_set():
                try:
                    kind, data = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if kind == "bye":
                    break
                await _send(response, kind, data)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    def publish(self, kind: str, data: Any) -> None:
        for queue in list(self._subscribers):
            self._offer(queue, (kind, data))

    @staticmethod
    def _offer(queue: asyncio.Queue[tuple[str, Any]], item: tuple[str, Any]) -> None:
        # A viewer that does not read (a sleeping phone) loses old events, not the process.
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
        queue.put_nowait(item)

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await database.run(self._app, self._poll_once)
                failures = 0
            except Exception as exc:
                # A database outage: back off (up to 30 s) instead of logging every second.
                failures += 1
                log.warning("live poll failed (%s); retry %d", exc, failures,
                            exc_info=failures == 1)
            pause = min(self._interval * 2 ** min(failures, 6), max(self._interval, 30.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    def _poll_once(self, conn: psycopg.Connection[Any]) -> None:
        """Runs in a worker thread; events go back to the loop thread-safely."""
        snap = self._snapshot
        events: list[tuple[str, Any]] = []
        # The first look only learns the state: every subscriber starts from a snapshot.
        first = snap.review_version is None
        gateways = {g["gateway"]: g for g in collector_read.gateways(conn, self._offline_after)}
        for name, gw in gateways.items():
            old = snap.gateways.get(name)
            if not first and (old is None or _gateway_changed(old, gw)):
                events.append(("gateway", gw))
        snap.gateways = gateways
        seen = collector_read.meter_last_seen(conn, snap.watermark)
        moved = [m for m, ts in seen.items() if snap.meter_seen.get(m) != ts]
        snap.meter_seen.update(seen)
        if seen:
            # Readings arrive in gateway time and batches interleave: look back a little, and
            # never past our own clock (one meter with a clock in the future would hide the
            # rest).
            newest = min(max(seen.values()), datetime.now(UTC)) - WATERMARK_MARGIN
            snap.watermark = max(newest, snap.watermark) if snap.watermark else newest
        if moved and not first:
            for meter in collector_read.latest_values(conn, moved):
                events.append(("meter", meter))
        version = collector_read.review_version(conn)
        if version != snap.review_version:
            if snap.review_version is not None:
                events.append(("review", {"open": version[0]}))
            snap.review_version = version
        if events:
            loop = self._loop
            for event in events:
                loop.call_soon_threadsafe(self.publish, *database.jsonable(list(event)))

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._tasks[0].get_loop()

    # ------------------------------------------------------------------ MQTT status

    async def _mqtt_loop(self) -> None:
        """Status messages straight from the broker: offline shows as soon as the will fires."""
        import aiomqtt

        assert self._mqtt is not None
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                async with aiomqtt.Client(
                    self._mqtt.host, self._mqtt.port, username=self._mqtt.username,
                    password=self._mqtt.password, tls_context=self._mqtt.tls_context(),
                ) as client:
                    await client.subscribe(wire.subscription("status"), qos=1)
                    backoff = 1.0
                    async for message in client.messages:
                        self._on_status(bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError as exc:
                log.info("live MQTT connection lost (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _on_status(self, payload: bytes) -> None:
        try:
            status = wire.decode_status(payload)
        except wire.WireError:
            return  # the collector dead-letters it; the page has nothing to show
        if status.gateway not in self._snapshot.gateways:
            return  # not one of this database's gateways (a broker may serve several)
        self.publish("gateway", database.jsonable({
            "gateway": status.gateway, "site": status.site, "status": status.state,
            "reported_state": status.state, "status_at": status.at,
            "health": dict(status.health), "source": "mqtt",
            "received_at": datetime.now(UTC),
        }))


def _gateway_changed(old: collector_read.Gateway, new: collector_read.Gateway) -> bool:
    keys = ("status", "reported_state", "status_at", "health", "meters", "last_seen")
    return any(old.get(k) != new.get(k) for k in keys)


async def _send(response: web.StreamResponse, kind: str, data: Any) -> None:
    payload = json.dumps(database.jsonable(data), separators=(",", ":"))
    await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())


LIVE_KEY: web.AppKey[LiveHub] = web.AppKey("live", LiveHub)
