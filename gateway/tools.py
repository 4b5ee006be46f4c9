"""Installer tools behind ``meterhub gateway check|scan|read``: plain async functions that
return data, so the command line only formats and the tests call them directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.config import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from gateway.drivers import open_driver
from gateway.drivers.base import Driver, DriverError
from meterhub.wire import Value

Progress = Callable[[int, int, str], None]  # (done, total, what was found so far)


@dataclass(frozen=True, slots=True)
class CheckRow:
    bus: str
    meter: str
    protocol: str
    answered: bool
    rtt_ms: float | None
    values: dict[str, Value] = field(default_factory=dict)
    error: str | None = None


async def check_meters(config: GatewayConfig,
                       driver_factory: Callable[[BusConfig], Driver] = open_driver,
                       ) -> list[CheckRow]:
    """Read every configured meter once, bus by bus (buses side by side)."""
    async def one_bus(bus: BusConfig) -> list[CheckRow]:
        try:
            driver = driver_factory(bus)
        except (DriverError, OSError, ValueError) as exc:
            return [CheckRow(bus.name, m.id, bus.protocol, False, None, error=str(exc))
                    for m in bus.meters]
        rows = []
        try:
            for meter in bus.meters:
                rows.append(await _check_one(bus, meter, driver))
        finally:
            await driver.close()
        return rows

    results = await asyncio.gather(*(one_bus(b) for b in config.buses))
    return [row for rows in results for row in rows]


async def _check_one(bus: BusConfig, meter: MeterConfig, driver: Driver) -> CheckRow:
    started = time.monotonic()
    try:
        values = await driver.read(meter.address, meter.quantities)
    except (DriverError, OSError) as exc:
        return CheckRow(bus.name, meter.id, bus.protocol, False, None,
                        error=f"{type(exc).__name__}: {exc}")
    rtt = round((time.monotonic() - started) * 1000, 1)
    return CheckRow(bus.name, meter.id, bus.protocol, True, rtt, values)


def format_check(rows: Sequence[CheckRow]) -> str:
    """A table an installer reads on a laptop screen: one row per meter."""
    header = ("meter", "bus", "protocol", "answered", "rtt ms", "values")
    lines = []
    for r in rows:
        values = ", ".join(f"{q}={_number(v.value)} {v.unit}".rstrip()
                           for q, v in r.values.items())
        lines.append((r.meter, r.bus, r.protocol, "yes" if r.answered else "NO",
                      f"{r.rtt_ms:.0f}" if r.rtt_ms is not None else "-",
                      values if r.answered else (r.error or "")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    return "\n".join(out)


def _number(value: float) -> str:
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.2f}"


# ---------------------------------------------------------------------------- one-shot read


def adhoc_bus(protocol: BusProtocol, *, port: str | None, tcp: tuple[str, int] | None,
              baud: int | None = None, parity: str | None = None, timeout_s: float = 1.0,
              retries: int = 1, meters: Sequence[MeterConfig] = ()) -> BusConfig:
    """A bus built from command-line options, with the protocol's usual line settings."""
    dlt = protocol.startswith("dlt645")
    return BusConfig(name="rs485-1" if port else "tcp-1", protocol=protocol,
                     meters=tuple(meters), port=port, tcp=tcp,
                     baud=baud or (2400 if dlt else 9600), parity=parity or ("E" if dlt else "N"),
                     timeout_s=timeout_s, retries=retries)


async def read_once(bus: BusConfig, address: str, quantity: str,
                    driver_factory: Callable[[BusConfig], Driver] = open_driver) -> Value:
    """Read one quantity from one meter; DriverError says why not."""
    driver = driver_factory(bus)
    try:
        values = await driver.read(address, [quantity])
    finally:
        await driver.close()
    return values[quantity]


async def read_identifier(bus: BusConfig, address: str, di: int,
                          driver_factory: Callable[[BusConfig], Driver] = open_driver,
                          ) -> tuple[str, object, str]:
    """(name, value, unit) of any DL/T645 data identifier, for an installer's questions
    beyond the canonical quantities (meter address, clock, status words)."""
    from gateway.drivers.dlt645 import Dlt645Driver
    from meterhub.protocols.dlt645.errors import Dlt645Error
    from meterhub.protocols.dlt645.identifiers import lookup

    version = "1997" if bus.protocol == "dlt645-1997" else "2007"
    try:
        entry = lookup(di, version)
    except Dlt645Error as exc:
        raise DriverError(str(exc)) from None
    driver = driver_factory(bus)
    try:
        if not isinstance(driver, Dlt645Driver):
            raise DriverError(f"{bus.protocol} driver cannot read data identifiers")
        value = await driver.read_identifier(address, di)
    finally:
        await driver.close()
    return entry.name, value, entry.unit


