"""The gateway's DL/T645 driver against simulated meters on a pseudo-terminal, byte for byte.

Meters' time is frozen (``now``) so energy registers and clocks hold still while the test
compares what the driver read with what the meter holds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

import pytest

from firmware_sim.bus import SimBus, SimTcpBus, char_time
from firmware_sim.dlt645 import Dlt645BusProtocol
from firmware_sim.meter import SimMeter
from gateway.drivers.base import BadFrame, DriverError, MeterRejected, NoAnswer
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.transport import SerialTransport, TcpTransport
from meterhub.protocols.dlt645.identifiers import (
    STATUS3_RELAY_OPEN,
    TABLE_1997,
    TABLE_2007,
    quantities_for,
)

NOW = datetime(2026, 11, 23, 10, 30, 0, tzinfo=UTC)
M07 = "000000000161"
M07B = "123456781012"
M97 = "000000000003"


def frozen() -> float:
    return NOW.timestamp()


def make_meters() -> list[SimMeter]:
    return [
        SimMeter(M07, phases=3, energy_kwh=1234.56, export_kwh=7.5, balance_remaining=-3.25,
                 now=frozen),
        SimMeter(M07B, energy_kwh=10.0, now=frozen),
        SimMeter(M97, protocol="dlt645-1997", energy_kwh=321.09, now=frozen),
    ]


@pytest.fixture
def meters() -> list[SimMeter]:
    return make_meters()


@pytest.fixture(params=[2400, 9600])
def bus(request: pytest.FixtureRequest, meters: list[SimMeter]) -> Iterator[SimBus]:
    # max_reply_data 16 makes block reads (0001FF00: 4 + 5 x 4 bytes) use follow-up frames
    protocol = Dlt645BusProtocol(max_reply_data=16)
    with SimBus(protocol, meters, baud=request.param, turnaround_s=0.02) as running:
        yield running


def driver_for(bus: SimBus, **kwargs: object) -> Dlt645Driver:
    options: dict[str, object] = {"timeout_s": 0.5, "clock": lambda: NOW,
                                  "password": "123456"}  # the simulated meters' password
    options.update(kwargs)
    return Dlt645Driver(SerialTransport(bus.port, baud=bus.baud), **options)  # type: ignore[arg-type]


@pytest.fixture
async def driver(bus: SimBus) -> AsyncIterator[Dlt645Driver]:
    d = driver_for(bus)
    yield d
    await d.close()


async def test_reads_every_2007_identifier(
    bus: SimBus, driver: Dlt645Driver, meters: list[SimMeter]
) -> None:
    meter = meters[0]
    got = {di: await driver.read_identifier(M07, di) for di in TABLE_2007}
    assert got[0x00010000] == pytest.approx(1234.56)
    assert got[0x00000000] == pytest.approx(1234.56)
    assert got[0x00020000] == pytest.approx(7.5)
    assert got[0x0001FF00] == pytest.approx((1234.56, 0.0, 0.0, 0.0, 0.0))
    assert got[0x00900200] == 0.0  # a negative balance shows as overdraft
    assert got[0x00900201] == pytest.approx(3.25)
    assert got[0x04001001] == pytest.approx(50.0)
    assert got[0x04000401] == M07
    assert got[0x04000101] == NOW.date()
    assert got[0x04000102] == NOW.time()
    assert got[0x04000503] == meter.status_word3()
    for di, phase in ((0x02010100, "a"), (0x02010200, "b"), (0x02010300, "c")):
        assert got[di] == pytest.approx(meter.nominal_voltage, rel=0.01), phase
    voltages = got[0x0201FF00]
    assert isinstance(voltages, tuple) and len(voltages) == 3
    assert got[0x02030000] == pytest.approx(meter.value("power_active_total"), abs=1e-4)
    assert got[0x02800002] == pytest.approx(50.0, abs=0.05)
    assert set(got) == set(TABLE_2007)


async def test_block_read_uses_follow_up_frames(bus: SimBus, driver: Dlt645Driver) -> None:
    before = bus.stats.requests
    await driver.read_identifier(M07, 0x0001FF00)
    assert bus.stats.requests - before == 2  # 20 value bytes: 12 in the first frame, 8 after


async def test_reads_every_1997_identifier(bus: SimBus, meters: list[SimMeter]) -> None:
    d97 = driver_for(bus, version="1997")
    try:
        got = {di: await d97.read_identifier(M97, di) for di in TABLE_1997}
        assert got[0x9010] == pytest.approx(321.09)
        assert got[0x901F] == pytest.approx((321.09, 0.0, 0.0, 0.0, 0.0))
        assert got[0xC032] == M97
        assert got[0xC010] == NOW.date()
        assert got[0xB611] == pytest.approx(220, abs=2)
        assert set(got) == set(TABLE_1997)
        values = await d97.read(M97, ["energy_import_total", "voltage_a"])
        assert values["energy_import_total"].unit == "kWh"
        with pytest.raises(DriverError, match="1997 has no relay"):
            await d97.switch_relay(M97, "relay_open")
    finally:
        await d97.close()


async def test_read_every_canonical_quantity(driver: Dlt645Driver, meters: list[SimMeter]) -> None:
    names = quantities_for("2007")
    values = await driver.read(M07, names)
    assert set(values) == set(names)
    assert values["energy_import_total"].value == pytest.approx(1234.56)
    assert values["energy_import_total"].unit == "kWh"
    assert values["current_a"].unit == "A"
    assert values["power_active_total"].value == pytest.approx(
        meters[0].value("power_active_total"), abs=1e-4
    )


ENERGY = ["energy_import_total", *(f"energy_import_t{t}" for t in range(1, 5))]


async def test_quantities_of_one_block_come_in_one_read(
    bus: SimBus, driver: Dlt645Driver
) -> None:
    values = await driver.read(M07, [*ENERGY, "frequency"])
    assert values["energy_import_total"].value == pytest.approx(1234.56)
    assert values["energy_import_t3"].unit == "kWh"
    # block 0001FF00 (first frame and one follow-up) and frequency, not six single reads
    assert bus.stats.requests == 3


async def test_a_meter_without_blocks_is_read_one_by_one(meters: list[SimMeter]) -> None:
    protocol = Dlt645BusProtocol(supports_blocks=False)
    with SimBus(protocol, meters, baud=9600, turnaround_s=0.01) as bus:
        d = driver_for(bus)
        try:
            first = await d.read(M07, ENERGY)
            assert bus.stats.requests == 1 + 5  # refused block, then single reads
            again = await d.read(M07, ENERGY)
            assert bus.stats.requests == 6 + 5  # the refusal is remembered
        finally:
            await d.close()
    assert first == again
    assert first["energy_import_total"].value == pytest.approx(1234.56)


async def test_unknown_quantity_fails_before_any_io(bus: SimBus, driver: Dlt645Driver) -> None:
    with pytest.raises(DriverError, match="no_such_thing"):
        await driver.read(M07, ["energy_import_total", "no_such_thing"])
    assert bus.stats.requests == 0


async def test_only_the_addressed_meter_answers(bus: SimBus, driver: Dlt645Driver) -> None:
    assert (await driver.read(M07B, ["energy_import_total"]))["energy_import_total"].value == 10
    with pytest.raises(NoAnswer, match="000000000999"):
        await driver.read("000000000999", ["energy_import_total"])
    # abbreviated address: only the low bytes given, the rest AAH
    assert await driver.read_identifier("AAAAAAAA0161", 0x04000401) == M07


async def test_meter_without_the_data_says_so(driver: Dlt645Driver) -> None:
    with pytest.raises(MeterRejected, match="no requested data"):
        await driver.read_identifier(M07, 0x00010500)  # tariff 5 on a 4-tariff meter


async def test_relay_control_and_status_word(
    bus: SimBus, driver: Dlt645Driver, meters: list[SimMeter]
) -> None:
    meter = meters[0]
    assert (await driver.read_status(M07)).relay == "closed"
    assert await driver.switch_relay(M07, "relay_open") == "open"
    assert meter.relay_open
    word = await driver.read_identifier(M07, 0x04000503)
    assert isinstance(word, int) and word & STATUS3_RELAY_OPEN
    assert (await driver.read(M07, ["power_active_total"]))["power_active_total"].value == 0
    assert await driver.switch_relay(M07, "relay_close") == "closed"
    assert not meter.relay_open
    word = await driver.read_identifier(M07, 0x04000503)
    assert isinstance(word, int) and not word & STATUS3_RELAY_OPEN
    # close permitted: stays open until the customer presses the button
    await driver.switch_relay(M07, "relay_open")
    assert await driver.switch_relay(M07, "relay_close_permitted") == "open"
    assert meter.relay_close_pending
    meter.press_button()
    assert (await driver.read_status(M07)).relay == "closed"
    assert not meters[1].relay_open  # the other meter on the bus was not touched


async def test_relay_refusals(bus: SimBus, meters: list[SimMeter]) -> None:
    late = driver_for(bus, clock=lambda: NOW - timedelta(hours=1), relay_validity_s=60)
    wrong = driver_for(bus, password="654321")
    try:
        with pytest.raises(MeterRejected, match="other error"):  # expired validity time
            await late.switch_relay(M07, "relay_open")
        with pytest.raises(MeterRejected, match="wrong password"):
            await wrong.switch_relay(M07, "relay_open")
        assert not meters[0].relay_open
        with pytest.raises(DriverError, match="relay_toggle"):
            await wrong.switch_relay(M07, "relay_toggle")
    finally:
        await late.close()
        await wrong.close()


async def test_write_parameters(bus: SimBus, driver: Dlt645Driver, meters: list[SimMeter]) -> None:
    await driver.write_identifier(M07, 0x04001001, 12.34)  # alarm amount 1
    assert await driver.read_identifier(M07, 0x04001001) == pytest.approx(12.34)
    await driver.write_identifier(M07, 0x04000102, dt_time(8, 9, 10))
    assert meters[0].clock().time() == dt_time(8, 9, 10)
    wrong = driver_for(bus, password="000000")
    try:
        with pytest.raises(MeterRejected, match="wrong password"):
            await wrong.write_identifier(M07, 0x04001001, 1.0)
    finally:
        await wrong.close()
    with pytest.raises(DriverError, match="cannot write"):
        await driver.write_identifier(M07, 0x04001001, "not a number")


async def test_garbled_checksum_is_bad_frame_and_retried(
    bus: SimBus, meters: list[SimMeter]
) -> None:
    d = driver_for(bus, retries=1)
    try:
        meters[0].faults.bad_checksum = True
        with pytest.raises(BadFrame, match=r"000000000161.*checksum.*2 attempts"):
            await d.read(M07, ["energy_import_total"])
        meters[0].faults.bad_checksum = False
        meters[0].faults.bad_checksum_once = True
        assert (await d.read(M07, ["energy_import_total"]))["energy_import_total"].value == \
            pytest.approx(1234.56)
        meters[0].faults.truncate = True
        with pytest.raises(BadFrame, match="incomplete"):
            await d.read(M07, ["energy_import_total"])
    finally:
        await d.close()


async def test_no_reply_is_no_answer(bus: SimBus, meters: list[SimMeter]) -> None:
    d = driver_for(bus, retries=2, timeout_s=0.3)
    try:
        meters[0].faults.no_reply = True
        with pytest.raises(NoAnswer, match=r"meter 000000000161 .*\(3 attempts\)"):
            await d.read(M07, ["voltage_a"])
        meters[0].faults.no_reply = False
        meters[0].faults.slow_reply_s = 0.15  # slow but inside the timeout: fine
        d.timeout_s = 0.8
        assert (await d.read(M07, ["voltage_a"]))["voltage_a"].unit == "V"
    finally:
        await d.close()
    once = driver_for(bus, retries=0, timeout_s=0.3)
    try:
        meters[0].faults.slow_reply_s = 0.6  # later than the timeout: no answer in time
        with pytest.raises(NoAnswer, match=r"no answer within 0\.3 s"):
            await once.read(M07, ["voltage_a"])
    finally:
        await once.close()


async def test_a_late_reply_is_not_taken_for_the_next_answer(
    bus: SimBus, meters: list[SimMeter]
) -> None:
    d = driver_for(bus, retries=0, timeout_s=0.3)
    try:
        meters[0].faults.slow_reply_s = 0.5
        with pytest.raises(NoAnswer):
            await d.read(M07, ["voltage_a"])
        meters[0].faults.slow_reply_s = 0.0
        d.timeout_s = 1.5
        # the voltage reply arrives while this read waits; it must be skipped, not decoded
        values = await d.read(M07, ["energy_import_total"])
        assert values["energy_import_total"].value == pytest.approx(1234.56)
    finally:
        await d.close()


async def test_time_sync_sets_every_clock_and_gets_no_reply(
    bus: SimBus, driver: Dlt645Driver, meters: list[SimMeter]
) -> None:
    when = datetime(2027, 2, 3, 4, 5, 6, tzinfo=UTC)
    await driver.time_sync(M07, when)
    assert await driver.read_identifier(M07, 0x04000102) == when.time()
    assert all(m.clock() == when for m in meters)
    assert bus.stats.replies == bus.stats.requests - 1


async def test_read_address_scan() -> None:
    meter = SimMeter("201901020304", now=frozen)
    with SimBus(Dlt645BusProtocol(), [meter], baud=9600) as bus:
        d = driver_for(bus)
        try:
            assert await d.read_address() == "201901020304"
        finally:
            await d.close()
    with SimBus(Dlt645BusProtocol(), make_meters()[:2], baud=9600) as bus:
        d = driver_for(bus, retries=0)
        try:  # two meters answer the wildcard at once: a collision, never a wrong address
            with pytest.raises(BadFrame):
                await d.read_address()
        finally:
            await d.close()


async def test_a_read_takes_its_wire_time_at_2400_baud(meters: list[SimMeter]) -> None:
    with SimBus(Dlt645BusProtocol(reply_preamble=0), meters, baud=2400,
                turnaround_s=0.03) as bus:
        d = driver_for(bus)
        try:
            await d.read(M07, ["energy_import_total"])  # open the port outside the timing
            started = time.monotonic()
            await d.read(M07, ["energy_import_total"])
            elapsed = time.monotonic() - started
        finally:
            await d.close()
    # request: 4 FE + 16 bytes; reply: 12 + 8 bytes; 11 bits a character at 2400 baud
    wire = (20 + 20) * char_time(2400, "E", 8, 1)
    assert wire == pytest.approx(0.1833, abs=1e-3)
    assert elapsed >= wire + 0.03
    assert elapsed < wire + 0.03 + 0.5  # and not much more than the line needs


async def test_dlt645_over_tcp(meters: list[SimMeter]) -> None:
    with SimTcpBus(Dlt645BusProtocol(), meters, turnaround_s=0.01) as server:
        host, port = server.address
        d = Dlt645Driver(TcpTransport(host, port), timeout_s=0.5, clock=lambda: NOW,
                         password="123456")
        try:
            values = await d.read(M07, ["energy_import_total", "voltage_a"])
            assert values["energy_import_total"].value == pytest.approx(1234.56)
            assert await d.switch_relay(M07, "relay_open") == "open"
            assert meters[0].relay_open
            meters[0].faults.bad_checksum = True
            with pytest.raises(BadFrame, match="checksum"):
                await d.read(M07, ["energy_import_total"])
            meters[0].faults.bad_checksum = False
            with pytest.raises(NoAnswer):
                await d.read("000000000999", ["energy_import_total"])
        finally:
            await d.close()
    assert server.stats.requests >= 5


async def test_tcp_transport_reports_a_refused_connection() -> None:
    with SimTcpBus(Dlt645BusProtocol(), []) as server:
        host, port = server.address
    d = Dlt645Driver(TcpTransport(host, port, connect_timeout_s=1), clock=lambda: NOW)
    with pytest.raises(DriverError, match="cannot connect"):
        await d.read(M07, ["energy_import_total"])


async def test_no_password_no_relay_frame(bus: SimBus, meters: list[SimMeter]) -> None:
    """There is no default password: without one the driver refuses before sending."""
    d = driver_for(bus, password=None)
    try:
        with pytest.raises(DriverError, match="needs its DL/T645 password"):
            await d.switch_relay(M07, "relay_open")
        assert not meters[0].relay_open
    finally:
        await d.close()


async def test_read_clock_gives_the_meter_clock_and_the_gateway_time(
    bus: SimBus, driver: Dlt645Driver, meters: list[SimMeter]
) -> None:
    meters[0].set_clock(NOW + timedelta(seconds=95))
    meters[2].set_clock(NOW - timedelta(hours=2))
    check = await driver.read_clock(M07)
    assert (check.meter_clock, check.read_at, check.drift_s) == (
        NOW + timedelta(seconds=95), NOW, 95.0)
    d97 = driver_for(bus, version="1997")
    try:
        assert (await d97.read_clock(M97)).drift_s == -7200.0  # -1997: C010 / C011
    finally:
        await d97.close()


async def test_read_clock_rereads_the_date_right_after_midnight(
    bus: SimBus, meters: list[SimMeter]
) -> None:
    """The date is read before the time: if midnight passes between the two, the time
    (00:00:0x) is paired with the new date, read again."""
    midnight = datetime(2026, 11, 24, tzinfo=UTC)
    # what the meter's clock says at each read: the date, the time, the date again
    said = iter([midnight - timedelta(seconds=0.4), midnight + timedelta(seconds=0.2),
                 midnight + timedelta(seconds=0.3)])
    meters[0].clock = lambda: next(said)  # type: ignore[method-assign]
    d = driver_for(bus, clock=lambda: midnight)
    try:
        check = await d.read_clock(M07)
    finally:
        await d.close()
    assert check.meter_clock == midnight


async def test_time_sync_by_writing_sets_one_meter_and_needs_its_password(
    bus: SimBus, meters: list[SimMeter]
) -> None:
    when = datetime(2027, 2, 3, 4, 5, 6, tzinfo=UTC)
    d = driver_for(bus, time_sync_mode="set", clock=lambda: when)
    try:
        await d.time_sync(M07, when)
    finally:
        await d.close()
    assert meters[0].clock() == when
    assert meters[1].clock() == NOW  # not a broadcast: the others keep their time
    wrong = driver_for(bus, time_sync_mode="set", password="654321")
    try:
        with pytest.raises(MeterRejected, match="password"):
            await wrong.time_sync(M07B, when)
    finally:
        await wrong.close()
    assert meters[1].clock() == NOW
