"""The simulated Modbus meters' side of the protocol, without a line: addressing, broadcast,
register images from SimMeter values, relay writes and the exception replies a meter gives."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_sim.meter import SimMeter
from firmware_sim.modbus import ModbusRtuBusProtocol
from meterhub.protocols.modbus import rtu
from meterhub.protocols.modbus.registermap import load_maps

MAPS = load_maps()


def _meter(unit: str, model: str, **kw: Any) -> SimMeter:
    clock = [1_700_000_000.0]
    return SimMeter(unit, protocol="modbus-rtu", model=model, now=lambda: clock[0], **kw)


@pytest.fixture
def meters() -> list[SimMeter]:
    return [
        _meter("1", "sim-prepaid-1p", energy_kwh=1234.56, balance_remaining=-12.5),
        _meter("2", "sim-prepaid-1p", energy_kwh=10.0),
        _meter("7", "eastron-sdm120", energy_kwh=42.25),
    ]


def _ask(meters: list[SimMeter], unit: int, pdu: str) -> tuple[SimMeter | None, bytes | None]:
    protocol = ModbusRtuBusProtocol(MAPS)
    (request,) = protocol.feed(rtu.encode(unit, bytes.fromhex(pdu)))
    return protocol.respond(request, meters)


def test_only_the_addressed_unit_answers(meters: list[SimMeter]) -> None:
    meter, reply = _ask(meters, 2, "03 40 00 00 02")  # energy_import_total, uint32 x 0.01 kWh
    assert meter is meters[1]
    assert reply == rtu.encode(2, bytes.fromhex("03 04 00 00 03 E8"))  # 1000 x 0.01 = 10 kWh
    assert _ask(meters, 9, "03 40 00 00 02") == (None, None)


def test_registers_come_from_the_meter_values(meters: list[SimMeter]) -> None:
    _, reply = _ask(meters, 1, "03 40 10 00 02")  # balance, int32 x 0.01 CNY
    assert reply is not None and reply[3:7] == (-1250).to_bytes(4, "big", signed=True)
    _, reply = _ask(meters, 7, "04 00 48 00 02")  # SDM120 import kWh, float32
    assert reply is not None and reply[3:7] == bytes.fromhex("42 29 00 00")  # 42.25


def test_gaps_inside_a_read_answer_zero(meters: list[SimMeter]) -> None:
    _, reply = _ask(meters, 1, "03 40 00 00 0C")  # 0x4000..0x400B: import, gap, export
    assert reply is not None and reply[2] == 24
    assert reply[7:23] == bytes(16)  # 0x4002..0x4009 unused, export 0.00


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("03 40 01 00 02", 0x02),  # starts inside the uint32 at 0x4000
        ("03 30 00 00 02", 0x02),  # nothing mapped there
        ("04 40 00 00 02", 0x02),  # these are holding registers, not input registers
        ("03 40 00 00 41", 0x03),  # 65 registers: over the model's limit of 64
        ("06 20 00 00 01", 0x02),  # voltage is read-only
        ("05 00 01 FF 00", 0x02),  # no such coil
        ("2B 0E 01 00", 0x01),  # unsupported function
    ],
)
def test_meter_exceptions(meters: list[SimMeter], pdu: str, code: int) -> None:
    _, reply = _ask(meters, 1, pdu)
    function = int(pdu[:2], 16)
    assert reply == rtu.encode(1, bytes([function | 0x80, code]))


def test_relay_coil_write_and_read(meters: list[SimMeter]) -> None:
    _, reply = _ask(meters, 1, "05 00 00 00 00")  # coil OFF = open
    assert reply == rtu.encode(1, bytes.fromhex("05 00 00 00 00"))
    assert meters[0].relay_open and not meters[1].relay_open
    assert meters[0].value("power_active_total") == 0.0
    assert _ask(meters, 1, "01 00 00 00 01")[1] == rtu.encode(1, bytes.fromhex("01 01 00"))
    _ask(meters, 1, "05 00 00 FF 00")
    assert not meters[0].relay_open
    assert _ask(meters, 1, "01 00 00 00 01")[1] == rtu.encode(1, bytes.fromhex("01 01 01"))


def test_a_model_without_relay_refuses_relay_writes(meters: list[SimMeter]) -> None:
    _, reply = _ask(meters, 7, "05 00 00 00 00")
    assert reply == rtu.encode(7, bytes.fromhex("85 02"))
    assert not meters[2].relay_open


def test_broadcast_writes_act_silently(meters: list[SimMeter]) -> None:
    meter, reply = _ask(meters, 0, "05 00 00 00 00")
    assert reply is None and meter is meters[0]
    assert [m.relay_open for m in meters] == [True, True, False]
    assert _ask(meters, 0, "03 40 00 00 02") == (None, None)  # a broadcast read is ignored


def test_corrupt_garbles_the_crc(meters: list[SimMeter]) -> None:
    protocol = ModbusRtuBusProtocol(MAPS)
    _, reply = _ask(meters, 1, "03 40 00 00 02")
    assert reply is not None
    bad = protocol.corrupt(reply)
    assert len(bad) == len(reply) and not rtu.crc_ok(bad)


def test_unknown_model_is_named(meters: list[SimMeter]) -> None:
    meters.append(_meter("9", "no-such-meter"))
    with pytest.raises(KeyError, match="no-such-meter"):
        _ask(meters, 9, "03 40 00 00 02")