# ---------------------------------------------------------------------------- scan


@dataclass(frozen=True, slots=True)
class Found:
    address: str  # 12-digit DL/T645 address or the Modbus unit id
    how: str  # "read-address" | "sweep" | "probe"


async def scan_dlt645(bus: BusConfig, addresses: Sequence[str], progress: Progress,
                      driver_factory: Callable[[BusConfig], Driver] = open_driver,
                      ) -> list[Found]:
    """DL/T645: read-address (0x13) to the wildcard first, which names the meter when it is
    alone on the line; then ask each candidate address for its energy register. A meter on a
    crowded line answers the wildcard in chorus, garbled, so the sweep is what finds it there."""
    from gateway.drivers.dlt645 import Dlt645Driver

    driver = driver_factory(bus)
    found: dict[str, Found] = {}
    total = len(addresses) + 1
    try:
        if isinstance(driver, Dlt645Driver):
            try:
                address = await driver.read_address()
            except DriverError:
                pass
            else:
                found[str(address)] = Found(str(address), "read-address")
        progress(1, total, _summary(found))
        for i, address in enumerate(addresses, start=2):
            if address not in found:
                try:
                    await driver.read(address, ["energy_import_total"])
                except DriverError as exc:
                    if _answered(exc):
                        found[address] = Found(address, "sweep")
                else:
                    found[address] = Found(address, "sweep")
            progress(i, total, _summary(found))
    finally:
        await driver.close()
    return sorted(found.values(), key=lambda f: f.address)


async def scan_modbus(bus: BusConfig, units: Sequence[int], progress: Progress,
                      model: str | None = None,
                      driver_factory: Callable[[BusConfig], Driver] = open_driver,
                      ) -> list[Found]:
    """Modbus: ask each unit id once, without retries; any reply (even an exception reply)
    means a device is there."""
    from gateway.drivers.modbus import ModbusDriver

    driver = driver_factory(bus)
    found: list[Found] = []
    try:
        if not isinstance(driver, ModbusDriver):
            raise DriverError(f"{bus.endpoint}: this driver cannot probe unit ids")
        for i, unit in enumerate(units, start=1):
            try:
                if await driver.probe(unit, model):
                    found.append(Found(str(unit), "probe"))
            except DriverError as exc:
                if _answered(exc):
                    found.append(Found(str(unit), "probe"))
            progress(i, len(units), _summary({f.address: f for f in found}))
    finally:
        await driver.close()
    return found


def _answered(exc: DriverError) -> bool:
    """A rejected or garbled reply still proves something sits at that address."""
    from gateway.drivers.base import BadFrame, MeterRejected

    return isinstance(exc, BadFrame | MeterRejected)


def _summary(found: dict[str, Found]) -> str:
    return f"{len(found)} found" + (f": {', '.join(list(found)[:4])}" if found else "")


def config_snippet(bus: BusConfig, found: Sequence[Found], model: str | None = None) -> str:
    """TOML for what a scan found, to paste under the gateway config."""
    lines = ["[[buses]]", f'name = "{bus.name}"', f'protocol = "{bus.protocol}"']
    if bus.port is not None:
        lines.append(f'port = "{bus.port}"')
    elif bus.tcp is not None:
        lines.append(f'tcp = "{bus.tcp[0]}:{bus.tcp[1]}"')
    if bus.port is not None:
        lines += [f"baud = {bus.baud}", f'parity = "{bus.parity}"']
    if bus.protocol == "modbus":
        lines.append(f'model = "{model or "CHANGE-ME"}"   # register map of these meters')
    for f in found:
        lines += ["", "[[buses.meters]]"]
        lines.append(f'address = "{f.address}"' if bus.protocol != "modbus"
                     else f"unit = {f.address}")
    return "\n".join(lines)
