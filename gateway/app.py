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
from meterhub.i18n import N_, _
from meterhub.settings import MqttSettings, data_dir, mqtt_settings
from meterhub.supervise import Supervisor

log = logging.getLogger(__name__)
# one line a minute at default verbosity: the CLI lets this logger's INFO through
summary_log = logging.getLogger("gateway.summary")

DriverFactory = Callable[[BusConfig], Driver]

__all__ = ["DriverFactory", "Gateway", "GatewayStartError", "GatewayStats", "missing_ports"]

# What the gateway tells its operator, in one place. Log lines stay English (for whoever
# reads the logs); what a person is told at the terminal is translated (_()).
MSG_PORT_MISSING = ("bus {bus}: serial port {port} does not exist (adapter unplugged? device "
                    "name?); its {meters} meter(s) are not read until it appears")
MSG_REFUSE = N_("{source}: not starting, serial port(s) missing: {ports} (missing_port = "
              "\"refuse\"; \"degrade\" runs the other buses)")
MSG_SUMMARY = ("gateway {gateway}: {answering}/{meters} meters answering, {readings} readings "
               "published in the last {window:.0f} s, buffer {batches} batch(es), broker "
               "{broker}{silent}")


class GatewayStartError(RuntimeError):
    """The gateway will not start as configured; the message says why."""


def missing_ports(config: GatewayConfig) -> list[BusConfig]:
    """Serial buses whose port does not exist now (a dangling stable name counts)."""
    return [b for b in config.buses if b.port is not None and not Path(b.port).exists()]


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
        missing = missing_ports(cfg)
        if missing and cfg.missing_port == "refuse":
            raise GatewayStartError(_(MSG_REFUSE,
                source=cfg.source, ports=", ".join(f"{b.port} (bus {b.name})" for b in missing)))
        for bus in missing:
            log.warning(MSG_PORT_MISSING.format(bus=bus.name, port=bus.port,
                                                meters=len(bus.meters)))
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
            if cfg.summary_interval_s:
                tasks.append(sup.spawn("summary", lambda: self._summaries(stop)))
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

    async def _summaries(self, stop: asyncio.Event) -> None:
        """One line every ``summary_interval_s``, so a healthy gateway is seen to be so."""
        every = self.config.summary_interval_s
        published = self.stats.readings_published
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            summary_log.info(await self.summary(self.stats.readings_published - published,
                                                every))
            published = self.stats.readings_published

    async def summary(self, readings: int, window_s: float) -> str:
        """The summary line: meters answering, readings, buffer depth, broker, who is silent."""
        assert self._store is not None
        batches, _ = await asyncio.to_thread(self._store.depth)
        health = {mid: h for w in self._workers.values() for mid, h in w.health.items()}
        silent = [mid for mid, h in health.items() if h.consecutive_failures or not h.reads_ok]
        return MSG_SUMMARY.format(
            gateway=self.config.gateway_id, answering=len(health) - len(silent),
            meters=len(health), readings=readings, window=window_s, batches=batches,
            broker="connected" if self.connected else "DISCONNECTED",
            silent=f"; silent: {', '.join(silent[:5])}" + (" ..." if len(silent) > 5 else "")
            if silent else "")

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
