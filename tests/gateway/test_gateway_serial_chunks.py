"""Serial replies are read in chunks: a framer's ``needed()`` says how many bytes must arrive
before it can answer, and ``SerialTransport`` sleeps (VMIN) until they are there.

The hint must be a lower bound, or a reply would sit in the kernel until the timeout: fed in
chunks of ``needed()`` bytes, a framer must reach its answer (a frame, or an error) at exactly
the byte it reaches it when fed one byte at a time, whatever noise, echoes, other meters'
frames, garbled or truncated frames come first."""

from __future__ import annotations

import contextlib
import termios
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.bus import SimBus
from firmware_sim.dlt645 import Dlt645BusProtocol
from firmware_sim.meter import SimMeter
from firmware_sim.modbus import ModbusRtuBusProtocol
from gateway.drivers.base import DriverError
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.drivers.modbus import ModbusDriver
from gateway.transport import SerialTransport
from gateway.transport._base import StreamTransport
from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.modbus import rtu

QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]


def _outcome(framer: Any, data: bytes) -> tuple[int, str]:
    """(bytes fed when the framer first answered, what it answered), one byte at a time."""
    for i in range(len(data)):
        try:
            units = framer.feed(data[i:i + 1])
        except Exception as exc:
            return i + 1, type(exc).__name__
        if units:
            return i + 1, repr(units[0])
    return len(data), "nothing"


def _check_hint(make: Callable[[], Any], data: bytes) -> None:
    at, what = _outcome(make(), data)
    framer, fed = make(), 0
    while fed < len(data):
        needed = framer.needed()
        assert needed >= 1
        if what != "nothing":
            assert fed + needed <= at, f"hint {needed} after {fed} bytes skips the answer at {at}"
        chunk = data[fed:fed + needed]
        fed += len(chunk)
        try:
            units = framer.feed(chunk)
        except Exception as exc:
            assert (fed, type(exc).__name__) == (at, what)
            return
        if units:
            assert (fed, repr(units[0])) == (at, what)
            return
    assert what == "nothing"


# --------------------------------------------------------------------------- DL/T645

M1, M2 = "000000000001", "000000000002"
REQUEST = msg.read(M1, 0x00010000)


def _dlt645_piece(kind: str, preamble: int, payload: bytes) -> bytes:
    if kind == "reply":
        frame = msg.read_reply(M1, 0x00010000, payload)
    elif kind == "other_meter":
        frame = msg.read_reply(M2, 0x00010000, payload)
    elif kind == "echo":
        frame = REQUEST
    elif kind == "abnormal":
        frame = msg.error_reply(M1, REQUEST.control, msg.ERR_PASSWORD)
    elif kind == "noise":
        return payload
    else:
        raise AssertionError(kind)
    wire = frame.encode(preamble)
    if kind == "reply" and payload[:1] == b"\x00":  # some replies arrive garbled
        wire = wire[:-2] + bytes([(wire[-2] + 1) % 256]) + wire[-1:]
    return wire


dlt645_pieces = st.builds(
    _dlt645_piece,
    st.sampled_from(["reply", "other_meter", "echo", "abnormal", "noise"]),
    st.integers(0, 4),
    st.binary(min_size=0, max_size=24),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(dlt645_pieces, min_size=1, max_size=4), st.integers(0, 30))
def test_dlt645_hint_never_skips_the_answer(pieces: list[bytes], cut: int) -> None:
    data = b"".join(pieces)
    _check_hint(lambda: msg.ReplyFramer(REQUEST, "2007"), data)
    _check_hint(lambda: msg.ReplyFramer(REQUEST, "2007"), data[:max(0, len(data) - cut)])


# --------------------------------------------------------------------------- Modbus RTU


def _rtu_piece(kind: str, unit: int, words: int, noise: bytes) -> bytes:
    if kind == "reply":
        return rtu.encode(unit, bytes([4, 2 * words]) + bytes(2 * words))
    if kind == "exception":
        return rtu.encode(unit, bytes([0x84, 2]))
    if kind == "write_echo":
        return rtu.encode(unit, bytes([6, 0, 1, 0, 1]))
    if kind == "garbled":
        return rtu.garble(rtu.encode(unit, bytes([4, 2 * words]) + bytes(2 * words)))
    return noise


