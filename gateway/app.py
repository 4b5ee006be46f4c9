"""The gateway process: bus workers -> batches sealed in SQLite -> MQTT, and commands back.

Readings flow one way: each :class:`BusWorker` hands its readings to the batcher, which seals
everything taken during one poll cycle (``batch_interval_s``) into one batch with the next
``seq`` and commits it before anything is published; the publisher sends sealed batches in
``seq`` order, one at a time with QoS 1, and deletes each only after its PUBACK. When the
broker is away the batches simply wait; when it returns they drain at ``replay_rate``.

Commands come down the ``cmd`` topic, are checked and remembered by ``command_id`` in the
same SQLite file (a repeated id gets the first result again without touching the meter),
jump the queue of their bus and are acked "accepted" and then "done".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import BusConfig, GatewayConfig, MeterConfig
from gateway.drivers.base import Driver, DriverError, MeterRejected, NoAnswer
from gateway.scheduler import BusWorker
from gateway.store import Store
from meterhub import wire
from meterhub.settings import MqttSettings, data_dir, mqtt_settings
from meterhub.wire import Ack, Command, Event, Reading, RelayState

log = logging.getLogger(__name__)

COMMAND_MEMORY_S = 7 * 86400.0  # how long a command id is remembered for idempotency
_EXPECTED_RELAY: dict[str, RelayState] = {"relay_open": "open", "relay_close": "closed"}

DriverFactory = Callable[[BusConfig], Driver]


@dataclass
class GatewayStats:
    """Counters a caller (the demo, a test) can read while the gateway runs."""

    readings_taken: int = 0
    readings_published: int = 0  # readings whose batch the broker acknowledged
    batches_sealed: int = 0
    batches_published: int = 0
    readings_dropped: int = 0  # dropped from a full buffer
    commands_done: int = 0
    commands_repeated: int = 0
    poll_errors: int = 0
    connects: int = 0


class Gateway:
    """One gateway: every bus of its config, one SQLite state file, one MQTT session."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        mqtt: MqttSettings | None = None,
        state_dir: Path | None = None,
        driver_factory: DriverFactory | None = None,
    ) -> None:
        self.config = config
        self.mqtt = mqtt or config.mqtt.settings() or mqtt_settings()
        if self.mqtt is None:
            raise ValueError(f"{config.source}: no broker: set mqtt.url in the config or "
                             "METERHUB_MQTT_URL")
        self.state_dir = state_dir or config.state_dir or data_dir() / "gateway"
        if driver_factory is None:
            from gateway.drivers import open_driver

            driver_factory = open_driver
        self._driver_factory = driver_factory
        self.stats = GatewayStats()
        self.connected = False
        self._meters = config.meters()
        self._workers: dict[str, BusWorker] = {}
        self._pending: list[Reading] = []
        self._events: deque[Event] = deque(maxlen=1000)
        self._events_dirty = False
        self._acks: deque[Ack | bytes] = deque()
        self._outbox = asyncio.Event()  # a batch, an event or an ack waits to be published
        self._flush_now = asyncio.Event()
        self._running_commands: set[str] = set()
        self._command_tasks: set[asyncio.Task[None]] = set()
        self._store: Store | None = None
        self._started = time.monotonic()
        # (window start, busy seconds per bus then): bus utilisation between two statuses
        self._window: tuple[float, dict[str, float]] = (time.monotonic(), {})
        self._topic = {k: wire.topic(config.site, config.gateway_id, k) for k in wire.KINDS}

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish transactions in flight, seal what was
        read, publish what the broker will take within the timeout and say offline."""
        cfg = self.config
        self._store = Store(self.state_dir / f"{cfg.gateway_id}.sqlite3",
                            max_batches=cfg.buffer.max_batches)
        self.stats.readings_dropped = self._store.dropped_readings()
        for payload in self._store.load_events():  # unsent events of the previous run
            self._events.extend(wire.decode_events(payload)[1])
        await asyncio.to_thread(self._store.forget_commands_before,
                                time.time() - COMMAND_MEMORY_S)
        drivers: list[Driver] = []
        mqtt_stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            for bus in cfg.buses:
                driver = self._driver_factory(bus)
                drivers.append(driver)
                self._workers[bus.name] = BusWorker(
                    bus, driver, on_reading=self._take, on_event=self._event,
                    backoff_max_s=cfg.backoff_max_s)
            bus_tasks = [asyncio.create_task(w.run(), name=f"bus {n}")
                         for n, w in self._workers.items()]
            batcher = asyncio.create_task(self._batcher(stop), name="batcher")
            mqtt_task = asyncio.create_task(self._mqtt_loop(mqtt_stop), name="mqtt")
            tasks = [*bus_tasks, batcher, mqtt_task]
            log.info("gateway %s/%s running: %d buses, %d meters, state in %s", cfg.site,
                     cfg.gateway_id, len(cfg.buses), len(self._meters), self.state_dir)
            await self._until(stop, tasks)
            log.info("stopping: finishing transactions in flight, flushing the buffer")
            for worker in self._workers.values():
                worker.stop()
            await asyncio.gather(*bus_tasks, return_exceptions=True)
            await asyncio.gather(batcher, return_exceptions=True)
            await self._seal()
            await self._drain_before_exit(cfg.buffer.publish_timeout_s)
            await self._save_events()
            mqtt_stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(mqtt_task, return_exceptions=True), 10)
        finally:
            for task in [*tasks, *self._command_tasks]:
                task.cancel()
            await asyncio.gather(*tasks, *self._command_tasks, return_exceptions=True)
            for driver in drivers:
                with contextlib.suppress(Exception):
                    await driver.close()
            self._store.close()

    async def _until(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for ``stop``; a task that dies on its own is a bug worth stopping for."""
        waiter = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _drain_before_exit(self, timeout: float) -> None:
        assert self._store is not None
        deadline = time.monotonic() + timeout
        while self.connected and time.monotonic() < deadline:
            if (await asyncio.to_thread(self._store.depth))[0] == 0 and not self._acks:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ readings

    def _take(self, reading: Reading) -> None:
        self._pending.append(reading)
        self.stats.readings_taken += 1
        if len(self._pending) >= self.config.max_batch_readings:
            self._flush_now.set()

    async def _batcher(self, stop: asyncio.Event) -> None:
        """Seal what the buses read every ``batch_interval_s`` (one batch per poll cycle)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self.config.batch_interval_s)
            self._flush_now.clear()
            await self._seal()

    async def _seal(self) -> None:
        assert self._store is not None
        cfg = self.config
        while self._pending:
            readings = tuple(self._pending[: cfg.max_batch_readings])
            del self._pending[: len(readings)]

            def payload(seq: int, readings: tuple[Reading, ...] = readings) -> bytes:
                return wire.encode_readings(wire.ReadingsBatch(
                    cfg.gateway_id, cfg.site, seq, datetime.now(UTC), readings))

            sealed = await asyncio.to_thread(self._store.seal, payload, len(readings))
            self.stats.batches_sealed += 1
            if sealed.dropped_batches:
                self.stats.readings_dropped += sealed.dropped_readings
                self._event(Event(
                    "buffer_dropped", datetime.now(UTC), None,
                    f"buffer full ({cfg.buffer.max_batches} batches): dropped the oldest "
                    f"{sealed.dropped_batches} batches, {sealed.dropped_readings} readings",
                    {"batches": sealed.dropped_batches, "readings": sealed.dropped_readings}))
            self._outbox.set()
        await self._save_events()

    # ------------------------------------------------------------------ events

    def _event(self, event: Event) -> None:
        if event.kind in ("no_answer", "comm_error"):
            self.stats.poll_errors += 1
        self._events.append(event)
        self._events_dirty = True
        self._outbox.set()

    async def _save_events(self) -> None:
        """Snapshot unsent events with each poll cycle, so an outage followed by a restart
        still reports what happened (a crash loses at most one cycle's events)."""
        assert self._store is not None
        if not self._events_dirty:
            return
        self._events_dirty = False
        payloads = [wire.encode_events(self.config.gateway_id, [e]) for e in self._events]
        await asyncio.to_thread(self._store.save_events, payloads)

    # ------------------------------------------------------------------ MQTT

    def _client(self) -> aiomqtt.Client:
        m, cfg = self.mqtt, self.config
        assert m is not None
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

    async def _mqtt_loop(self, stop: asyncio.Event) -> None:
        """Connect, and reconnect with back-off for as long as the gateway runs."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with self._client() as client:
                    backoff = 0.5
                    self.connected = True
                    self.stats.connects += 1
                    log.info("connected to %s", self.mqtt.url if self.mqtt else "?")
                    await self._session(client, stop)
                    return
            except aiomqtt.MqttError as exc:
                log.warning("broker %s: %s; retrying in %.1f s", self.mqtt.url if self.mqtt
                            else "?", exc, backoff)
            finally:
                self.connected = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        await client.subscribe(self._topic["cmd"], qos=1)
        await self._publish_status(client, "online")
        tasks = [
            asyncio.create_task(self._sender(client)),
            asyncio.create_task(self._receiver(client)),
            asyncio.create_task(self._status_loop(client)),
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

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Publish acks, events and sealed batches; batches in seq order, paced, each
        deleted only once the broker has acknowledged it."""
        assert self._store is not None
        store = self._store
        spacing = 1.0 / self.config.buffer.replay_rate
        last = 0.0
        while True:
            self._outbox.clear()
            await self._flush_acks(client)
            await self._flush_events(client)
            batches = await asyncio.to_thread(store.oldest, 20)
            if not batches and not self._acks and not self._events:
                await self._outbox.wait()
                continue
            for batch in batches:
                await self._flush_acks(client)  # a command's ack does not wait for a backlog
                wait = last + spacing - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await client.publish(self._topic["readings"], batch.payload, qos=1)
                last = time.monotonic()
                await asyncio.to_thread(store.acknowledged, [batch.seq])
                self.stats.batches_published += 1
                self.stats.readings_published += batch.readings

    async def _flush_acks(self, client: aiomqtt.Client) -> None:
        while self._acks:
            ack = self._acks[0]
            payload = ack if isinstance(ack, bytes) else wire.encode_ack(ack)
            await client.publish(self._topic["cmd/ack"], payload, qos=1)
            self._acks.popleft()

    async def _flush_events(self, client: aiomqtt.Client) -> None:
        while self._events:
            events = list(self._events)[:100]
            await client.publish(self._topic["events"],
                                 wire.encode_events(self.config.gateway_id, events), qos=1)
            for _ in events:
                self._events.popleft()
            self._events_dirty = True

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            await self._publish_status(client, "online")

    async def _publish_status(self, client: aiomqtt.Client, state: str) -> None:
        status = wire.Status(self.config.gateway_id, self.config.site, state,  # type: ignore[arg-type]
                             datetime.now(UTC), await self.health())
        await client.publish(self._topic["status"], wire.encode_status(status), qos=1,
                             retain=True)

    async def health(self) -> dict[str, Any]:
        """Figures for the status message: buffer depth, bus utilisation, per-meter errors."""
        assert self._store is not None
        batches, readings = await asyncio.to_thread(self._store.depth)
        now = time.monotonic()
        start, busy_before = self._window
        elapsed = now - start
        self._window = (now, {n: w.busy_s for n, w in self._workers.items()})
        return {
            "uptime_s": round(now - self._started, 1),
            "buffer": {"batches": batches, "readings": readings,
                       "dropped_readings": self.stats.readings_dropped,
                       "last_seq": await asyncio.to_thread(self._store.last_seq)},
            "published": {"batches": self.stats.batches_published,
                          "readings": self.stats.readings_published},
            "commands_done": self.stats.commands_done,
            "buses": {
                n: {"endpoint": w.bus.endpoint, "protocol": w.bus.protocol,
                    "utilisation": w.utilisation_since(busy_before.get(n, 0.0), elapsed),
                    "transactions": w.transactions}
                for n, w in self._workers.items()
            },
            "meters": {mid: h.as_dict() for w in self._workers.values()
                       for mid, h in w.health.items()},
        }

    # ------------------------------------------------------------------ commands

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                continue
            task = asyncio.create_task(self._on_command(payload))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)

    def _ack(self, ack: Ack | bytes) -> None:
        self._acks.append(ack)
        self._outbox.set()

    def _done(self, cmd_id: str, meter: str, outcome: wire.Outcome,
              relay: RelayState | None = None, reason: str | None = None) -> Ack:
        return Ack(cmd_id, self.config.gateway_id, meter, "done", datetime.now(UTC),
                   outcome, relay, reason)

    async def _on_command(self, payload: bytes | str) -> None:
        assert self._store is not None
        try:
            cmd = wire.decode_command(payload)
        except wire.WireError as exc:
            self._invalid_command(payload, str(exc))
            return
        _seen, done_ack = await asyncio.to_thread(self._store.command_seen, cmd.command_id)
        if done_ack is not None:  # a repeat: the first result, the meter left alone
            self.stats.commands_repeated += 1
            self._ack(done_ack)
            return
        if cmd.command_id in self._running_commands:
            return  # the first copy is still on its way; its "done" answers both
        self._running_commands.add(cmd.command_id)
        try:
            ack = await self._execute(cmd)
            encoded = wire.encode_ack(ack)
            await asyncio.to_thread(self._store.command_finished, cmd.command_id, encoded)
            self.stats.commands_done += 1
            self._ack(encoded)
        finally:
            self._running_commands.discard(cmd.command_id)

    def _invalid_command(self, payload: bytes | str, reason: str) -> None:
        """Ack an unusable command when it names itself; otherwise all we can do is tell."""
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        cmd_id = obj.get("command_id") if isinstance(obj, dict) else None
        meter = obj.get("meter") if isinstance(obj, dict) else None
        if isinstance(cmd_id, str) and cmd_id:
            self._ack(self._done(cmd_id, meter if isinstance(meter, str) and meter else "?",
                                 "invalid", reason=reason))
        else:
            self._event(Event("command_invalid", datetime.now(UTC), None, reason))

    async def _execute(self, cmd: Command) -> Ack:
        assert self._store is not None
        if cmd.expired(datetime.now(UTC)):
            return self._done(cmd.command_id, cmd.meter, "expired",
                              reason=f"expired at {wire.utc_iso(cmd.expires_at)}")
        target = self._meters.get(cmd.meter)
        if target is None:
            return self._done(cmd.command_id, cmd.meter, "unknown_meter",
                              reason=f"no meter {cmd.meter!r} on gateway "
                                     f"{self.config.gateway_id}")
        bus, meter = target
        await asyncio.to_thread(self._store.command_started, cmd.command_id)
        self._ack(Ack(cmd.command_id, self.config.gateway_id, cmd.meter, "accepted",
                      datetime.now(UTC)))
        job = self._job(cmd, meter)
        try:
            return await self._workers[bus.name].submit(job)
        except NoAnswer as exc:
            return self._done(cmd.command_id, cmd.meter, "no_answer", reason=str(exc))
        except MeterRejected as exc:
            return self._done(cmd.command_id, cmd.meter, "rejected", reason=str(exc))
        except DriverError as exc:
            return self._done(cmd.command_id, cmd.meter, "failed", reason=str(exc))

    def _job(self, cmd: Command, meter: MeterConfig) -> Callable[[Driver], Awaitable[Ack]]:
        async def job(driver: Driver) -> Ack:
            # it may have waited behind another command: check expiry at the last moment
            if cmd.expired(datetime.now(UTC)):
                return self._done(cmd.command_id, cmd.meter, "expired",
                                  reason="expired while waiting for the bus")
            if cmd.action == "relay_status":
                return self._done(cmd.command_id, cmd.meter, "ok",
                                  await driver.read_relay(meter.address))
            if cmd.action == "time_sync":
                sync = getattr(driver, "time_sync", None)
                if sync is None:
                    return self._done(cmd.command_id, cmd.meter, "invalid",
                                      reason=f"{meter.protocol} meters have no time sync")
                await sync(datetime.now(UTC))
                return self._done(cmd.command_id, cmd.meter, "ok")
            relay = await driver.relay(meter.address, cmd.action)
            expected = _EXPECTED_RELAY.get(cmd.action)
            if expected is not None and relay != expected:
                return self._done(cmd.command_id, cmd.meter, "failed", relay,
                                  f"{cmd.action}: the meter accepted it but reads back "
                                  f"relay {relay}")
            return self._done(cmd.command_id, cmd.meter, "ok", relay)

        return job
