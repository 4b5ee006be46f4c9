"""The request/reply machinery shared by the serial and TCP transports."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol, TypeVar

T = TypeVar("T")


class Framer(Protocol[T]):
    """Cuts protocol units out of received bytes (e.g. ``dlt645.FrameParser``)."""

    def feed(self, data: bytes) -> list[T]: ...


class TransportError(Exception):
    """The port or connection cannot be used (cannot open, lost); says which and why."""


class TransportTimeout(TransportError):
    """No complete reply in time. ``received`` holds what did arrive, so a driver can tell
    silence (nothing) from a garbled or truncated reply (something)."""

    def __init__(self, message: str, received: bytes) -> None:
        super().__init__(message)
        self.received = received


class Transport(Protocol):
    """What a driver needs from a transport."""

    name: str

    async def exchange(self, request: bytes, framer: Framer[T], timeout_s: float) -> T: ...

    async def send(self, request: bytes) -> None: ...

    async def close(self) -> None: ...


class StreamTransport:
    """Received bytes land in a buffer (from a reader callback); one exchange at a time."""

    name = "transport"

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data = asyncio.Event()
        self._lock = asyncio.Lock()

    # subclasses: open, write, drop what the OS holds, close, and how long a request takes
    async def _open(self) -> None:
        raise NotImplementedError

    async def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _flush_os_input(self) -> None:
        """Drop bytes the operating system already received (none for TCP)."""

    def _is_open(self) -> bool:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _send_time(self, size: int) -> float:
        """Seconds ``size`` request bytes occupy the line before the meter can start."""
        return 0.0

    def _received(self, data: bytes) -> None:
        self._buffer += data
        self._data.set()

    async def exchange(self, request: bytes, framer: Framer[T], timeout_s: float) -> T:
        """Send ``request`` and return the first unit ``framer`` cuts from what comes back.

        Stale input (a late reply to an earlier, timed-out request) is dropped first so it
        cannot be taken for this request's answer. The timeout starts once the request has
        left the line.
        """
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self._is_open():
                await self._open()
            self._flush_os_input()
            self._buffer.clear()
            await self._write(request)
            deadline = loop.time() + self._send_time(len(request)) + timeout_s
            received = bytearray()
            while True:
                self._data.clear()
                if self._buffer:
                    chunk = bytes(self._buffer)
                    self._buffer.clear()
                    received += chunk
                    units = framer.feed(chunk)
                    if units:
                        return units[0]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    what = f"{len(received)} bytes but no complete reply" if received \
                        else "no reply"
                    raise TransportTimeout(
                        f"{self.name}: {what} within {timeout_s:.3g} s", bytes(received)
                    )
                if not self._is_open():
                    raise TransportError(f"{self.name}: connection lost while waiting")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._data.wait(), remaining)

    async def send(self, request: bytes) -> None:
        """Send without waiting for a reply (broadcasts), then let the line drain."""
        async with self._lock:
            if not self._is_open():
                await self._open()
            await self._write(request)
            await asyncio.sleep(self._send_time(len(request)))

    async def close(self) -> None:
        async with self._lock:
            await self._close()
