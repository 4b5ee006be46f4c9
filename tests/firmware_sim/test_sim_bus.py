"""The simulated RS-485 bus, with a toy protocol so the line itself is what is tested:
wire-time pacing, addressing, transport faults and statistics."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
import serial

from firmware_sim.bus import SimBus, char_time
from firmware_sim.meter import SimMeter
from meterhub.serialline import mark_pty_parity


class LineProtocol:
    """Requests are ``<address>?\\n``; the meter answers ``<address>=OK;`` + a check byte."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[object]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [line for line in lines if line.endswith(b"?")]

    def respond(
        self, request: object, meters: Sequence[SimMeter]
    ) -> tuple[SimMeter | None, bytes | None]:
        assert isinstance(request, bytes)
        address = request[:-1].decode(errors="replace")
        for meter in meters:
            if meter.address == address:
                body = f"{address}=OK;".encode()
                return meter, body + bytes([sum(body) % 256])
        return None, None

    def corrupt(self, reply: bytes) -> bytes:
        return reply[:-1] + bytes([(reply[-1] + 1) % 256])


@pytest.fixture
def meters() -> list[SimMeter]:
    return [SimMeter("1"), SimMeter("2")]


@pytest.fixture
def bus(meters: list[SimMeter]) -> Iterator[SimBus]:
    with SimBus(LineProtocol(), meters, baud=9600, turnaround_s=0.01) as running:
        yield running


def _port(path: str, baud: int, *, timeout: float) -> serial.Serial:
    """Open the pty at 8E1 as the gateway does: a pty refuses PARENB, so the parity is marked
    (meterhub.serialline) where the simulated bus reads it."""
    port = serial.Serial(path, baud, parity="N", timeout=timeout)
    mark_pty_parity(port.fileno(), "E")
    return port


def _ask(port: serial.Serial, request: bytes, size: int) -> bytes:
    port.reset_input_buffer()
    port.write(request)
    return port.read(size)


def test_char_time_8e1_is_11_bits() -> None:
    assert char_time(2400, "E", 8, 1) == pytest.approx(11 / 2400)
    assert char_time(9600, "N", 8, 1) == pytest.approx(10 / 9600)
    assert char_time(9600, "N", 8, 2) == pytest.approx(11 / 9600)
    with pytest.raises(ValueError, match="parity"):
        char_time(9600, "X")


def test_only_the_addressed_meter_answers(bus: SimBus) -> None:
    with _port(bus.port, 9600, timeout=0.5) as port:
        assert _ask(port, b"2?\n", 6)[:5] == b"2=OK;"
        assert _ask(port, b"7?\n", 6) == b""
    assert bus.stats.requests == 2
    assert bus.stats.replies == 1
    assert bus.stats.silent == 1
    assert bus.stats.bytes == 6 + 6


def test_request_and_reply_take_their_wire_time() -> None:
    meter = SimMeter("1")
    with SimBus(LineProtocol(), [meter], baud=1200, turnaround_s=0.05) as bus, \
            _port(bus.port, 1200, timeout=2) as port:
        started = time.monotonic()
        reply = _ask(port, b"1?\n", 6)
        elapsed = time.monotonic() - started
    assert len(reply) == 6
    minimum = (3 + 6) * char_time(1200) + 0.05
    assert elapsed >= minimum
    assert elapsed < minimum + 0.5  # and not much more than the line needs


def test_transport_faults(bus: SimBus, meters: list[SimMeter]) -> None:
    with _port(bus.port, 9600, timeout=0.4) as port:
        good = _ask(port, b"1?\n", 6)
        meters[0].faults.no_reply_once = True
        assert _ask(port, b"1?\n", 6) == b""
        meters[0].faults.bad_checksum_once = True
        bad = _ask(port, b"1?\n", 6)
        assert bad[:-1] == good[:-1] and bad[-1] != good[-1]
        meters[0].faults.truncate_once = True
        assert _ask(port, b"1?\n", 6) == good[:3]
        meters[0].faults.slow_reply_s = 0.2
        started = time.monotonic()
        assert _ask(port, b"1?\n", 6) == good
        assert time.monotonic() - started >= 0.2
        assert _ask(port, b"1?\n", 6) == good
    assert bus.stats.faults == 3


def test_port_can_be_reopened(bus: SimBus) -> None:
    # glibc refuses PARENB on a pseudo-terminal once the speed is already set, so a second
    # 8E1 open fails; _port (like gateway.transport.serial) opens at N and marks E.
    for _ in range(2):
        with _port(bus.port, 9600, timeout=0.5) as port:
            assert _ask(port, b"1?\n", 6)[:5] == b"1=OK;"
