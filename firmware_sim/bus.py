"""A simulated multi-drop RS-485 bus on a pseudo-terminal pair, for any request/reply protocol.

The gateway opens :attr:`SimBus.port` with pyserial exactly as it would open ``/dev/ttyUSB0``.
A pseudo-terminal moves bytes instantly, so the bus emulates the line: a request is handled only
once its last byte would have arrived on a real wire, and a reply leaves no faster than one
character time per byte (start + data + parity + stop bits over the baud rate, 11 bits for 8E1),
after the meter's turnaround delay. Transport faults (no reply, garbled checksum, truncated frame,
slow reply) come from the answering meter's :attr:`SimMeter.faults`.

The meters hear at the bus's own line settings (baud, parity, data and stop bits). The port is
preset to them; a master that opens it at other settings (read back from the pty's termios,
see :mod:`meterhub.serialline`) is heard, and hears the replies, as a UART would decode them
(:mod:`firmware_sim.line`): garbage, so mostly silence, as on a real line.

What a frame looks like, who answers and how a checksum is garbled belong to a
:class:`BusProtocol` (``firmware_sim.dlt645``, ``firmware_sim.modbus``); this module knows
nothing about either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from firmware_sim._running import StartStop
from firmware_sim.line import transcode
from firmware_sim.meter import SimMeter
from meterhub.serialline import LineSettings, apply_line, read_line

log = logging.getLogger(__name__)

_PARITY_BITS = {"N": 0, "E": 1, "O": 1, "M": 1, "S": 1}


class BusProtocol(Protocol):
    """What the bus needs from a wire protocol's meter side."""

    def feed(self, data: bytes) -> list[object]:
        """Take bytes as they come off the wire; return every complete request now cut from
        the stream (resynchronising on garbage)."""
        ...

    def respond(
        self, request: object, meters: Sequence[SimMeter]
    ) -> tuple[SimMeter | None, bytes | None]:
        """The meter that answers ``request`` and its reply bytes; ``(None, None)`` when no
        meter is addressed, ``(meter, None)`` when a meter acts but stays silent (broadcast)."""
        ...

    def corrupt(self, reply: bytes) -> bytes:
        """The same reply with a checksum/CRC that does not match."""
        ...


@dataclass
class BusStats:
    """Counters a test or a benchmark can read; ``bytes`` counts both directions."""

    requests: int = 0
    replies: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    silent: int = 0  # requests nobody answered (not addressed, broadcast or no-reply fault)
    faults: int = 0  # replies garbled, truncated or suppressed by a fault
    misheard: int = 0  # chunks a master sent at other line settings than the bus's

    @property
    def bytes(self) -> int:
        return self.bytes_in + self.bytes_out


def char_time(baud: int, parity: str = "E", bytesize: int = 8, stopbits: float = 1) -> float:
    """Seconds one character occupies the line (1 start bit + data + parity + stop bits)."""
    try:
        parity_bits = _PARITY_BITS[parity.upper()]
    except KeyError:
        raise ValueError(f"parity {parity!r} is not one of N, E, O, M, S") from None
    if baud <= 0:
        raise ValueError(f"baud {baud} must be positive")
    return (1 + bytesize + parity_bits + stopbits) / baud


