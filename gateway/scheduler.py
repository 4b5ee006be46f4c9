"""Per-bus scheduling: who gets the line next.

Our own asyncio loop rather than apscheduler. apscheduler fires jobs on wall-clock triggers
and runs them side by side; what a bus needs is a queue discipline around one exclusive
resource: exactly one transaction in flight per RS-485 port, the most overdue meter first
(so an overloaded bus degrades into fair round-robin instead of starving someone), commands
ahead of every poll, and per-meter back-off that depends on the outcome of the last
transaction. That is a short loop over a heap; expressed as apscheduler jobs it would need a
lock, a priority scheme and job rescheduling from inside jobs, and its misfire handling would
fight the back-off.

One :class:`BusWorker` per bus. A serial bus has exactly one worker, hence one transaction in
flight. Each Modbus TCP endpoint is a bus of its own, so TCP devices are polled concurrently
with each other and with the serial lines.

A command does not wait for the poll in progress: a poll of one meter is several request /
reply exchanges (blocks, single values, the status word), and the driver awaits the worker's
checkpoint (:attr:`~gateway.drivers.base.Driver.between_exchanges`) before each. A command
waiting there runs at once, between two exchanges, never cutting one short. So polling is
not starved by a stream of commands, at most :data:`COMMANDS_IN_A_ROW` of them go before
the next poll exchange while a poll waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.config import DEFAULT_RELAY_EVERY, BusConfig, MeterConfig
from gateway.drivers.base import Driver, DriverError, NoAnswer
from meterhub.wire import ClockCheck, Event, Reading, RelayState

log = logging.getLogger(__name__)
T = TypeVar("T")

COMMANDS_IN_A_ROW = 4
"""Commands that may take the line in a row while a poll is due or in progress."""


@dataclass
class MeterHealth:
    """Counters for one meter, published in the gateway's status."""

    reads_ok: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_rtt_ms: float | None = None
    last_error: str | None = None
    retry_in_s: float | None = None
    relay: RelayState | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    capabilities: dict[str, bool] = field(default_factory=dict)  # what the meter can do
    clock_due: float = 0.0  # monotonic time of its next clock check
    clock_drift_s: float | None = None  # meter clock minus gateway time at the last check

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.reads_ok,
            "errors": self.errors,
            "consecutive_failures": self.consecutive_failures,
            "state": "backoff" if self.consecutive_failures else "ok",
            "last_rtt_ms": self.last_rtt_ms,
            "last_error": self.last_error,
            **({"relay": self.relay} if self.relay is not None else {}),
            **({"clock_drift_s": self.clock_drift_s} if self.clock_drift_s is not None else {}),
            "capabilities": self.capabilities,
        }


@dataclass(order=True)
class _Due:
    at: float
    order: int  # tie-break: the meter served longest ago goes first
    meter: MeterConfig = field(compare=False)


