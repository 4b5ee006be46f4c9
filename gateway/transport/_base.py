"""The request/reply machinery shared by the serial and TCP transports."""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar

T = TypeVar("T")


class Framer(Protocol[T]):
    """Cuts protocol units out of received bytes; the codecs give one per protocol
    (``dlt645.messages.ReplyFramer``, ``modbus.rtu.ReplyFramer``, ``dlt645.FrameParser``).

    ``needed()`` says how many more bytes must arrive, at least, before ``feed`` can return a
    unit or raise (a lower bound: the shortest reply that could still come, e.g. 12 for a
    DL/T645 frame not yet begun, the rest of the frame once its length byte is in). A serial
    transport sleeps until that many bytes are there instead of waking for each one.
    """

    def feed(self, data: bytes) -> list[T]: ...

    def needed(self) -> int: ...


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
        self._waiter: asyncio.Future[None] | None = None  # an exchange waiting for input
        self._expired = False  # the waiting exchange's deadline has passed
        self._lock = asyncio.Lock()

    # subclasses: open, write, drop what the OS holds, close, and how long a request takes
    async def _open(self) -> None:
        raise NotImplementedError

    async def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _flush_os_input(self) -> None:
        """Drop bytes the operating system already received (none for TCP)."""

    def _wake_after(self, count: int) -> None:
        """Wake the reader only once ``count`` more bytes are there (a hint; TCP ignores it:
        a network stack hands over whole segments anyway)."""

    def _read_os_input(self) -> None:
        """Take in what the operating system holds now (a serial port that waits for a
        number of bytes may hold fewer when the wait times out)."""

    def _is_open(self) -> bool:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _send_time(self, size: int) -> float:
        """Seconds ``size`` request bytes occupy the line before the meter can start."""
        return 0.0

    def _received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def _wake(self) -> None:
        """Let a waiting exchange look again (input came, the deadline passed, link lost)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._expired = True
        self._wake()

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
            self._expired = False
            timer = loop.call_at(deadline, self._expire)
            try:
                return await self._collect(framer, deadline, timeout_s)
            finally:
                timer.cancel()
                self._waiter = None

    async def _collect(self, framer: Framer[T], deadline: float, timeout_s: float) -> T:
        """Feed what arrives to ``framer`` until it gives a unit or ``deadline`` passes.

        One future per wait, woken by the reader callback or the deadline timer: a wake-up
        costs one event-loop iteration, not the three of ``wait_for`` on an Event."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        timed_out = False
        while True:
            if self._buffer:
                chunk = bytes(self._buffer)
                self._buffer.clear()
                received += chunk
                units = framer.feed(chunk)
                if units:
                    return units[0]
            if timed_out:
                what = f"{len(received)} bytes but no complete reply" if received \
                    else "no reply"
                raise TransportTimeout(
                    f"{self.name}: {what} within {timeout_s:.3g} s", bytes(received)
                )
            if self._expired or loop.time() >= deadline:
                # bytes fewer than the wake-up hint may be waiting: take them in, and give
                # the framer one last look before calling it a timeout
                timed_out = True
                self._read_os_input()
                continue
            self._wake_after(max(1, framer.needed()))
            if not self._is_open():
                raise TransportError(f"{self.name}: connection lost while waiting")
            self._waiter = loop.create_future()
            await self._waiter

    @property
    def is_open(self) -> bool:
        return self._is_open()

    async def open(self) -> None:
        """Open now rather than on the first exchange (TransportError when it cannot)."""
        async with self._lock:
            if not self._is_open():
                await self._open()

    async def wait_quiet(self, silence_s: float, limit_s: float) -> None:
        """Wait until nothing has arrived for ``silence_s`` (``limit_s`` at most), dropping
        what does arrive: after a garbled reply the sender may still be talking, and a
        request sent into that would collide with it."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self._is_open():
                return
            end = loop.time() + limit_s
            self._wake_after(1)
            while True:
                self._flush_os_input()
                self._buffer.clear()
                await asyncio.sleep(silence_s)
                self._read_os_input()
                if not self._buffer or loop.time() >= end:
                    self._buffer.clear()
                    return

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
