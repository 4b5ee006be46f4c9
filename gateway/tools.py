"""Installer tools behind ``meterhub gateway check|scan|read``: plain async functions that
return data, so the command line only formats and the tests call them directly."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiomqtt

from gateway import hints
from gateway.config import BusConfig, BusProtocol, GatewayConfig, MeterConfig
from gateway.drivers import open_driver
from gateway.drivers.base import (
    BadFrame,
    Driver,
    DriverError,
    MeterRejected,
    NoAnswer,
    PortUnavailable,
)
from meterhub.security import SecretError
from meterhub.settings import SettingsError, data_dir, mqtt_settings
from meterhub.wire import Value

Progress = Callable[[int, int, str], None]  # (done, total, what was found so far)

NO_MODEL = "no known register map answers: write one (meterhub/protocols/modbus/maps)"
PROBE_TURNAROUND_S = 0.1  # most meters answer within 100 ms; slower ones: --timeout
NOT_READ = "not read: the bus cannot be used (see its line above)"
BUS_PARTLY = "partly"
SEE_BUS = "no meter on this bus answers: see its line above"


@dataclass(frozen=True, slots=True)
class CheckRow:
    bus: str
    meter: str
    protocol: str
    answered: bool
    rtt_ms: float | None
    values: dict[str, Value] = field(default_factory=dict)
    error: str | None = None
    verdict: str = hints.OK  # ok | no answer | error reply | garbled | no port
    hint: str | None = None  # what to check, most likely first


@dataclass(frozen=True, slots=True)
class BusVerdict:
    """One bus: its port and line, and whether its meters answered."""

    bus: str
    endpoint: str
    line: str
    verdict: str  # ok | no port | silent | partly
    answered: int
    meters: int
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A check beyond the meters: the state directory, the broker login."""

    what: str
    ok: bool
    detail: str


async def check_meters(config: GatewayConfig,
                       driver_factory: Callable[[BusConfig], Driver] = open_driver,
                       ) -> tuple[list[BusVerdict], list[CheckRow]]:
    """Read every configured meter once, bus by bus (buses side by side): a verdict per bus
    (said once when its port is missing) and per meter, each with its cause."""
    results = await asyncio.gather(*(_check_bus(b, driver_factory) for b in config.buses))
    return [v for v, _ in results], [row for _, rows in results for row in rows]


async def _check_bus(bus: BusConfig, driver_factory: Callable[[BusConfig], Driver],
                     ) -> tuple[BusVerdict, list[CheckRow]]:
    line = hints.line_of(bus)
    problem: BaseException | None = None
    outcomes: list[tuple[MeterConfig, float | None, dict[str, Value], BaseException | None]] = []
    if bus.port is not None and not Path(bus.port).exists():
        problem = PortUnavailable(f"{bus.port} does not exist")
    else:
        try:
            driver = driver_factory(bus)
        except (DriverError, OSError, ValueError) as exc:
            problem = PortUnavailable(str(exc))
        else:
            try:
                for meter in bus.meters:
                    outcome = await _read_meter(driver, meter)
                    if isinstance(outcome[3], PortUnavailable):
                        problem = outcome[3]
                        break
                    outcomes.append(outcome)
            finally:
                await driver.close()
    if problem is not None:
        why = f"{problem}; " + hints.explain(PortUnavailable(str(problem)), bus, "")
        rows = [CheckRow(bus.name, m.id, bus.protocol, False, None, error=NOT_READ,
                         verdict=hints.NO_PORT) for m in bus.meters]
        return BusVerdict(bus.name, bus.endpoint, line, hints.NO_PORT, 0, len(bus.meters),
                          why), rows
    answered = sum(failure is None or isinstance(failure, MeterRejected | BadFrame)
                   for *_, failure in outcomes)
    rows = []
    for meter, rtt, values, failure in outcomes:
        if failure is None:
            rows.append(CheckRow(bus.name, meter.id, bus.protocol, True, rtt, values))
            continue
        others = answered - (isinstance(failure, MeterRejected | BadFrame))
        assert isinstance(failure, DriverError | OSError)
        hint = hints.explain(failure, bus, meter.address, model=meter.model,
                             known=hints.Known(port_opens=True, others_answer=others))
        rows.append(CheckRow(bus.name, meter.id, bus.protocol, False, None,
                             error=f"{type(failure).__name__}: {failure}",
                             verdict=hints.verdict(failure), hint=hint))
    ok = sum(r.verdict == hints.OK for r in rows)
    verdict = hints.OK if ok == len(rows) else hints.SILENT if not answered else BUS_PARTLY
    cause: str | None = None
    if not answered and rows:  # the line, not each meter: said once, for the bus
        cause = hints.explain(NoAnswer(""), bus, ", ".join(m.address for m in bus.meters),
                              known=hints.Known(port_opens=True))
        rows = [replace(r, hint=SEE_BUS) for r in rows]
    return BusVerdict(bus.name, bus.endpoint, line, verdict, ok, len(rows), cause), rows


