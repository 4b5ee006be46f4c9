"""RS-485 (or any serial port) transport on pyserial, driven by the asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import termios

import serial

from gateway.transport._base import StreamTransport, TransportError

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
    ) -> None:
        super().__init__()
        if parity.upper() not in _PARITY_BITS:
            raise ValueError(f"parity {parity!r} is not one of N, E, O, M, S")
        self.port = port
        self.baud = baud
        self.parity = parity.upper()
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.name = f"serial {port} {baud} {bytesize}{self.parity}{stopbits:g}"
        self.char_time = (1 + bytesize + _PARITY_BITS[self.parity] + stopbits) / baud
        self._serial: serial.Serial | None = None

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
        )

    async def _open(self) -> None:
        try:
            port = self._make(self.parity)
        except (serial.SerialException, termios.error, OSError, ValueError) as exc:
            # A pseudo-terminal has no parity bit: glibc's tcsetattr reports EINVAL when the
            # kernel drops PARENB on a pty. Parity means nothing there, so open it without.
            if self.parity == "N" or not _is_pty(self.port):
                raise TransportError(f"{self.name}: cannot open ({exc})") from exc
            try:
                port = self._make("N")
            except (serial.SerialException, termios.error, OSError) as exc2:
                raise TransportError(f"{self.name}: cannot open ({exc2})") from exc2
            log.debug("%s is a pseudo-terminal: opened without parity", self.port)
        self._serial = port
        asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)

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
        if self._serial is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
        with contextlib.suppress(Exception):
            self._serial.close()
        self._serial = None

    async def _close(self) -> None:
        self._drop()
