"""A fleet of simulated meters on simulated buses, described as data (TOML or a dict).

The words are the gateway config's (``configs/gateway.example.toml``), so a bus reads the same
on both sides of the line:

```toml
[[buses]]
name = "rs485-1"
protocol = "dlt645-2007"      # dlt645-2007 | dlt645-1997 | modbus
port = "/tmp/meterhub-sim/rs485-1"   # optional: a stable name for the bus (a symlink to its
                              # pseudo-terminal), the path a gateway config opens
# tcp = "127.0.0.1:1502"      # Modbus only: serve the meters on TCP instead of a serial line
baud = 2400
parity = "E"                  # N | E | O; the meters hear only at these settings
turnaround_ms = 30
password = "483921"           # DL/T645 relay password of this bus's meters (default 123456,
                              # the factory setting; a site changes it, and so should a test)

[[buses.meters]]
address = "000000000001"      # 12 BCD digits for DL/T645; Modbus meters take unit = 1..247
energy_kwh = 1234.5
base_load_kw = 1.5
faults = { no_reply = false, bad_checksum = false, slow_reply_s = 0.0 }
```

The older words still load, each with one warning naming its new key: ``[[bus]]`` and
``[[bus.meter]]``, protocols ``modbus-rtu`` / ``modbus-tcp`` (with ``host`` and a numeric
``port``), a Modbus meter's ``address``. Errors name the key path and why, like the gateway's
config. A fleet is a context manager: entering it opens every pseudo-terminal (and its stable
name) or TCP port, leaving it closes them.
"""

from __future__ import annotations

import copy
import logging
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from firmware_sim._running import StartStop
from firmware_sim.bus import SimBus
from firmware_sim.meter import Faults, SimMeter

log = logging.getLogger(__name__)

PROTOCOLS = ("dlt645-2007", "dlt645-1997", "modbus")
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_METER_KEYS = {
    f.name for f in fields(SimMeter) if f.name not in ("faults", "now", "protocol", "profile")
}
_BUS_KEYS = {"name", "protocol", "port", "tcp", "baud", "parity", "bytesize", "stopbits",
             "turnaround_ms", "password", "meters"}
_FAULT_KEYS = {f.name for f in fields(Faults)}
FACTORY_PASSWORD = "123456"  # what DL/T645 meters leave the factory with


