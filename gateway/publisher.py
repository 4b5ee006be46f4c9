"""Store and forward: readings -> batches sealed in SQLite -> MQTT, with events, acks and the
retained status on the same session.

Each bus worker hands its readings to :meth:`Publisher.take`; the batcher seals everything
taken during one poll cycle (``batch_interval_s``) into one batch with the next ``seq`` and
commits it before anything is published; the sender publishes sealed batches in ``seq``
order, one at a time with QoS 1. A PUBACK only says the broker has it (a broker killed before
saving it loses it), so each batch stays in the store until the collector's receipt on the
gateway's own ``receipt`` topic names its seq, after the collector committed it; a batch
with no receipt within ``receipt_timeout_s`` is sent again (doubling, jittered; the
collector's (gateway, seq) idempotency makes a repeat harmless). With ``receipts = false`` a
batch goes at its PUBACK, for collectors that send no receipts. When the broker is away the
batches simply wait; when it returns they drain at ``replay_rate``.

The publisher owns the MQTT connection. What else rides on the session (the command
executor) comes in as a :class:`SessionUser`, so this module knows nothing about commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiomqtt

from gateway.config import GatewayConfig
from gateway.stats import GatewayStats
from gateway.store import Store, StoredBatch
from meterhub import wire
from meterhub.settings import MqttSettings
from meterhub.supervise import Supervisor, safe_text
from meterhub.wire import Ack, Event, Reading

log = logging.getLogger(__name__)


class SessionUser(Protocol):
    """Something that rides on the publisher's MQTT session (the command executor)."""

    async def subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe, before the gateway announces itself online."""
        ...

    def deliver(self, payload: bytes | str) -> None:
        """A message on a topic it subscribed to (not to block: start work and return)."""
        ...


class Publisher:
    """One gateway's way out: the batch buffer in ``store``, events, acks, status, MQTT."""

    def __init__(
        self,
        config: GatewayConfig,
        mqtt: MqttSettings,
        store: Store,
        stats: GatewayStats,
        *,
        health: Callable[[], Awaitable[dict[str, Any]]],
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.supervisor = supervisor or Supervisor()
        self.mqtt = mqtt
        self.store = store
        self.stats = stats
        self.connected = False
        self._health = health
        self._pending: list[Reading] = []
        self._events: deque[Event] = deque(maxlen=1000)
        self._events_dirty = False
        self._acks: deque[Ack | bytes] = deque()
        self._outbox = asyncio.Event()  # a batch, an event or an ack waits to be published
        self._flush_now = asyncio.Event()
        self._topic = {k: wire.topic(config.site, config.gateway_id, k) for k in wire.KINDS}

    def load_unsent_events(self) -> None:
        """Take up the events the previous run saved but did not publish."""
        for payload in self.store.load_events():
            self._events.extend(wire.decode_events(payload)[1])

    # ------------------------------------------------------------------ what goes out

    def take(self, reading: Reading) -> None:
        """A reading from a bus worker, for the next sealed batch."""
        self._pending.append(reading)
        self.stats.readings_taken += 1
        if len(self._pending) >= self.config.max_batch_readings:
            self._flush_now.set()

    def event(self, event: Event) -> None:
        """An event for the ``events`` topic (kept across a restart until published)."""
        if event.kind in ("no_answer", "comm_error"):
            self.stats.poll_errors += 1
        self._events.append(event)
        self._events_dirty = True
        self._outbox.set()

    def ack(self, ack: Ack | bytes) -> None:
        """A command ack (or its encoded payload) for the ``cmd/ack`` topic, sent first."""
        self._acks.append(ack)
        self._outbox.set()

    # ------------------------------------------------------------------ batches

    async def batcher(self, stop: asyncio.Event) -> None:
        """Seal what the buses read every ``batch_interval_s`` (one batch per poll cycle)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.config.batch_interval_s)
            self._flush_now.clear()
            await self.seal()

    async def seal(self) -> None:
        """Commit every reading taken so far into batches (at most ``max_batch_readings``
        each), then snapshot the unsent events."""
        cfg = self.config
        while self._pending:
            readings = tuple(self._pending[: cfg.max_batch_readings])
            del self._pending[: len(readings)]

            def payload(seq: int, readings: tuple[Reading, ...] = readings) -> bytes:
                return wire.encode_readings(wire.ReadingsBatch(
                    cfg.gateway_id, cfg.site, seq, datetime.now(UTC), readings))

            sealed = await asyncio.to_thread(self.store.seal, payload, len(readings))
            self.stats.batches_sealed += 1
            if sealed.dropped_batches:
                self.stats.readings_dropped += sealed.dropped_readings
                self.event(Event(
                    "buffer_dropped", datetime.now(UTC), None,
                    f"buffer full ({cfg.buffer.max_batches} batches): dropped the oldest "
                    f"{sealed.dropped_batches} batches, {sealed.dropped_readings} readings",
                    {"batches": sealed.dropped_batches, "readings": sealed.dropped_readings}))
            self._outbox.set()
        await self.save_events()

    async def save_events(self) -> None:
        """Snapshot unsent events with each poll cycle, so an outage followed by a restart
        still reports what happened (a crash loses at most one cycle's events)."""
        if not self._events_dirty:
            return
        self._events_dirty = False
        payloads = [p for p in (self._encode_events([e]) for e in self._events) if p is not None]
        await asyncio.to_thread(self.store.save_events, payloads)

    async def drain_before_exit(self, timeout: float) -> None:
        """Give the broker (and, with receipts, the collector) up to ``timeout`` to take the
        sealed batches and acks; what is still unconfirmed stays for the next run."""
        deadline = time.monotonic() + timeout
        while self.connected and time.monotonic() < deadline:
            if (await asyncio.to_thread(self.store.depth))[0] == 0 and not self._acks:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ MQTT

    def _client(self) -> aiomqtt.Client:
        m, cfg = self.mqtt, self.config
        return aiomqtt.Client(
            m.host, m.port,
            username=m.username, password=m.password,
            identifier=f"meterhub-gw-{cfg.site}-{cfg.gateway_id}",
            # A persistent session: commands sent while the gateway was away are kept for it.
            clean_session=False,
            keepalive=cfg.mqtt.keepalive_s,
            tls_context=m.tls_context(),
            timeout=cfg.buffer.publish_timeout_s,
            will=aiomqtt.Will(self._topic["status"],
                              wire.offline_status(cfg.gateway_id, cfg.site), qos=1, retain=True),
        )

    async def mqtt_loop(self, stop: asyncio.Event, user: SessionUser) -> None:
        """Connect, and reconnect with back-off for as long as the gateway runs."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with self._client() as client:
                    backoff = 0.5
                    self.connected = True
                    self.stats.connects += 1
                    log.info("connected to %s", self.mqtt.url)
                    await self._session(client, stop, user)
                    return
            except aiomqtt.MqttError as exc:
                log.warning("broker %s: %s; retrying in %.1f s", self.mqtt.url, exc, backoff)
            finally:
                self.connected = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event,
                       user: SessionUser) -> None:
        await user.subscribe(client)
        if self.config.buffer.receipts:
            await client.subscribe(self._topic["receipt"], qos=1)
        await self._publish_status(client, "online")
        # a lost broker ends the session (and reconnects); any other failure restarts the task
        lost = (aiomqtt.MqttError,)
        sup = self.supervisor
        tasks = [
            sup.spawn("sender", lambda: self._sender(client), passthrough=lost),
            sup.spawn("inbox", lambda: self._inbox(client, user), passthrough=lost),
            sup.spawn("status", lambda: self._status_loop(client), passthrough=lost),
        ]
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in [waiter, *tasks]:
                task.cancel()
            await asyncio.gather(waiter, *tasks, return_exceptions=True)
        # graceful stop: the broker drops the last will on a clean disconnect, so say it
        await self._flush_acks(client)
        await self._flush_events(client)
        await self._publish_status(client, "offline")

    async def _inbox(self, client: aiomqtt.Client, user: SessionUser) -> None:
        """Receipts for the publisher, everything else (commands) for the session user."""
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                continue
            if message.topic.value == self._topic["receipt"]:
                await self._receipt(payload)
            else:
                user.deliver(payload)

    async def _receipt(self, payload: bytes | str) -> None:
        """Forget the batches a receipt names, if it is this gateway's."""
        cfg = self.config
        try:
            receipt = wire.decode_receipt(payload)
        except wire.WireError as exc:
            self.stats.receipts_ignored += 1
            log.warning("ignoring a receipt: %s", safe_text(str(exc)))
            return
        if (receipt.gateway, receipt.site) != (cfg.gateway_id, cfg.site):
            self.stats.receipts_ignored += 1
            log.warning("ignoring a receipt for %s/%s on this gateway's topic",
                        safe_text(receipt.site, 64), safe_text(receipt.gateway, 64))
            return
        sealed = await asyncio.to_thread(self.store.confirmed, list(receipt.ranges))
        self.stats.batches_confirmed += len(sealed)
        now = time.time()
        for at in sealed:
            self.stats.receipt_latency.observe(max(0.0, now - at))

    def _resend_after(self, attempts: int) -> float:
        """Seconds before a batch still without receipt goes again: the timeout, doubling
        with each attempt up to 32x, jittered so a fleet does not resend in step."""
        base = self.config.buffer.receipt_timeout_s * 2 ** min(attempts - 1, 5)
        return base * random.uniform(0.8, 1.2)

    async def _next_batches(self) -> list[StoredBatch]:
        if self.config.buffer.receipts:
            return await asyncio.to_thread(self.store.due, time.time(), 20)
        return await asyncio.to_thread(self.store.oldest, 20)

    async def _idle(self) -> None:
        """Wait for something to send: new work, or the next batch whose receipt is late."""
        timeout = None
        if self.config.buffer.receipts:
            next_at = await asyncio.to_thread(self.store.next_due)
            timeout = None if next_at is None else max(0.05, next_at - time.time())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.wait(), timeout)

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Publish acks, events and sealed batches; batches in seq order, paced, each
        kept until its receipt (or, receipts off, until the broker acknowledged it)."""
        store = self.store
        receipts = self.config.buffer.receipts
        spacing = 1.0 / self.config.buffer.replay_rate
        last = 0.0
        while True:
            self._outbox.clear()
            await self._flush_acks(client)
            await self._flush_events(client)
            batches = await self._next_batches()
            if not batches and not self._acks and not self._events:
                await self._idle()
                continue
            for batch in batches:
                await self._flush_acks(client)  # a command's ack does not wait for a backlog
                wait = last + spacing - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await client.publish(self._topic["readings"], batch.payload, qos=1)
                last = time.monotonic()
                if not receipts:
                    await asyncio.to_thread(store.acknowledged, [batch.seq])
                elif batch.attempts:
                    self.stats.batches_resent += 1
                if receipts:
                    await asyncio.to_thread(store.sent, batch.seq, self._resend_after)
                if not batch.attempts:
                    self.stats.batches_published += 1
                    self.stats.readings_published += batch.readings

    async def _flush_acks(self, client: aiomqtt.Client) -> None:
        while self._acks:
            ack = self._acks[0]
            try:
                payload = ack if isinstance(ack, bytes) else wire.encode_ack(ack)
            except (ValueError, wire.WireError) as exc:  # e.g. a lone surrogate in a field
                log.error("dropping an ack that cannot be encoded: %s", safe_text(str(exc)))
                self._acks.popleft()
                continue
            await client.publish(self._topic["cmd/ack"], payload, qos=1)
            self._acks.popleft()

    async def _flush_events(self, client: aiomqtt.Client) -> None:
        while self._events:
            events = list(self._events)[:100]
            payload = self._encode_events(events)
            if payload is not None:
                await client.publish(self._topic["events"], payload, qos=1)
            for _ in events:
                self._events.popleft()
            self._events_dirty = True

    def _encode_events(self, events: list[Event]) -> bytes | None:
        """The events as one payload; one that cannot be encoded is dropped (and said), not
        allowed to stop every later event."""
        try:
            return wire.encode_events(self.config.gateway_id, events)
        except (ValueError, wire.WireError):
            good = [e for e in events if self._encode_events_one(e)]
            return wire.encode_events(self.config.gateway_id, good) if good else None

    def _encode_events_one(self, event: Event) -> bool:
        try:
            wire.encode_events(self.config.gateway_id, [event])
        except (ValueError, wire.WireError) as exc:
            log.error("dropping an event that cannot be encoded: %s", safe_text(str(exc)))
            return False
        return True

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            await self._publish_status(client, "online")

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        status = wire.Status(self.config.gateway_id, self.config.site, state,  # type: ignore[arg-type]
                             datetime.now(UTC), await self._health())
        await client.publish(self._topic["status"], wire.encode_status(status), qos=1,
                             retain=True)
