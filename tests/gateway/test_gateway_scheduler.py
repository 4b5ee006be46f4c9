"""The bus scheduler with an in-test driver: one transaction at a time, fairness, back-off,
commands first. (The same scheduler runs over the real drivers in the integration tests.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

import pytest

from gateway.config import BusConfig, MeterConfig
from gateway.drivers.base import (
    DriverCapabilities,
    DriverError,
    MeterStatus,
    NoAnswer,
    no_checkpoint,
)
from gateway.drivers.dlt645 import status_from_word3
from gateway.scheduler import BusWorker
from meterhub.wire import Event, Reading, RelayState, Value


class LineDriver:
    """A bus where each transaction takes ``cost_s``; meters in ``dead`` never answer."""

    def __init__(self, cost_s: float = 0.005, dead: Sequence[str] = (),
                 dead_cost_s: float | None = None) -> None:
        self.cost_s = cost_s
        self.dead = set(dead)
        self.dead_cost_s = dead_cost_s if dead_cost_s is not None else cost_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.log: list[str] = []

    async def _transaction(self, what: str, address: str) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.log.append(f"{what}:{address}")
        try:
            await asyncio.sleep(self.dead_cost_s if address in self.dead else self.cost_s)
            if address in self.dead:
                raise NoAnswer(f"meter {address} did not answer")
        finally:
            self.in_flight -= 1

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        await self._transaction("read", address)
        return {q: Value(1.0, "kWh") for q in quantities}

    def capabilities(self, address: str) -> DriverCapabilities:
        return DriverCapabilities(relay=True, time_sync=False)

    async def switch_relay(self, address: str, action: str) -> RelayState:
        await self._transaction(action, address)
        return "open"

    async def read_status(self, address: str) -> MeterStatus:
        return MeterStatus("open")

    async def time_sync(self, address: str, when: datetime) -> None:
        raise DriverError("no clock")

    async def close(self) -> None:
        pass


def _bus(n: int, interval_s: float) -> BusConfig:
    meters = tuple(MeterConfig(f"{i:012d}", f"{i:012d}", "dlt645-2007", interval_s,
                               ("energy_import_total",)) for i in range(1, n + 1))
    return BusConfig(name="b", protocol="dlt645-2007", meters=meters, port="/dev/null")


async def _run_for(worker: BusWorker, seconds: float) -> None:
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(seconds)
    worker.stop()
    await task


async def test_overloaded_bus_is_fair_and_serial() -> None:
    driver = LineDriver(cost_s=0.005)
    readings: list[Reading] = []
    worker = BusWorker(_bus(5, interval_s=0.001), driver, on_reading=readings.append,
                       on_event=lambda e: None)
    await _run_for(worker, 0.6)
    per_meter = Counter(r.meter for r in readings)
    assert driver.max_in_flight == 1
    assert len(per_meter) == 5
    assert max(per_meter.values()) - min(per_meter.values()) <= 1, per_meter
    assert sum(per_meter.values()) > 50


async def test_meters_follow_their_intervals() -> None:
    bus = _bus(2, interval_s=0.1)
    fast = MeterConfig("fast", "000000000009", "dlt645-2007", 0.02, ("energy_import_total",))
    bus = BusConfig(name="b", protocol="dlt645-2007", meters=(*bus.meters, fast),
                    port="/dev/null")
    readings: list[Reading] = []
    worker = BusWorker(bus, LineDriver(cost_s=0.001), on_reading=readings.append,
                       on_event=lambda e: None)
    await _run_for(worker, 1.0)
    per_meter = Counter(r.meter for r in readings)
    assert 7 <= per_meter["000000000001"] <= 12
    assert 30 <= per_meter["fast"] <= 52


async def test_dead_meter_is_backed_off_and_reported() -> None:
    dead = "000000000004"
    driver = LineDriver(cost_s=0.01, dead=[dead], dead_cost_s=0.05)
    readings: list[Reading] = []
    events: list[Event] = []
    worker = BusWorker(_bus(4, interval_s=0.02), driver, on_reading=readings.append,
                       on_event=events.append, backoff_max_s=10)
    await _run_for(worker, 1.5)
    attempts = driver.log.count(f"read:{dead}")
    # 0.02 * (1 + 2 + 4 + ... ) <= 1.5 s: at most 7 attempts, each reported
    assert 3 <= attempts <= 7
    assert [e.kind for e in events] == ["no_answer"] * attempts
    assert events[-1].data["consecutive_failures"] == attempts
    assert worker.health[dead].errors == attempts
    alive = Counter(r.meter for r in readings)
    # the three live meters share the line almost alone: ~1.5 s / 3 x 10 ms transactions
    assert min(alive.values()) >= 30, alive


async def test_command_jumps_the_queue_and_waits_for_the_line() -> None:
    driver = LineDriver(cost_s=0.02)
    worker = BusWorker(_bus(6, interval_s=0.001), driver, on_reading=lambda r: None,
                       on_event=lambda e: None)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)
    state = await worker.submit(lambda d: d.switch_relay("000000000003", "relay_open"))
    worker.stop()
    await task
    assert state == "open"
    assert driver.max_in_flight == 1
    position = driver.log.index("relay_open:000000000003")
    # at most the transaction in flight ran between the command's arrival and its turn
    assert 2 <= position <= 4, driver.log[:6]


class ExchangesDriver(LineDriver):
    """A poll is ``exchanges`` request/reply exchanges, each after the driver's checkpoint,
    as the real drivers do it."""

    def __init__(self, exchanges: int, cost_s: float) -> None:
        super().__init__(cost_s=cost_s)
        self.exchanges = exchanges
        self.between_exchanges = no_checkpoint
        self.second = asyncio.Event()  # the second exchange is on the line

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        for _ in range(self.exchanges):
            await self.between_exchanges()
            if len(self.log) == 1:
                self.second.set()
            await self._transaction("read", address)
        return {q: Value(1.0, "kWh") for q in quantities}

    async def switch_relay(self, address: str, action: str) -> RelayState:
        await self.between_exchanges()  # a no-op inside a command
        return await super().switch_relay(address, action)


async def test_a_command_goes_between_two_exchanges_of_a_poll() -> None:
    driver = ExchangesDriver(exchanges=4, cost_s=0.02)
    readings: list[Reading] = []
    worker = BusWorker(_bus(3, interval_s=10), driver, on_reading=readings.append,
                       on_event=lambda e: None)
    task = asyncio.create_task(worker.run())
    await driver.second.wait()
    state = await worker.submit(lambda d: d.switch_relay("000000000003", "relay_open"))
    await asyncio.sleep(0.3)
    worker.stop()
    await task
    assert state == "open"
    assert driver.max_in_flight == 1
    first, third = "read:000000000001", "read:000000000003"
    assert driver.log[:6] == [first, first, "relay_open:000000000003", first, first,
                              "read:000000000002"]
    assert driver.log.count(third) == 4 and len(readings) == 3
    assert worker.health["000000000001"].last_rtt_ms < 4 * 20 + 15  # its own line time


async def test_a_stream_of_commands_does_not_starve_polling() -> None:
    driver = ExchangesDriver(exchanges=2, cost_s=0.005)
    readings: list[Reading] = []
    worker = BusWorker(_bus(2, interval_s=0.001), driver, on_reading=readings.append,
                       on_event=lambda e: None, commands_in_a_row=3)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.02)
    jobs = [worker.submit(lambda d, i=i: d.switch_relay(f"{i:012d}", "relay_open"))
            for i in range(1, 31)]
    assert await asyncio.gather(*jobs) == ["open"] * 30
    worker.stop()
    await task
    runs, run = [], 0
    for entry in driver.log[driver.log.index("relay_open:000000000001"):]:
        if entry.startswith("relay_open"):
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert runs and max(runs) <= 3, runs  # a poll exchange after at most three commands
    assert sum(runs) + run == 30


class StatusDriver(LineDriver):
    """Answers status reads as a DL/T645 meter whose status word 3 holds ``word``."""

    def __init__(self) -> None:
        super().__init__(cost_s=0.001)
        self.word = 0

    async def read_status(self, address: str) -> MeterStatus:
        await self._transaction("status", address)
        return status_from_word3(self.word)


async def test_status_reads_report_relay_changes_and_alarm_edges() -> None:
    bus = _bus(1, interval_s=0.02)
    meter = replace(bus.meters[0], report_relay_every=1)
    bus = replace(bus, meters=(meter,))
    driver = StatusDriver()
    readings: list[Reading] = []
    events: list[Event] = []
    worker = BusWorker(bus, driver, on_reading=readings.append, on_event=events.append)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)
    driver.word = 1 << 4 | 1 << 7  # relay opened, pre-trip alarm raised
    await asyncio.sleep(0.1)
    driver.word = 1 << 4  # alarm cleared, relay still open
    await asyncio.sleep(0.1)
    worker.stop()
    await task
    assert readings[0].relay == "closed" and readings[-1].relay == "open"
    assert [(e.kind, e.detail) for e in events] == [
        ("meter_alarm", "pre-trip alarm (status word 3 bit 7) raised"),
        ("relay_changed", "relay closed -> open"),
        ("meter_alarm", "pre-trip alarm (status word 3 bit 7) cleared"),
    ]
    assert "status:000000000001" in driver.log


async def test_stop_finishes_the_transaction_in_flight() -> None:
    driver = LineDriver(cost_s=0.3)
    readings: list[Reading] = []
    worker = BusWorker(_bus(3, interval_s=0.01), driver, on_reading=readings.append,
                       on_event=lambda e: None)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)  # the first read is on the wire
    worker.stop()
    await asyncio.wait_for(task, 1)
    assert driver.log == ["read:000000000001"], "nothing new started after stop"
    assert [r.meter for r in readings] == ["000000000001"], "the read in flight completed"


@pytest.mark.parametrize(("every", "expected"), [(None, [True] * 7), (1, [True] * 7),
                                                 (3, [True, False, False] * 2 + [True]),
                                                 (0, [False] * 7)])
async def test_relay_is_reported_every_n_polls(every: int | None, expected: list[bool]) -> None:
    bus = _bus(1, interval_s=0.005)
    bus = replace(bus, meters=(replace(bus.meters[0], report_relay_every=every),))
    driver = StatusDriver()
    readings: list[Reading] = []
    worker = BusWorker(bus, driver, on_reading=readings.append, on_event=lambda e: None)
    task = asyncio.create_task(worker.run())
    while len(readings) < 7:
        await asyncio.sleep(0.005)
    worker.stop()
    await task
    assert [r.relay is not None for r in readings[:7]] == expected


def test_report_relay_every_and_read_status_in_the_config() -> None:
    from gateway import config_from_dict

    data = {"gateway": {"id": "gw1", "site": "s"}, "buses": [
        {"name": "a", "protocol": "dlt645-2007", "port": "/dev/null", "relay_control": False,
         "report_relay_every": 5,
         "meters": [{"address": "000000000001"}, {"address": "000000000002",
                                                  "report_relay_every": 0},
                    {"address": "000000000003", "read_status": True}]},
        {"name": "b", "protocol": "dlt645-2007", "port": "/dev/tty0", "relay_control": False,
         "meters": [{"address": "000000000004"}]}]}
    meters = config_from_dict(data).meters()
    assert [m.report_relay_every for _, m in meters.values()] == [5, 0, 1, None]