class FleetConfigError(ValueError):
    """Every problem in a fleet description, one per line with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}:\n  " + "\n  ".join(problems))


def _modernise(data: dict[str, Any], source: str) -> list[str]:
    """Rewrite the older words in place to the gateway's; one warning per old word found
    (where it is first used, and how often)."""
    found: dict[tuple[str, str], list[str]] = {}

    def old(where: str, was: str, now: str) -> None:
        found.setdefault((was, now), []).append(where)

    if "bus" in data and "buses" not in data:
        data["buses"] = data.pop("bus")
        old("bus", "[[bus]]", "[[buses]] (as in the gateway config)")
    for i, bus in enumerate(data.get("buses") or []):
        if not isinstance(bus, dict):
            continue
        at = f"buses[{i}]"
        if "meter" in bus and "meters" not in bus:
            bus["meters"] = bus.pop("meter")
            old(f"{at}.meter", "[[bus.meter]]", "[[buses.meters]]")
        protocol = bus.get("protocol")
        if protocol in ("modbus-rtu", "modbus-tcp"):
            bus["protocol"] = "modbus"
            if protocol == "modbus-tcp":
                host, port = bus.pop("host", "127.0.0.1"), bus.pop("port", 0)
                bus["tcp"] = f"{host}:{port}"
                old(f"{at}.protocol", "'modbus-tcp' with host and port",
                    f"protocol = 'modbus' and tcp = \"{host}:{port}\"")
            else:
                old(f"{at}.protocol", "'modbus-rtu'", "'modbus'")
        if bus.get("protocol") == "modbus":
            for j, meter in enumerate(bus.get("meters") or []):
                if isinstance(meter, dict) and "address" in meter and "unit" not in meter:
                    meter["unit"] = meter.pop("address")
                    old(f"{at}.meters[{j}].address", "a Modbus meter's 'address'", "unit")
    notes = [f"{source}: {where[0]}{f' (and {len(where) - 1} more)' if len(where) > 1 else ''}"
             f": {was} is deprecated, use {now}" for (was, now), where in found.items()]
    for note in notes:
        log.warning("%s", note)
    return notes


class Fleet(StartStop):
    def __init__(self, buses: list[dict[str, Any]]) -> None:
        self._specs = buses
        self._meters: dict[str, SimMeter] = {}
        self._by_bus: dict[str, list[SimMeter]] = {}
        self.deprecations: list[str] = []  # older words the description used
        for bus in buses:
            meters = [_make_meter(bus["protocol"], m) for m in bus["meters"]]
            self._by_bus[bus["name"]] = meters
            for meter in meters:
                self._meters[meter.address] = meter
        self._running: dict[str, Any] = {}
        self._links: dict[str, Path] = {}  # bus -> the stable name made for its pty

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<fleet>") -> Fleet:
        data = copy.deepcopy(data)  # the older words are rewritten in place
        deprecations = _modernise(data, source)
        problems: list[str] = []
        buses = data.get("buses")
        if not isinstance(buses, list) or not buses:
            raise FleetConfigError(source, ["buses: at least one [[buses]] table is required"])
        names: set[str] = set()
        for i, bus in enumerate(buses):
            at = f"buses[{i}]"
            if not isinstance(bus, dict):
                problems.append(f"{at}: expected a table")
                continue
            problems.extend(_check_bus(at, bus, names))
            meters = bus.get("meters")
            if not isinstance(meters, list) or not meters:
                problems.append(f"{at}.meters: at least one [[buses.meters]] is required")
                continue
            seen: set[str] = set()
            for j, meter in enumerate(meters):
                problems.extend(_check_meter(f"{at}.meters[{j}]", bus.get("protocol"), meter,
                                             seen))
        if problems:
            raise FleetConfigError(source, problems)
        fleet = cls(buses)
        fleet.deprecations = deprecations
        return fleet

    @classmethod
    def load(cls, path: Path, link_dir: Path | None = None) -> Fleet:
        """Read a fleet file; ``link_dir`` gives serial buses without a ``port`` a stable
        name there (``link_dir/<bus name>``)."""
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise FleetConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) \
                from None
        except tomllib.TOMLDecodeError as exc:
            raise FleetConfigError(str(path), [f"not valid TOML: {exc}"]) from None
        fleet = cls.from_dict(data, source=str(path))
        if link_dir is not None:
            for spec in fleet._specs:
                if "tcp" not in spec:
                    spec.setdefault("port", str(link_dir / spec["name"]))
        return fleet

    # ------------------------------------------------------------------ running

    def start(self) -> Fleet:
        from firmware_sim.dlt645 import Dlt645BusProtocol
        from firmware_sim.modbus import ModbusRtuBusProtocol
        from firmware_sim.modbus_tcp import ModbusTcpServer

        try:
            for spec in self._specs:
                meters = self._by_bus[spec["name"]]
                modbus = spec["protocol"] == "modbus"
                if "tcp" in spec:
                    host, _, port = spec["tcp"].rpartition(":")
                    server = ModbusTcpServer(meters, host=host, port=int(port))
                    server.start()
                    self._running[spec["name"]] = server
                    continue
                wire: Any = (
                    ModbusRtuBusProtocol() if modbus
                    # the version is each meter's own
                    else Dlt645BusProtocol(password=spec.get("password", FACTORY_PASSWORD))
                )
                bus = SimBus(
                    wire,
                    meters,
                    baud=spec.get("baud", 9600),
                    parity=spec.get("parity", "N" if modbus else "E"),
                    bytesize=spec.get("bytesize", 8),
                    stopbits=spec.get("stopbits", 1),
                    turnaround_s=spec.get("turnaround_ms", 20) / 1000.0,
                )
                self._running[spec["name"]] = bus.start()
                if "port" in spec:
                    self._links[spec["name"]] = _link(Path(spec["port"]), bus.port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for running in self._running.values():
            running.stop()
        self._running.clear()
        for link in self._links.values():
            if link.is_symlink():
                link.unlink()
        self._links.clear()

    # ------------------------------------------------------------------ access

    def port(self, bus: str) -> str:
        """The pseudo-terminal path (serial buses) or ``host:port`` (Modbus TCP) of a bus."""
        running = self._running[bus]
        if isinstance(running, SimBus):
            return running.port
        return f"{running.host}:{running.port}"

    def stable_port(self, bus: str) -> str | None:
        """The stable name (symlink) of a serial bus's pseudo-terminal, when it has one."""
        link = self._links.get(bus)
        return str(link) if link is not None else None

    def bus_line(self, bus: str) -> str:
        """How a gateway must talk to a bus: ``9600 8N1`` (serial) or ``tcp``."""
        running = self._running[bus]
        return str(running.line) if isinstance(running, SimBus) else "tcp"

    def meter(self, address: str) -> SimMeter:
        return self._meters[address]

    def meters(self, bus: str | None = None) -> list[SimMeter]:
        return list(self._meters.values()) if bus is None else list(self._by_bus[bus])

    def describe(self) -> list[tuple[str, str, str, int]]:
        """(bus, protocol, port, meter count) for every running bus; the port by its stable
        name when it has one."""
        return [
            (spec["name"], spec["protocol"],
             self.stable_port(spec["name"]) or self.port(spec["name"]), len(spec["meters"]))
            for spec in self._specs
        ]


