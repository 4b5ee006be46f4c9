"""RS-485 (or any serial port) transport on pyserial, driven by the asyncio event loop.

A reply arrives one character at a time (4.6 ms apart at 2400 baud 8E1). Waking the event loop
for each would cost far more CPU than the reply's content is worth, so while an exchange waits
the port's VMIN is set to the number of bytes the framer still needs at least
(``Framer.needed``): the kernel's terminal layer (n_tty) reports the port readable only once
that many bytes are in, for poll/epoll as for a blocking read (VTIME stays 0). A DL/T645 reply
then costs two wake-ups (its first 12 bytes, the rest; three when a 4-byte FE preamble comes
first) instead of one per byte, a Modbus RTU reply two, and no byte is taken in later than
before: the wake-up comes with the byte that completes the count. A port whose settings cannot
be changed falls back to waking per byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import termios
from typing import Any

import serial

from gateway.transport._base import StreamTransport, TransportError
from meterhub.serialline import mark_pty_parity

log = logging.getLogger(__name__)

_PARITY_BITS = {"N": 0, "E": 1, "O": 1, "M": 1, "S": 1}
_PTY_SLAVE_MAJORS = range(136, 144)  # Linux Unix98 pseudo-terminal slaves


def _is_pty(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_SLAVE_MAJORS


class SerialTransport(StreamTransport):
    """One serial port: ``SerialTransport("/dev/ttyUSB0", baud=2400, parity="E")``.

    The port opens on first use and reopens after an error, so a gateway survives an adapter
    being unplugged and plugged back.
    """

    def __init__(
        self,
        port: str,
        *,
        baud: int = 2400,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: float = 1,
        exclusive: bool = False,
    ) -> None:
        super().__init__()
        if parity.upper() not in _PARITY_BITS:
            raise ValueError(f"parity {parity!r} is not one of N, E, O, M, S")
        self.port = port
        self.baud = baud
        self.parity = parity.upper()
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.exclusive = exclusive  # flock the port: another process then cannot open it
        self.name = f"serial {port} {baud} {bytesize}{self.parity}{stopbits:g}"
        self.char_time = (1 + bytesize + _PARITY_BITS[self.parity] + stopbits) / baud
        self._serial: serial.Serial | None = None
        self._attrs: list[Any] | None = None  # termios settings while VMIN can be set
        self._vmin = 0
        self._use_vmin = True  # False once setting VMIN failed on this port

    def _send_time(self, size: int) -> float:
        return size * self.char_time

    def _is_open(self) -> bool:
        return self._serial is not None

    def _make(self, parity: str) -> serial.Serial:
        return serial.Serial(
            self.port,
            self.baud,
            bytesize=self.bytesize,
            parity=parity,
            stopbits=self.stopbits,
            timeout=0,
            exclusive=self.exclusive,
        )

    async def _open(self) -> None:
        try:
            port = self._make(self.parity)
        except (serial.SerialException, termios.error, OSError, ValueError) as exc:
            # A pseudo-terminal has no parity bit: glibc's tcsetattr reports EINVAL when the
            # kernel drops PARENB on a pty. Open it without, and mark the parity asked for
            # where a simulator on the other end reads it (meterhub.serialline).
            if self.parity == "N" or not _is_pty(self.port):
                raise TransportError(f"{self.name}: cannot open ({exc})") from exc
            try:
                port = self._make("N")
            except (serial.SerialException, termios.error, OSError) as exc2:
                raise TransportError(f"{self.name}: cannot open ({exc2})") from exc2
            log.debug("%s is a pseudo-terminal: opened without parity", self.port)
        if _is_pty(self.port):  # the kernel may also have dropped PARENB without a word
            with contextlib.suppress(termios.error, OSError):
                mark_pty_parity(port.fileno(), self.parity)
        self._serial = port
        self._attrs = None
        if self._use_vmin:
            try:
                attrs = termios.tcgetattr(port.fileno())
            except termios.error as exc:
                log.debug("%s: cannot read the termios settings (%s); waking per byte",
                          self.name, exc)
            else:
                attrs[6][termios.VTIME] = 0  # VMIN counts bytes only, no inter-byte timer
                self._attrs, self._vmin = attrs, -1
        asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)

    def _wake_after(self, count: int) -> None:
        count = min(count, 255)  # c_cc is one byte
        if self._attrs is None or self._serial is None or count == self._vmin:
            return
        self._attrs[6][termios.VMIN] = count
        try:
            termios.tcsetattr(self._serial.fileno(), termios.TCSANOW, self._attrs)
        except termios.error as exc:
            log.warning("%s: cannot set VMIN (%s); waking per byte from now on", self.name, exc)
            self._use_vmin = False
            self._attrs = None
            if self._vmin > 1:  # the port may still wait for more bytes than a reply needs:
                self._drop()  # reopen with pyserial's settings (the exchange in flight fails)
            return
        self._vmin = count

    def _read_os_input(self) -> None:
        if self._serial is not None:
            self._on_readable()

    def _on_readable(self) -> None:
        assert self._serial is not None
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("%s: read failed (%s); will reopen", self.name, exc)
            self._drop()
            return
        if data:
            self._received(data)

    def _flush_os_input(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(OSError, termios.error, serial.SerialException):
                self._serial.reset_input_buffer()

    async def _write(self, data: bytes) -> None:
        assert self._serial is not None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._serial.fileno(), view)
            except BlockingIOError:
                await asyncio.sleep(self.char_time)
                continue
            except OSError as exc:
                self._drop()
                raise TransportError(f"{self.name}: write failed ({exc})") from exc
            view = view[written:]

    def _drop(self) -> None:
        self._attrs = None
        if self._serial is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        with contextlib.suppress(Exception):
            self._serial.close()
        self._serial = None
        self._wake()  # an exchange waiting on the lost port sees it at once

    async def _close(self) -> None:
        self._drop()
