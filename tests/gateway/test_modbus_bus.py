"""ModbusDriver (pymodbus) against the simulated meters (our own codec): Modbus RTU on a
pseudo-terminal SimBus at 9600 baud with wire time, and Modbus TCP against ModbusTcpServer.
Every quantity of every model, the relay, transport faults and the pinned pymodbus range."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymodbus
import pytest
from pymodbus.client import AsyncModbusSerialClient

from firmware_sim.bus import SimBus, char_time
from firmware_sim.meter import SimMeter
from firmware_sim.modbus import ModbusRtuBusProtocol
from firmware_sim.modbus_tcp import ModbusTcpServer
from gateway.drivers.base import BadFrame, DriverError, MeterRejected, NoAnswer, PortUnavailable
from gateway.drivers.modbus import PYMODBUS_SUPPORTED, ModbusDriver
from meterhub.protocols.modbus.registermap import load_maps, plan_reads
from meterhub.quantities import QUANTITIES

BAUD = 9600
FROZEN = 1_700_000_000.0  # energy registers stand still, so reads can be compared


class RecordingMeter(SimMeter):
    """Remembers what it last reported per quantity: voltage and frequency jitter on every
    read, so the driver's reading is compared with what this meter actually put on the wire."""

    def value(self, quantity: str) -> float:
        result = super().value(quantity)
        self.__dict__.setdefault("reported", {})[quantity] = result
        return result


def _meters() -> list[SimMeter]:
    spec = [
        ("1", "eastron-sdm120", 1), ("2", "eastron-sdm630", 3), ("3", "chint-ddsu666", 1),
        ("4", "chint-dtsu666", 3), ("5", "sim-prepaid-1p", 1),
    ]
    return [
        RecordingMeter(unit, protocol="modbus", model=model, phases=phases,
                       energy_kwh=1000.0 * int(unit) + 0.37, export_kwh=12.5,
                       balance_remaining=88.8, now=lambda: FROZEN)
        for unit, model, phases in spec
    ]


MODELS = {"1": "eastron-sdm120", "2": "eastron-sdm630", "3": "chint-ddsu666",
          "4": "chint-dtsu666", "5": "sim-prepaid-1p"}


@dataclass
class Line:
    kind: str
    meters: list[SimMeter]
    connect: Callable[..., ModbusDriver]
    requests: Callable[[], int]
    bus: SimBus | None = None


@contextlib.contextmanager
def _line(kind: str, meters: list[SimMeter], maps_dir: Path | None = None) -> Iterator[Line]:
    def options(kw: dict[str, Any]) -> dict[str, Any]:
        return {"timeout_s": 1.0, "retries": 1, "models": MODELS, "maps_dir": maps_dir, **kw}

    if kind == "rtu":
        protocol = ModbusRtuBusProtocol(maps_dir=maps_dir)
        with SimBus(protocol, meters, baud=BAUD, parity="N", turnaround_s=0.005) as bus:
            yield Line(kind, meters, lambda **kw: ModbusDriver.serial(
                bus.port, baud=BAUD, parity="N", **options(kw)),
                lambda: bus.stats.requests, bus)
    else:
        with ModbusTcpServer(meters, maps_dir=maps_dir) as server:
            yield Line(kind, meters, lambda **kw: ModbusDriver.tcp(
                "127.0.0.1", server.port, **options(kw)), lambda: server.requests)


@pytest.fixture(params=["rtu", "tcp"])
def line(request: pytest.FixtureRequest) -> Iterator[Line]:
    with _line(request.param, _meters()) as running:
        yield running


@contextlib.asynccontextmanager
async def _driver(line: Line, **kw: Any) -> Any:
    driver = line.connect(**kw)
    try:
        yield driver
    finally:
        await driver.close()


# --------------------------------------------------------------------------- reads


async def test_every_quantity_of_every_model(line: Line) -> None:
    maps = load_maps()
    async with _driver(line) as driver:
        for meter in line.meters:
            quantities = list(maps[MODELS[meter.address]].quantities)
            got = await driver.read(meter.address, quantities)
            reported: Mapping[str, float] = meter.__dict__["reported"]
            assert list(got) == quantities
            for quantity, value in got.items():
                # float32 keeps 24 bits; scaled integers are exact at the meter's resolution
                assert value.value == pytest.approx(reported[quantity], rel=2**-23, abs=1e-9), (
                    f"unit {meter.address} {quantity}"
                )
                assert value.unit == QUANTITIES[quantity].unit
            assert got["energy_import_total"].value == pytest.approx(meter.energy_kwh, rel=2**-23)
            assert got["energy_import_total"].unit == "kWh"