def _check_bus(at: str, bus: dict[str, Any], names: set[str]) -> list[str]:
    problems = [f"{at}.{key}: unknown setting" for key in bus if key not in _BUS_KEYS]
    name = bus.setdefault("name", f"bus{len(names) + 1}")
    if name in names:
        problems.append(f"{at}.name: {name!r} is used by another bus")
    names.add(name)
    protocol = bus.get("protocol")
    if protocol not in PROTOCOLS:
        problems.append(f"{at}.protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if bus.get("baud", 9600) not in BAUDS:
        problems.append(f"{at}.baud: {bus.get('baud')!r} is not a standard baud rate")
    if bus.get("parity", "E") not in ("N", "E", "O"):
        problems.append(f"{at}.parity: {bus.get('parity')!r} is not N, E or O")
    if bus.get("bytesize", 8) not in (7, 8):
        problems.append(f"{at}.bytesize: {bus.get('bytesize')!r} is not 7 or 8")
    if bus.get("stopbits", 1) not in (1, 2):
        problems.append(f"{at}.stopbits: {bus.get('stopbits')!r} is not 1 or 2")
    password = bus.get("password", FACTORY_PASSWORD)
    if not (isinstance(password, str) and len(password) == 6 and password.isdigit()):
        problems.append(f"{at}.password: expected 6 digits as text")
    if "tcp" in bus:
        host, _, port = str(bus["tcp"]).rpartition(":")
        if protocol != "modbus":
            problems.append(f"{at}.tcp: only Modbus meters are simulated on TCP")
        elif not (host and port.isdigit() and int(port) < 65536):
            problems.append(f"{at}.tcp: {bus['tcp']!r} is not HOST:PORT (port 0: any free one)")
        if "port" in bus:
            problems.append(f"{at}: has both 'port' and 'tcp'; a bus is a serial line or TCP")
    if "port" in bus and not (isinstance(bus["port"], str) and bus["port"]):
        problems.append(f"{at}.port: expected the path of the bus's stable name")
    return problems


def _link(path: Path, target: str) -> Path:
    """``path`` -> the pty ``target``; a stale link is replaced, anything else is refused."""
    if path.exists() and not path.is_symlink():
        raise FleetConfigError(str(path), [f"port: {path} exists and is not a link this "
                                           "simulator made; choose another path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(target, path)
    return path


def _check_meter(at: str, protocol: Any, meter: Any, seen: set[str]) -> list[str]:
    if not isinstance(meter, dict):
        return [f"{at}: expected a table"]
    problems = []
    modbus = protocol == "modbus"
    key = "unit" if modbus else "address"
    if modbus and "address" in meter:
        problems.append(f"{at}.address: a Modbus meter takes unit = 1..247")
    if not modbus and meter.pop("unit", None) is not None:
        problems.append(f"{at}.unit: is for Modbus meters; a DL/T645 meter takes address")
    address = meter.pop(key, None)
    if isinstance(address, int) and not isinstance(address, bool):
        address = str(address)
    if not isinstance(address, str):
        problems.append(f"{at}.{key}: required")
    elif not modbus and not (len(address) == 12 and address.isdigit()):
        problems.append(f"{at}.address: {address!r} is not a 12-digit DL/T645 address")
    elif modbus and not (address.isdigit() and 1 <= int(address) <= 247):
        problems.append(f"{at}.unit: {address!r} is not a Modbus unit id 1..247")
    elif address in seen:
        problems.append(f"{at}.{key}: {address!r} is already on this bus")
    else:
        seen.add(address)
    meter["address"] = address  # SimMeter's name for both
    if modbus and not isinstance(meter.get("model"), str):
        problems.append(f"{at}.model: a Modbus meter needs a register map name")
    for key in meter:
        if key not in _METER_KEYS and key != "faults":
            problems.append(f"{at}.{key}: unknown setting")
    faults = meter.get("faults", {})
    if not isinstance(faults, dict):
        problems.append(f"{at}.faults: expected a table")
    else:
        problems.extend(f"{at}.faults.{k}: unknown fault" for k in faults if k not in _FAULT_KEYS)
    return problems


def _make_meter(protocol: str, spec: dict[str, Any]) -> SimMeter:
    settings = {k: v for k, v in spec.items() if k != "faults"}
    return SimMeter(protocol=protocol, faults=Faults(**spec.get("faults", {})), **settings)