rtu_pieces = st.builds(
    _rtu_piece,
    st.sampled_from(["reply", "exception", "write_echo", "garbled", "noise"]),
    st.sampled_from([1, 2, 247]),
    st.integers(0, 20),
    st.binary(min_size=0, max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(rtu_pieces, min_size=1, max_size=4), st.integers(0, 30))
def test_rtu_hint_never_skips_the_answer(pieces: list[bytes], cut: int) -> None:
    data = b"".join(pieces)
    _check_hint(lambda: rtu.ReplyFramer(1, 4), data)
    _check_hint(lambda: rtu.ReplyFramer(1, 4), data[:max(0, len(data) - cut)])


def test_rtu_hint_asks_for_the_whole_reply_once_its_length_is_known() -> None:
    framer = rtu.ReplyFramer(1, 4)
    reply = rtu.encode(1, bytes([4, 28]) + bytes(28))  # 14 registers: 5 + 28 bytes
    assert framer.needed() == 5
    assert framer.feed(reply[:5]) == []
    assert framer.needed() == len(reply) - 5
    assert framer.feed(reply[5:]) == [reply]


# --------------------------------------------------------------------------- on the line


class _CountingWakeUps:
    def __init__(self, monkeypatch: Any) -> None:
        self.wakeups = 0
        self.exchanges = 0
        received, exchange = StreamTransport._received, StreamTransport.exchange

        def counted_received(transport: StreamTransport, data: bytes) -> None:
            self.wakeups += 1
            received(transport, data)

        async def counted_exchange(transport: StreamTransport, *args: Any) -> Any:
            self.exchanges += 1
            return await exchange(transport, *args)

        monkeypatch.setattr(StreamTransport, "_received", counted_received)
        monkeypatch.setattr(StreamTransport, "exchange", counted_exchange)


async def test_a_paced_reply_wakes_the_gateway_a_few_times_not_once_a_byte(
    monkeypatch: Any,
) -> None:
    """At 2400 baud a DL/T645 reply of 20+ bytes arrives over ~0.1 s, a byte every 4.6 ms."""
    count = _CountingWakeUps(monkeypatch)
    meter = SimMeter(M1)
    with SimBus(Dlt645BusProtocol(), [meter], baud=2400, turnaround_s=0.01) as bus:
        driver = Dlt645Driver(SerialTransport(bus.port, baud=2400))
        try:
            values = await driver.read(M1, QUANTITIES)
        finally:
            await driver.close()
    assert set(values) == set(QUANTITIES)
    assert count.exchanges >= 4
    assert count.wakeups <= 3 * count.exchanges  # start, header, rest (preamble or not)


async def test_a_paced_rtu_reply_wakes_the_gateway_twice(monkeypatch: Any) -> None:
    count = _CountingWakeUps(monkeypatch)
    meter = SimMeter("1", protocol="modbus", model="eastron-sdm120")
    with SimBus(ModbusRtuBusProtocol(), [meter], baud=9600, parity="N",
                turnaround_s=0.005) as bus:
        driver = ModbusDriver.serial(bus.port, models={"1": "eastron-sdm120"})
        try:
            values = await driver.read("1", QUANTITIES)
        finally:
            await driver.close()
    assert set(values) == set(QUANTITIES)
    assert count.exchanges == 2  # 0x0000+14 and 0x0048+2
    assert count.wakeups <= 2 * count.exchanges  # unit+function+count+2, then the rest


async def test_a_port_that_refuses_vmin_falls_back_to_a_wake_up_per_byte(
    monkeypatch: Any,
) -> None:
    meter = SimMeter(M1)
    with SimBus(Dlt645BusProtocol(), [meter], baud=9600, turnaround_s=0.005) as bus:
        transport = SerialTransport(bus.port, baud=9600)
        driver = Dlt645Driver(transport, timeout_s=0.5, retries=0)
        try:
            assert set(await driver.read(M1, QUANTITIES)) == set(QUANTITIES)

            def refuse(*args: Any) -> None:
                raise termios.error(22, "Invalid argument")

            with monkeypatch.context() as patch:
                patch.setattr(termios, "tcsetattr", refuse)
                # the exchange in flight may fail (the port is reopened to undo its VMIN)
                with contextlib.suppress(DriverError):
                    await driver.read(M1, QUANTITIES)
            count = _CountingWakeUps(monkeypatch)
            assert set(await driver.read(M1, QUANTITIES)) == set(QUANTITIES)
            assert not transport._use_vmin
            assert count.wakeups > 3 * count.exchanges  # per byte again, and still working
        finally:
            await driver.close()