def _reply_with_faults(
    protocol: BusProtocol, meters: Sequence[SimMeter], request: object, stats: BusStats
) -> tuple[bytes | None, float]:
    """The reply bytes to send (None: stay silent) after the answering meter's transport
    faults, and the extra delay a slow-reply fault adds."""
    stats.requests += 1
    try:
        meter, reply = protocol.respond(request, meters)
    except Exception:  # a protocol bug must not kill the bus for every other test
        log.exception("bus protocol failed to answer %r", request)
        meter, reply = None, None
    if meter is None or reply is None:
        stats.silent += 1
        return None, 0.0
    no_reply, bad_checksum, truncate, extra_delay = meter.faults.take()
    if no_reply:
        stats.silent += 1
        stats.faults += 1
        return None, 0.0
    if bad_checksum:
        reply = protocol.corrupt(reply)
    if truncate:
        reply = reply[: max(1, len(reply) // 2)]
    stats.faults += bad_checksum or truncate
    return reply, extra_delay


class SimBus(StartStop):
    """Meters sharing one RS-485 line, served on a pseudo-terminal by a background thread."""

    def __init__(
        self,
        protocol: BusProtocol,
        meters: list[SimMeter],
        *,
        baud: int = 2400,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: float = 1,
        turnaround_s: float = 0.03,
    ) -> None:
        self.protocol = protocol
        self.meters = meters
        self.baud = baud
        self.parity = parity
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.turnaround_s = turnaround_s
        self.char_time = char_time(baud, parity, bytesize, stopbits)
        self.line = LineSettings(baud, parity, bytesize, int(stopbits))
        self.stats = BusStats()
        self._master: int | None = None
        self._slave: int | None = None
        self._port: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> str:
        """Path of the pseudo-terminal the gateway opens (valid after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("SimBus.port is only known after start()")
        return self._port

    def start(self) -> SimBus:
        if self._thread is not None:
            return self
        master, slave = os.openpty()
        # Raw on both ends: no echo, no line editing, no CR/LF translation of binary frames.
        for fd in (master, slave):
            tty.setraw(fd, termios.TCSANOW)
        apply_line(slave, self.line)
        # A reply nobody reads must not block the bus thread once the pty's buffer is full.
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        # The slave stays open here so the master never sees EIO while the gateway has the
        # port closed (between a test's connections, or while it reopens after an error).
        self._port = os.ttyname(slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"SimBus {self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def master_line(self) -> LineSettings:
        """The line settings the port's opener set now (the bus's own when unreadable)."""
        if self._slave is None:
            return self.line
        try:
            return read_line(self._slave) or self.line
        except (termios.error, OSError):
            return self.line

    # ------------------------------------------------------------------ the line

    def _run(self) -> None:
        assert self._master is not None
        master = self._master
        wire_free_at = 0.0  # when the last byte received so far has fully arrived on the wire
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO while nothing holds the slave: nothing to read yet
                self._stop.wait(0.01)
                continue
            if not data:
                continue
            self.stats.bytes_in += len(data)
            wire_free_at = max(time.monotonic(), wire_free_at) + len(data) * self.char_time
            master_line = self.master_line()
            if master_line != self.line:
                self.stats.misheard += 1
                data = transcode(data, master_line, self.line)
            try:
                requests = self.protocol.feed(data)
            except Exception:  # a protocol bug must not kill the bus for every other test
                log.exception("bus protocol failed to parse %r", data)
                continue
            for request in requests:
                self._sleep_until(wire_free_at)
                wire_free_at = self._serve(master, request, wire_free_at)

    def _serve(self, master: int, request: object, wire_free_at: float) -> float:
        """Answer one request; return when the line is free again."""
        reply, delay = _reply_with_faults(self.protocol, self.meters, request, self.stats)
        if reply is None:
            return wire_free_at
        self._sleep_until(time.monotonic() + self.turnaround_s + delay)
        master_line = self.master_line()
        if master_line != self.line:  # the master's UART decodes at its own settings
            reply = transcode(reply, self.line, master_line)
        # counted before the bytes go: the master may act on the reply (a test reads these
        # stats) before this thread runs again
        self.stats.replies += 1
        self._send_paced(master, reply)
        return time.monotonic()

    def _send_paced(self, master: int, reply: bytes) -> None:
        """Write the reply no faster than the line: byte i is out at start + (i+1) char times."""
        start = time.monotonic()
        sent = 0
        while sent < len(reply) and not self._stop.is_set():
            due = min(len(reply), int((time.monotonic() - start) / self.char_time))
            if due > sent:
                try:
                    os.write(master, reply[sent:due])
                except BlockingIOError:  # nobody is reading the port: the bytes are lost
                    log.debug("pty buffer full, %d reply bytes dropped", len(reply) - sent)
                    return
                self.stats.bytes_out += due - sent
                sent = due
            if sent < len(reply):
                self._sleep_until(start + (sent + 1) * self.char_time)

    def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)


class SimTcpBus(StartStop):
    """The same meters behind a TCP serial-device server (or meters with a TCP port).

    One client at a time, as most serial servers allow: a new connection replaces the old one.
    There is no line to pace on TCP; the meter's turnaround and slow-reply faults still apply.
    """

    def __init__(
        self,
        protocol: BusProtocol,
        meters: list[SimMeter],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        turnaround_s: float = 0.03,
    ) -> None:
        self.protocol = protocol
        self.meters = meters
        self.turnaround_s = turnaround_s
        self.stats = BusStats()
        self._bind = (host, port)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to connect to (valid after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("SimTcpBus.address is only known after start()")
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> SimTcpBus:
        if self._thread is not None:
            return self
        listener = socket.create_server(self._bind)
        listener.settimeout(0.05)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"SimTcpBus {self.address}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _run(self) -> None:
        assert self._listener is not None
        client: socket.socket | None = None
        while not self._stop.is_set():
            watch = [self._listener] if client is None else [self._listener, client]
            ready, _, _ = select.select(watch, [], [], 0.05)
            if self._listener in ready:
                with contextlib.suppress(OSError):
                    new, _ = self._listener.accept()
                    if client is not None:
                        client.close()
                    client = new
                    continue
            if client is None or client not in ready:
                continue
            try:
                data = client.recv(4096)
            except OSError:
                data = b""
            if not data:
                client.close()
                client = None
                continue
            self.stats.bytes_in += len(data)
            try:
                requests = self.protocol.feed(data)
            except Exception:
                log.exception("bus protocol failed to parse %r", data)
                continue
            for request in requests:
                reply, delay = _reply_with_faults(self.protocol, self.meters, request,
                                                  self.stats)
                if reply is None:
                    continue
                self._stop.wait(self.turnaround_s + delay)
                self.stats.bytes_out += len(reply)  # before the bytes go, as on the serial bus
                self.stats.replies += 1
                try:
                    client.sendall(reply)
                except OSError:
                    break
        if client is not None:
            client.close()
