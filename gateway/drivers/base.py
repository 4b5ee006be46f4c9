"""What the scheduler and the command executor need from a protocol driver: the
:class:`Driver` interface, what a driver can do for a meter (:class:`DriverCapabilities`),
what a status read gives (:class:`MeterStatus`), and the errors drivers raise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from meterhub.wire import ClockCheck, RelayState, Value

Checkpoint = Callable[[], Awaitable[None]]
"""Awaited by a driver before each request it puts on the line (see
:attr:`Driver.between_exchanges`)."""


async def no_checkpoint() -> None:
    """The checkpoint of a driver no bus worker drives (installer tools): nothing waits."""


class DriverError(Exception):
    """A transaction with a meter failed; the message says which meter and why."""


class NoAnswer(DriverError):
    """The meter did not answer within its timeout (after the configured retries)."""


class BadFrame(DriverError):
    """Something answered but the frame was garbled (checksum, CRC, length, BCD)."""


class MeterRejected(DriverError):
    """The meter answered with an error reply (DL/T645 abnormal reply, Modbus exception)."""


class PortUnavailable(DriverError):
    """The bus itself cannot be used (serial port missing or busy, TCP endpoint refusing):
    no meter on it was asked, so it is not the meter's silence."""


@dataclass(frozen=True, slots=True)
class DriverCapabilities:
    """What a driver can do for one meter (its protocol, version and model), as data, so
    callers ask this instead of probing the driver for methods. A capability that is False
    means the call fails with :class:`DriverError` without touching the line."""

    relay: bool  # switch_relay and read_status (the meter has a relay and reports it)
    time_sync: bool  # time_sync sets the meter's clock
    clock: bool = False  # read_clock reads the meter's date and time


@dataclass(frozen=True, slots=True)
class StatusFlag:
    """One alarm bit a meter reports with its status; the scheduler reports its edges."""

    name: str  # stable key, e.g. "pre_trip_alarm"
    raised: bool
    what: str  # words for the event, e.g. "pre-trip alarm (status word 3 bit 7)"


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """The relay state read from a meter, with whatever alarm flags its protocol gives."""

    relay: RelayState
    flags: tuple[StatusFlag, ...] = ()


class Driver(Protocol):
    """One per bus (serial port or TCP endpoint). Calls are serialised by the caller for a
    serial bus: one transaction in flight per RS-485 port."""

    between_exchanges: Checkpoint
    """Awaited before each request frame goes out, never while one is on the line. The bus
    worker sets it, so a command waiting runs between two exchanges of a poll rather than
    after the poll (drivers start with :func:`no_checkpoint`)."""

    def capabilities(self, address: str) -> DriverCapabilities:
        """What this driver can do for the meter at ``address`` (no I/O)."""
        ...

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        """Read the named canonical quantities (meterhub.quantities) from one meter.
        Quantities the meter model does not have raise DriverError before any I/O."""
        ...

    async def read_status(self, address: str) -> MeterStatus:
        """Read the relay state (and alarm flags) from the meter."""
        ...

    async def switch_relay(self, address: str, action: str) -> RelayState:
        """Execute relay_open / relay_close / relay_close_permitted, then read the relay
        state back from the meter and return it."""
        ...

    async def time_sync(self, address: str, when: datetime) -> None:
        """Set the meter's clock to ``when`` (timezone-aware); see :meth:`capabilities`."""
        ...

    async def read_clock(self, address: str) -> ClockCheck:
        """The meter's date and time, with the gateway's time when it answered."""
        ...

    async def close(self) -> None:
        ...