async def test_rtu_read_takes_the_wire_time_of_its_bytes() -> None:
    with _line("rtu", _meters()) as line:
        assert line.bus is not None
        sdm630 = load_maps()["eastron-sdm630"]
        async with _driver(line) as driver:
            await driver.read("2", ["voltage_a"])  # open the port outside the timing
            # the simulator counts a reply byte just after writing it: let the count of the
            # first read settle before taking the starting figure (and again at the end)
            await asyncio.sleep(0.05)
            before = line.bus.stats.bytes
            started = time.monotonic()
            await driver.read("2", list(sdm630.quantities))
            elapsed = time.monotonic() - started
            # the simulator counts a reply byte just after writing it, and the driver may
            # already have taken the last one in
            await asyncio.sleep(0.05)
            wire_bytes = line.bus.stats.bytes - before
    # each request is 8 bytes and its reply 5 + 2N; every character is 10 bits at 8N1
    plan = plan_reads(sdm630, sdm630.quantities)
    assert wire_bytes == sum(8 + 5 + 2 * request.count for request in plan)
    assert elapsed >= wire_bytes * char_time(BAUD, "N")


async def test_unknown_quantity_or_unit_fails_before_any_io(line: Line) -> None:
    async with _driver(line) as driver:
        with pytest.raises(DriverError, match=r"unit 1 \(eastron-sdm120\).*balance_remaining"):
            await driver.read("1", ["voltage_a", "balance_remaining"])
        with pytest.raises(DriverError, match="unit '9' is not configured"):
            await driver.read("9", ["voltage_a"])
        with pytest.raises(DriverError, match="has no relay"):
            await driver.switch_relay("1", "relay_open")
        with pytest.raises(DriverError, match="cannot close-permitted"):
            await driver.switch_relay("5", "relay_close_permitted")
    assert line.requests() == 0


def test_bad_configuration_is_refused_before_connecting() -> None:
    with pytest.raises(DriverError, match=r"unit '0'.*1\.\.247.*'nope' is not one of"):
        ModbusDriver.tcp("127.0.0.1", 1, models={"0": "eastron-sdm120", "3": "nope"})


# --------------------------------------------------------------------------- relay


async def test_relay_open_and_close(line: Line) -> None:
    meter = line.meters[4]
    async with _driver(line) as driver:
        assert (await driver.read_status("5")).relay == "closed"
        assert await driver.switch_relay("5", "relay_open") == "open"
        assert meter.relay_open
        assert (await driver.read("5", ["power_active_total"]))["power_active_total"].value == 0
        assert await driver.switch_relay("5", "relay_open") == "open"  # idempotent
        assert await driver.switch_relay("5", "relay_close") == "closed"
        assert not meter.relay_open
    assert [m.relay_open for m in line.meters] == [False] * 5


CUSTOM_MAP = """
# A site's own meter: relay in a holding register with "close permitted", little-endian words.
[meter]
description = "site meter with a relay register"
phases = 1
word_order = "little"
max_registers = 10
max_gap = 0

[relay]
function = "holding"
address = 0x0100
open = 0x0A
closed = 0x0C
close_permitted = 0x0B

[[registers]]
quantity = "energy_import_total"
address = 0
function = "input"
type = "int32"
scale = 10
unit = "Wh"

[[registers]]
quantity = "voltage_a"
address = 2
function = "input"
type = "uint16"
scale = 0.1
unit = "V"

[[registers]]
quantity = "current_a"
address = 4
function = "input"
type = "float32"
unit = "mA"
"""


@pytest.mark.parametrize("kind", ["rtu", "tcp"])
async def test_extra_map_folder_with_a_relay_register(tmp_path: Path, kind: str) -> None:
    (tmp_path / "site-relay-1p.toml").write_text(CUSTOM_MAP, "utf-8")
    meter = RecordingMeter("6", protocol="modbus", model="site-relay-1p", energy_kwh=321.45,
                           now=lambda: FROZEN)
    with _line(kind, [meter], maps_dir=tmp_path) as line:
        async with _driver(line, models={"6": "site-relay-1p"}) as driver:
            got = await driver.read("6", ["energy_import_total", "voltage_a", "current_a"])
            assert got["energy_import_total"].value == 321.45  # 32145 x 10 Wh
            assert got["voltage_a"].value == meter.__dict__["reported"]["voltage_a"]
            assert got["current_a"].value == pytest.approx(
                meter.__dict__["reported"]["current_a"], rel=2**-23)
            assert await driver.switch_relay("6", "relay_open") == "open"
            assert await driver.switch_relay("6", "relay_close_permitted") == "open"
            assert meter.relay_open and meter.relay_close_pending
            meter.press_button()
            assert (await driver.read_status("6")).relay == "closed"


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("no_reply", NoAnswer, r"unit 1: FC04 input registers 0x0000\+2: no reply"),
        ("bad_checksum", BadFrame, r"unit 1: FC04 input registers 0x0000\+2: "
                                   r"(CRC check failed|.*wrong protocol id)"),
        ("truncate", BadFrame, r"unit 1: FC04 input registers 0x0000\+2: incomplete reply"),
    ],
)
async def test_transport_faults(line: Line, fault: str, error: type, message: str) -> None:
    meter = line.meters[0]
    async with _driver(line, timeout_s=0.3, retries=1) as driver:
        setattr(meter.faults, fault, True)
        with pytest.raises(error, match=message):
            await driver.read("1", ["voltage_a"])
        with pytest.raises(error):  # persistent faults stay faults, whatever is asked
            await driver.read("1", ["frequency", "energy_import_total"])
        setattr(meter.faults, fault, False)
        # the line recovers: the next read of this meter and of its neighbour work
        assert (await driver.read("1", ["voltage_a"]))["voltage_a"].unit == "V"
        assert (await driver.read_status("5")).relay == "closed"


