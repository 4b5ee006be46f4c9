"""The gateway process: bus workers -> publisher (batches sealed in SQLite -> MQTT), and the
command executor bringing commands back onto the buses.

:class:`Gateway` only composes: it opens the SQLite state file, starts one
:class:`~gateway.scheduler.BusWorker` per bus, the :class:`~gateway.publisher.Publisher` (store
and forward, events, acks, retained status) and the
:class:`~gateway.commands.CommandExecutor` (which rides on the publisher's MQTT session), and
stops them in an order that loses nothing it has read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.commands import CommandExecutor
from gateway.config import BusConfig, GatewayConfig
from gateway.drivers.base import Driver
from gateway.publisher import Publisher
from gateway.scheduler import BusWorker
from gateway.stats import GatewayStats
from gateway.store import Store
from meterhub.settings import MqttSettings, data_dir, mqtt_settings
from meterhub.supervise import Supervisor

log = logging.getLogger(__name__)

DriverFactory = Callable[[BusConfig], Driver]

__all__ = ["DriverFactory", "Gateway", "GatewayStats"]


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
        mqtt = mqtt or config.mqtt.settings() or mqtt_settings()
        if mqtt is None:
            raise ValueError(f"{config.source}: no broker: set mqtt.url in the config or "
                             "METERHUB_MQTT_URL")
        self.mqtt: MqttSettings = mqtt
        self.state_dir = state_dir or config.state_dir or data_dir() / "gateway"
        if driver_factory is None:
            from gateway.drivers import open_driver

            driver_factory = open_driver
        self._driver_factory = driver_factory
        self.stats = GatewayStats()
        self.supervisor = Supervisor()
        self._workers: dict[str, BusWorker] = {}
        self._store: Store | None = None
        self._publisher: Publisher | None = None
        self._started = time.monotonic()
        # (window start, busy seconds per bus then): bus utilisation between two statuses
        self._window: tuple[float, dict[str, float]] = (time.monotonic(), {})

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up now."""
        return self._publisher is not None and self._publisher.connected

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish transactions in flight, seal what was
        read, publish what the broker will take within the timeout and say offline."""
        cfg = self.config
        store = self._store = Store(self.state_dir / f"{cfg.gateway_id}.sqlite3",
                                    max_batches=cfg.buffer.max_batches)
        self.stats.readings_dropped = store.dropped_readings()
        publisher = self._publisher = Publisher(cfg, self.mqtt, store, self.stats,
                                                health=self.health, supervisor=self.supervisor)
        publisher.load_unsent_events()
        commands = CommandExecutor(cfg, store, self.stats, self._workers,
                                   ack=publisher.ack, event=publisher.event)
        await commands.forget_old()
        drivers: list[Driver] = []
        mqtt_stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            for bus in cfg.buses:
                driver = self._driver_factory(bus)
                drivers.append(driver)
                self._workers[bus.name] = BusWorker(
                    bus, driver, on_reading=publisher.take, on_event=publisher.event,
                    backoff_max_s=cfg.backoff_max_s)
            sup = self.supervisor
            bus_tasks = [sup.spawn(f"bus {n}", w.run) for n, w in self._workers.items()]
            batcher = sup.spawn("batcher", lambda: publisher.batcher(stop))
            mqtt_task = sup.spawn("mqtt", lambda: publisher.mqtt_loop(mqtt_stop, commands))
            tasks = [*bus_tasks, batcher, mqtt_task]
            log.info("gateway %s/%s running: %d buses, %d meters, state in %s", cfg.site,
                     cfg.gateway_id, len(cfg.buses), len(cfg.meters()), self.state_dir)
            await self._until(stop, tasks)
            log.info("stopping: finishing transactions in flight, flushing the buffer")
            for worker in self._workers.values():
                worker.stop()
            await asyncio.gather(*bus_tasks, return_exceptions=True)
            await asyncio.gather(batcher, return_exceptions=True)
            await publisher.seal()
            await publisher.drain_before_exit(cfg.buffer.publish_timeout_s)
            await publisher.save_events()
            mqtt_stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(mqtt_task, return_exceptions=True), 10)
        finally:
            pending = [*tasks, *commands.tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for driver in drivers:
                with contextlib.suppress(Exception):
                    await driver.close()
            commands.close()
            store.close()

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

    # ------------------------------------------------------------------ status

    def store_depth(self) -> tuple[int, int]:
        """(batches, readings) waiting for a receipt; blocking (SQLite): call in a thread."""
        return self._store.depth() if self._store is not None else (0, 0)

    def bus_workers(self) -> dict[str, BusWorker]:
        return dict(self._workers)

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
                       # full: sealing drops the oldest batches (buffer_dropped events)
                       "full": batches >= self.config.buffer.max_batches,
                       "receipts": self.config.buffer.receipts,
                       "confirmed": self.stats.batches_confirmed,
                       "resent": self.stats.batches_resent,
                       "dropped_readings": self.stats.readings_dropped,
                       "last_seq": await asyncio.to_thread(self._store.last_seq)},
            "published": {"batches": self.stats.batches_published,
                          "readings": self.stats.readings_published},
            "commands_done": self.stats.commands_done,
            "commands_refused": self.stats.commands_refused,
            "tasks": self.supervisor.as_dict(),
            "buses": {
                n: {"endpoint": w.bus.endpoint, "protocol": w.bus.protocol,
                    "utilisation": w.utilisation_since(busy_before.get(n, 0.0), elapsed),
                    "transactions": w.transactions}
                for n, w in self._workers.items()
            },
            "meters": {mid: h.as_dict() for w in self._workers.values()
                       for mid, h in w.health.items()},
        }