class BusWorker:
    """Polls the meters of one bus and runs commands on it, one transaction at a time."""

    def __init__(
        self,
        bus: BusConfig,
        driver: Driver,
        *,
        on_reading: Callable[[Reading], None],
        on_event: Callable[[Event], None],
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        commands_in_a_row: int = COMMANDS_IN_A_ROW,
    ) -> None:
        self.bus = bus
        self.driver = driver
        self.on_reading = on_reading
        self.on_event = on_event
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.health = {m.id: MeterHealth(capabilities=meter_capabilities(driver, m))
                       for m in bus.meters}
        self.transactions = 0
        self.busy_s = 0.0
        self._order = itertools.count()
        now = clock()
        # Every meter is due at once; the order decides who goes first.
        self._heap = [_Due(now, next(self._order), m) for m in bus.meters]
        heapq.heapify(self._heap)
        self._commands: deque[tuple[Callable[[Driver], Awaitable[Any]], asyncio.Future[Any]]] = (
            deque()
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._gap_s = bus.frame_gap_s
        self._in_a_row_max = max(1, commands_in_a_row)
        self._in_a_row = 0  # commands run since the last poll exchange
        self._in_command = False
        self._command_s = 0.0  # line time of commands, total (taken out of a poll's own)
        self._cost_s = 0.0  # line time of the last transaction, commands inside it excluded
        driver.between_exchanges = self._between

    # ------------------------------------------------------------------ public

    async def submit(self, job: Callable[[Driver], Awaitable[T]]) -> T:
        """Run ``job(driver)`` on this bus before any further poll; return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._commands.append((job, future))
        self._wake.set()
        return await future

    def stop(self) -> None:
        """Finish the transaction in flight, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    def utilisation_since(self, busy_before: float, elapsed: float) -> float:
        return round(min(1.0, (self.busy_s - busy_before) / elapsed), 4) if elapsed > 0 else 0.0

    async def run(self) -> None:
        try:
            while not self._stopping:
                due = self._heap[0] if self._heap else None
                now = self.clock()
                poll_due = due is not None and due.at <= now
                if self._commands and not (poll_due and self._in_a_row >= self._in_a_row_max):
                    await self._run_command(*self._commands.popleft())
                    continue
                if due is None or not poll_due:
                    await self._sleep(None if due is None else due.at - now)
                    continue
                heapq.heappop(self._heap)
                await self._poll(due)
                self._in_a_row = 0
        finally:
            for _, future in self._commands:
                future.cancel()
            self._commands.clear()

    # ------------------------------------------------------------------ internals

    async def _sleep(self, seconds: float | None) -> None:
        self._wake.clear()
        if self._stopping or self._commands:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _between(self) -> None:
        """The driver's checkpoint before each exchange: during a poll, the commands waiting
        run here (at most the allowance in a row), then the poll's exchange goes."""
        if self._in_command:
            return
        while self._commands and self._in_a_row < self._in_a_row_max:
            await self._run_command(*self._commands.popleft())
        self._in_a_row = 0

    async def _transaction(self, job: Awaitable[T]) -> T:
        """Run one job on the line; its own line time (commands that ran at its checkpoints
        taken out) is added to ``busy_s`` and left in ``_cost_s``."""
        started, commands_before = self.clock(), self._command_s
        try:
            return await job
        finally:
            self._cost_s = self.clock() - started - (self._command_s - commands_before)
            self.transactions += 1
            self.busy_s += self._cost_s
            if self._gap_s:
                await asyncio.sleep(self._gap_s)

    async def _run_command(
        self, job: Callable[[Driver], Awaitable[Any]], future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled():
            return
        self._in_a_row += 1
        self._in_command = True
        started = self.clock()
        try:
            result = await self._transaction(job(self.driver))
        except Exception as exc:  # handed to whoever submitted the command
            if not future.cancelled():
                future.set_exception(exc)
        else:
            if not future.cancelled():
                future.set_result(result)
        finally:
            self._in_command = False
            self._command_s += self.clock() - started

    async def _poll(self, due: _Due) -> None:
        meter = due.meter
        health = self.health[meter.id]
        taken_at = datetime.now(UTC)
        try:
            values = await self._transaction(self.driver.read(meter.address, meter.quantities))
        except DriverError as exc:
            self._failed(due, health, exc, self._cost_s)
            return
        except Exception as exc:  # a driver bug must not stop the bus for every other meter
            log.exception("driver failed reading %s", meter.id)
            self._failed(due, health, exc, self._cost_s)
            return
        health.last_rtt_ms = round(self._cost_s * 1000, 1)
        health.reads_ok += 1
        if health.consecutive_failures:
            self.on_event(Event("meter_recovered", datetime.now(UTC), meter.id,
                                f"answers again after {health.consecutive_failures} failed polls",
                                {"bus": self.bus.name}))
        health.consecutive_failures = 0
        health.retry_in_s = None
        relay = await self._read_status(meter) if self._relay_due(meter, health) else None
        clock = await self._read_clock(meter) if self._clock_due(meter, health) else None
        self.on_reading(Reading(meter.id, taken_at, values, relay, clock))
        now = self.clock()
        at = due.at + meter.poll_interval_s
        self._reschedule(meter, at if at > now else now)

    def _relay_due(self, meter: MeterConfig, health: MeterHealth) -> bool:
        """Whether this good poll also reports the relay state: every
        ``report_relay_every``-th one (the first included), where the driver can read it."""
        every = meter.report_relay_every
        every = DEFAULT_RELAY_EVERY if every is None else every
        return (every > 0 and (health.reads_ok - 1) % every == 0
                and self.driver.capabilities(meter.address).relay)

    async def _read_status(self, meter: MeterConfig) -> RelayState | None:
        """Relay state for the reading, with events when it changes (a customer pressed the
        button, a local prepayment trip) and when an alarm flag of the meter (e.g. a DL/T645
        pre-trip alarm) rises or clears. The readings themselves were good, so a failure here
        only costs the relay field."""
        health = self.health[meter.id]
        try:
            status = await self._transaction(self.driver.read_status(meter.address))
        except DriverError as exc:
            health.last_error = f"status: {type(exc).__name__}: {exc}"
            return None
        for flag in status.flags:
            self._edge(meter, flag.name, flag.raised, "meter_alarm", flag.what)
        relay = status.relay
        if health.relay is not None and relay != health.relay:
            self.on_event(Event("relay_changed", datetime.now(UTC), meter.id,
                                f"relay {health.relay} -> {relay}",
                                {"bus": self.bus.name, "from": health.relay, "to": relay}))
        health.relay = relay
        return relay

    def _clock_due(self, meter: MeterConfig, health: MeterHealth) -> bool:
        """Whether this good poll also reads the meter's clock (every ``clock_check_s``)."""
        return (meter.clock_check_s > 0 and health.capabilities.get("clock", False)
                and self.clock() >= health.clock_due)

    async def _read_clock(self, meter: MeterConfig) -> ClockCheck | None:
        """The meter's clock for the reading; a failure only costs the clock field, and the
        next check comes after a poll interval rather than a whole ``clock_check_s``."""
        health = self.health[meter.id]
        try:
            check = await self._transaction(self.driver.read_clock(meter.address))
        except DriverError as exc:
            health.last_error = f"clock: {type(exc).__name__}: {exc}"
            health.clock_due = self.clock() + meter.poll_interval_s
            return None
        health.clock_due = self.clock() + meter.clock_check_s
        health.clock_drift_s = check.drift_s
        return check

    def _edge(self, meter: MeterConfig, flag: str, now_set: bool, kind: str,
              what: str) -> None:
        """Report a status flag when it rises and when it clears, not on every poll."""
        flags = self.health[meter.id].flags
        if now_set != flags.get(flag, False):
            self.on_event(Event(kind, datetime.now(UTC), meter.id,
                                f"{what} {'raised' if now_set else 'cleared'}",
                                {"bus": self.bus.name, "flag": flag, "set": now_set}))
        flags[flag] = now_set

    def _failed(self, due: _Due, health: MeterHealth, exc: BaseException, cost_s: float) -> None:
        """Back a silent meter off exponentially, x 1, 2, 4 ... up to ``backoff_max_s``.

        The base is its poll interval, or, when longer, the line time its failed attempt
        took (timeouts and retries cost far more than a read) times the other meters on the
        bus: that keeps a dead meter within a 1/N share of the line from its first failure."""
        meter = due.meter
        health.errors += 1
        health.consecutive_failures += 1
        health.last_error = f"{type(exc).__name__}: {exc}"
        fair_share = cost_s * (len(self.bus.meters) - 1)
        base = max(meter.poll_interval_s, fair_share)
        delay = max(min(base * 2 ** (health.consecutive_failures - 1),
                        max(self.backoff_max_s, meter.poll_interval_s)), fair_share)
        health.retry_in_s = delay
        kind = "no_answer" if isinstance(exc, NoAnswer) else "comm_error"
        self.on_event(Event(kind, datetime.now(UTC), meter.id, health.last_error,
                            {"bus": self.bus.name,
                             "consecutive_failures": health.consecutive_failures,
                             "retry_in_s": round(delay, 3)}))
        self._reschedule(meter, self.clock() + delay)

    def _reschedule(self, meter: MeterConfig, at: float) -> None:
        heapq.heappush(self._heap, _Due(at, next(self._order), meter))


def meter_capabilities(driver: Driver, meter: MeterConfig) -> dict[str, bool]:
    """What the meter can do: its driver's answer for its model, narrowed by the config
    (``has_relay = false``: a model without a relay); reported in the gateway's status so
    the backend knows, e.g., which meters can be cut off remotely."""
    try:
        caps = driver.capabilities(meter.address)
    except DriverError:
        return {"relay": False, "time_sync": False, "clock": False}
    return {"relay": caps.relay and meter.has_relay, "time_sync": caps.time_sync,
            "clock": caps.clock}