async def test_a_single_garbled_reply_is_retried(line: Line) -> None:
    line.meters[0].faults.bad_checksum_once = True
    async with _driver(line, timeout_s=0.3, retries=1) as driver:
        assert (await driver.read("1", ["voltage_a"]))["voltage_a"].value > 200
    assert line.requests() == 2


async def test_meter_exception_is_meter_rejected(line: Line) -> None:
    # unit 4 is a DTSU666 (holding registers only); configured as an SDM120 it is asked FC04
    async with _driver(line, models={"4": "eastron-sdm120"}) as driver:
        with pytest.raises(MeterRejected, match=r"unit 4: FC04 input registers 0x0000\+\d+: "
                                                r"exception 02 \(illegal data address\)"):
            await driver.read("4", ["voltage_a"])


async def test_probe_sweep_finds_the_units_on_the_line(line: Line) -> None:
    async with _driver(line, timeout_s=0.2, retries=2) as driver:
        found = [unit for unit in range(1, 9) if await driver.probe(unit)]
        assert found == [1, 2, 3, 4, 5]
        assert await driver.probe(4, model="eastron-sdm120")  # an exception reply: it is there
    async with _driver(line, timeout_s=0.2, models={}) as driver:  # a scan knows no models
        assert [unit for unit in range(1, 9) if await driver.probe(unit)] == [1, 2, 3, 4, 5]


async def test_broadcast_relay_write_reaches_every_meter_and_gets_no_reply() -> None:
    """The gateway never broadcasts relay commands, but the simulated line must do what the
    Serial Line spec says; checked with a plain pymodbus client."""
    with _line("rtu", _meters()) as line:
        client = AsyncModbusSerialClient(line.bus.port if line.bus else "", baudrate=BAUD,
                                         timeout=0.3, retries=0)
        await client.connect()
        try:
            await client.write_coil(0, False, device_id=0, no_response_expected=True)
            deadline = time.monotonic() + 2
            while not line.meters[4].relay_open and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            client.close()
        assert line.meters[4].relay_open
        assert line.bus is not None and line.bus.stats.replies == 0


# --------------------------------------------------------------------------- pymodbus pin


def test_pinned_pymodbus_is_the_range_the_driver_supports() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (spec,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("pymodbus")]
    match = re.fullmatch(r"pymodbus>=(\d+)\.(\d+),<(\d+)\.(\d+)", spec.replace(" ", ""))
    assert match, f"pyproject pins pymodbus as {spec!r}; expected a >=X.Y,<X.Z range"
    low, high = (int(match[1]), int(match[2])), (int(match[3]), int(match[4]))
    assert (low, high) == PYMODBUS_SUPPORTED
    installed = tuple(int(part) for part in pymodbus.__version__.split(".")[:2])
    assert low <= installed < high, f"pymodbus {pymodbus.__version__} outside {spec}"


async def test_driver_survives_a_long_silence_and_a_server_going_away() -> None:
    """pymodbus drops a TCP connection after retries + 3 unanswered requests; the driver
    reconnects on the next transaction, and a server that is gone is NoAnswer, not a crash."""
    meters = _meters()
    server = ModbusTcpServer(meters).start()
    driver = ModbusDriver.tcp("127.0.0.1", server.port, timeout_s=0.1, retries=0, models=MODELS)
    try:
        meters[0].faults.no_reply = True
        for _ in range(6):
            with pytest.raises(NoAnswer):
                await driver.read("1", ["voltage_a"])
        meters[0].faults.no_reply = False
        assert (await driver.read("1", ["voltage_a"]))["voltage_a"].value > 200
        server.stop()
        with pytest.raises(NoAnswer):
            await driver.read("1", ["voltage_a"])
        with pytest.raises(PortUnavailable, match="cannot open tcp connection"):
            await driver.read("1", ["voltage_a"])
    finally:
        await driver.close()
        server.stop()