async def _read_meter(driver: Driver, meter: MeterConfig,
                      ) -> tuple[MeterConfig, float | None, dict[str, Value], BaseException | None]:
    started = time.monotonic()
    try:
        values = await driver.read(meter.address, meter.quantities)
    except (DriverError, OSError) as exc:
        return meter, None, {}, exc
    return meter, round((time.monotonic() - started) * 1000, 1), values, None


async def preflight(config: GatewayConfig, state_dir: Path | None = None) -> list[Finding]:
    """The state directory and the broker login, as ``gateway run`` will use them."""
    return [_check_state_dir(state_dir or config.state_dir or data_dir() / "gateway"),
            await _check_broker(config)]


def _check_state_dir(path: Path) -> Finding:
    what = f"state directory {path}"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return Finding(what, False, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Finding(what, False, f"{existing} is not writable by this user "
                       "(run as the service's user, or set gateway.state_dir / --state-dir)")
    return Finding(what, True, "writable" if existing == path else
                   f"will be created in {existing}")


async def _check_broker(config: GatewayConfig) -> Finding:
    try:
        mqtt = config.mqtt.settings() or mqtt_settings()
    except (SettingsError, SecretError) as exc:
        return Finding("broker", False, str(exc))
    if mqtt is None:
        return Finding("broker", False, "no broker: set mqtt.url in the config or "
                       "METERHUB_MQTT_URL")
    what = f"broker {mqtt.url}" + (f" as {mqtt.username}" if mqtt.username else "")
    try:
        async with aiomqtt.Client(mqtt.host, mqtt.port, username=mqtt.username,
                                  password=mqtt.password, tls_context=mqtt.tls_context(),
                                  identifier=f"meterhub-check-{uuid.uuid4().hex[:8]}",
                                  timeout=5):
            pass
    except aiomqtt.MqttError as exc:
        return Finding(what, False, f"{exc} (check the URL, the user and its password file, "
                       "TLS ca_file, and that the broker runs)")
    except (OSError, ValueError) as exc:
        return Finding(what, False, str(exc))
    return Finding(what, True, "login accepted")


def format_check(buses: Sequence[BusVerdict], rows: Sequence[CheckRow],
                 findings: Sequence[Finding] = ()) -> str:
    """What an installer reads on a laptop screen: the state directory and broker, one line
    per bus with its verdict and cause, then one row per meter."""
    out = [f"{'OK  ' if f.ok else 'FAIL'} {f.what}: {f.detail}" for f in findings]
    for b in buses:
        mark = "OK  " if b.verdict == hints.OK else "FAIL"
        out.append(f"{mark} bus {b.bus} ({b.endpoint}, {b.line}): {b.verdict}, "
                   f"{b.answered} of {b.meters} meters read" + (f": {b.cause}" if b.cause else ""))
    header = ("meter", "bus", "protocol", "verdict", "rtt ms", "values / cause")
    lines = []
    for r in rows:
        values = ", ".join(f"{q}={_number(v.value)} {v.unit}".rstrip()
                           for q, v in r.values.items())
        lines.append((r.meter, r.bus, r.protocol, r.verdict,
                      f"{r.rtt_ms:.0f}" if r.rtt_ms is not None else "-",
                      values if r.answered else (r.hint or r.error or "")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
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
    return BusConfig(name=bus_name(port, tcp), protocol=protocol,
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


async def read_relay(bus: BusConfig, address: str,
                     driver_factory: Callable[[BusConfig], Driver] = open_driver) -> str:
    """The relay state read from the meter: open, closed or unknown."""
    driver = driver_factory(bus)
    try:
        if not driver.capabilities(address).relay:
            raise DriverError(f"{bus.protocol} meter {address}: no relay to read"
                              + (" (this register map has none)" if bus.protocol == "modbus"
                                 else " (DL/T645-1997 reports none)"))
        return str((await driver.read_status(address)).relay)
    finally:
        await driver.close()


def readable_items(protocol: BusProtocol, model: str | None = None,
                   maps_dir: str | None = None) -> list[str]:
    """What ``read --item`` takes for a protocol (and Modbus register map), one per line with
    its unit; ``relay`` where the meter reports one."""
    from meterhub.quantities import QUANTITIES

    if protocol == "modbus":
        from meterhub.protocols.modbus.registermap import load_maps

        maps = load_maps(maps_dir)
        if model is None or model not in maps:
            raise DriverError(f"--model: name a register map to list its items ("
                              f"{', '.join(sorted(maps))})")
        regmap = maps[model]
        names = list(regmap.registers)
        relay = regmap.relay is not None
    else:
        from meterhub.protocols.dlt645.identifiers import quantities_for

        names = quantities_for("1997" if protocol == "dlt645-1997" else "2007")
        relay = protocol == "dlt645-2007"
    lines = [f"{q:28} {QUANTITIES[q].unit}".rstrip() for q in names]
    if relay:
        lines.append(f"{'relay':28} open | closed (read from the meter)")
    if protocol != "modbus":
        lines.append("any data identifier in hex, e.g. 04000401 (the meter address)")
    return lines


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
    models: tuple[str, ...] = ()  # Modbus: the known register maps it answers as, best first


def probe_timeout(bus: BusConfig, turnaround_s: float = PROBE_TURNAROUND_S) -> float:
    """A scan's wait per unit: the request's and a short reply's wire time and the meter's
    turnaround, instead of a poll's full timeout (README, "On site: the installer's tools")."""
    if bus.port is None:
        return 0.3  # TCP: a network round trip and a serial server's own timeout vary
    bits = 1 + bus.bytesize + (bus.parity != "N") + bus.stopbits
    return round(turnaround_s + 32 * bits / bus.baud, 3)


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
                there = await driver.probe(unit, model)
            except DriverError as exc:
                there = _answered(exc)
            if there:
                found.append(Found(str(unit), "probe", tuple(await driver.identify(unit))))
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


def bus_name(port: str | None, tcp: tuple[str, int] | None) -> str:
    """A bus name from where it is: the device or link name (``ttyUSB0``, ``rs485-1``)."""
    raw = Path(port).name if port else f"tcp-{tcp[1]}" if tcp else "bus"
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", raw)[:64] or "bus"


def config_snippet(bus: BusConfig, found: Sequence[Found], model: str | None = None) -> str:
    """TOML for what a scan found, to paste under the gateway config; a Modbus meter gets the
    register map it answered as (the others that also fit in a comment)."""
    lines = ["[[buses]]", f'name = "{bus.name}"', f'protocol = "{bus.protocol}"']
    if bus.port is not None:
        lines.append(f'port = "{bus.port}"')
    elif bus.tcp is not None:
        lines.append(f'tcp = "{bus.tcp[0]}:{bus.tcp[1]}"')
    if bus.port is not None:
        lines += [f"baud = {bus.baud}", f'parity = "{bus.parity}"']
    for f in found:
        lines += ["", "[[buses.meters]]"]
        if bus.protocol != "modbus":
            lines.append(f'address = "{f.address}"')
            continue
        lines.append(f"unit = {f.address}")
        if model:
            lines.append(f'model = "{model}"')
        elif f.models:
            others = f"   # also answers as: {', '.join(f.models[1:])}" if f.models[1:] else ""
            lines.append(f'model = "{f.models[0]}"{others}')
        else:
            lines.append(f'model = "CHANGE-ME"   # {NO_MODEL}')
    return "\n".join(lines)
