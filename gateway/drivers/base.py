"""What the scheduler needs from a protocol driver, and the errors drivers raise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meterhub.wire import RelayState, Value


class DriverError(Exception):
    """A transaction with a meter failed; the message says which meter and why."""


class NoAnswer(DriverError):
    """The meter did not answer within its timeout (after the configured retries)."""


class BadFrame(DriverError):
    """Something answered but the frame was garbled (checksum, CRC, length, BCD)."""


class MeterRejected(DriverError):
    """The meter answered with an error reply (DL/T645 abnormal reply, Modbus exception)."""


class Driver(Protocol):
    """One per bus (serial port or TCP endpoint). Calls are serialised by the caller for a
    serial bus: one transaction in flight per RS-485 port."""

    async def read(self, address: str, quantities: Sequence[str]) -> dict[str, Value]:
        """Read the named canonical quantities (meterhub.quantities) from one meter.
        Quantities the meter model does not have raise DriverError before any I/O."""
        ...

    async def relay(self, address: str, action: str) -> RelayState:
        """Execute relay_open / relay_close / relay_close_permitted, then read the relay
        state back from the meter and return it."""
        ...

    async def read_relay(self, address: str) -> RelayState:
        ...

    async def close(self) -> None:
        ...
