"""A fleet of simulated meters on simulated buses, described as data (TOML or a dict).

```toml
[[bus]]
name = "rs485-1"
protocol = "dlt645-2007"      # dlt645-2007 | dlt645-1997 | modbus-rtu | modbus-tcp
baud = 2400
parity = "E"
turnaround_ms = 30
password = "483921"           # DL/T645 relay password of this bus's meters (default 123456,
                              # the factory setting; a site changes it, and so should a test)

[[bus.meter]]
address = "000000000001"      # 12 BCD digits for DL/T645, unit id for Modbus
energy_kwh = 1234.5
base_load_kw = 1.5
faults = { no_reply = false, bad_checksum = false, slow_reply_s = 0.0 }
```

Errors name the key path and why, like the gateway's config. A fleet is a context manager:
entering it opens every pseudo-terminal / TCP port, leaving it closes them.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from firmware_sim._running import StartStop
from firmware_sim.bus import SimBus
from firmware_sim.meter import Faults, SimMeter

PROTOCOLS = ("dlt645-2007", "dlt645-1997", "modbus-rtu", "modbus-tcp")
_METER_KEYS = {
    f.name for f in fields(SimMeter) if f.name not in ("faults", "now", "protocol", "profile")
}
_FAULT_KEYS = {f.name for f in fields(Faults)}
FACTORY_PASSWORD = "123456"  # what DL/T645 meters leave the factory with


class FleetConfigError(ValueError):
    """Every problem in a fleet description, one per line with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}:\n  " + "\n  ".join(problems))


class Fleet(StartStop):
    def __init__(self, buses: list[dict[str, Any]]) -> None:
        self._specs = buses
        self._meters: dict[str, SimMeter] = {}
        self._by_bus: dict[str, list[SimMeter]] = {}
        for bus in buses:
            meters = [_make_meter(bus["protocol"], m) for m in bus["meter"]]
            self._by_bus[bus["name"]] = meters
            for meter in meters:
                self._meters[meter.address] = meter
        self._running: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<fleet>") -> Fleet:
        problems: list[str] = []
        buses = data.get("bus")
        if not isinstance(buses, list) or not buses:
            raise FleetConfigError(source, ["bus: at least one [[bus]] table is required"])
        names: set[str] = set()
        for i, bus in enumerate(buses):
            at = f"bus[{i}]"
            if not isinstance(bus, dict):
                problems.append(f"{at}: expected a table")
                continue
            name = bus.get("name", f"bus{i + 1}")
            bus["name"] = name
            if name in names:
                problems.append(f"{at}.name: {name!r} is used by another bus")
            names.add(name)
            if bus.get("protocol") not in PROTOCOLS:
                problems.append(
                    f"{at}.protocol: {bus.get('protocol')!r} is not one of {', '.join(PROTOCOLS)}"
                )
            baud = bus.get("baud", 9600)
            if not isinstance(baud, int) or baud not in (1200, 2400, 4800, 9600, 19200, 38400,
                                                          57600, 115200):
                problems.append(f"{at}.baud: {baud!r} is not a standard baud rate")
            if bus.get("parity", "E") not in ("N", "E", "O"):
                problems.append(f"{at}.parity: {bus.get('parity')!r} is not N, E or O")
            password = bus.get("password", FACTORY_PASSWORD)
            if not (isinstance(password, str) and len(password) == 6 and password.isdigit()):
                problems.append(f"{at}.password: expected 6 digits as text")
            meters = bus.get("meter")
            if not isinstance(meters, list) or not meters:
                problems.append(f"{at}.meter: at least one [[bus.meter]] is required")
                continue
            seen: set[str] = set()
            for j, meter in enumerate(meters):
                problems.extend(_check_meter(f"{at}.meter[{j}]", bus.get("protocol"), meter, seen))
        if problems:
            raise FleetConfigError(source, problems)
        return cls(buses)

    @classmethod
    def load(cls, path: Path) -> Fleet:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise FleetConfigError(str(path), [f"not valid TOML: {exc}"]) from None
        return cls.from_dict(data, source=str(path))

    # ------------------------------------------------------------------ running

    def start(self) -> Fleet:
        from firmware_sim.dlt645 import Dlt645BusProtocol
        from firmware_sim.modbus import ModbusRtuBusProtocol
        from firmware_sim.modbus_tcp import ModbusTcpServer

        try:
            for spec in self._specs:
                meters = self._by_bus[spec["name"]]
                protocol = spec["protocol"]
                if protocol == "modbus-tcp":
                    server = ModbusTcpServer(meters, host=spec.get("host", "127.0.0.1"),
                                             port=spec.get("port", 0))
                    server.start()
                    self._running[spec["name"]] = server
                    continue
                wire: Any = (
                    ModbusRtuBusProtocol()
                    if protocol == "modbus-rtu"
                    # the version is each meter's own
                    else Dlt645BusProtocol(password=spec.get("password", FACTORY_PASSWORD))
                )
                bus = SimBus(
                    wire,
                    meters,
                    baud=spec.get("baud", 9600),
                    parity=spec.get("parity", "N" if protocol == "modbus-rtu" else "E"),
                    turnaround_s=spec.get("turnaround_ms", 20) / 1000.0,
                )
                self._running[spec["name"]] = bus.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for running in self._running.values():
            running.stop()
        self._running.clear()

    # ------------------------------------------------------------------ access

    def port(self, bus: str) -> str:
        """The pseudo-terminal path (serial buses) or ``host:port`` (Modbus TCP) of a bus."""
        running = self._running[bus]
        if isinstance(running, SimBus):
            return running.port
        return f"{running.host}:{running.port}"

    def meter(self, address: str) -> SimMeter:
        return self._meters[address]

    def meters(self, bus: str | None = None) -> list[SimMeter]:
        return list(self._meters.values()) if bus is None else list(self._by_bus[bus])

    def describe(self) -> list[tuple[str, str, str, int]]:
        """(bus, protocol, port, meter count) for every running bus."""
        return [
            (spec["name"], spec["protocol"], self.port(spec["name"]), len(spec["meter"]))
            for spec in self._specs
        ]


def _check_meter(at: str, protocol: Any, meter: Any, seen: set[str]) -> list[str]:
    if not isinstance(meter, dict):
        return [f"{at}: expected a table"]
    problems = []
    address = meter.get("address")
    if isinstance(address, int):
        address = meter["address"] = str(address)
    if not isinstance(address, str):
        problems.append(f"{at}.address: required")
    elif str(protocol).startswith("dlt645") and not (len(address) == 12 and address.isdigit()):
        problems.append(f"{at}.address: {address!r} is not a 12-digit DL/T645 address")
    elif str(protocol).startswith("modbus") and not (
        address.isdigit() and 1 <= int(address) <= 247
    ):
        problems.append(f"{at}.address: {address!r} is not a Modbus unit id 1..247")
    elif address in seen:
        problems.append(f"{at}.address: {address!r} is already on this bus")
    else:
        seen.add(address)
    if str(protocol).startswith("modbus") and not isinstance(meter.get("model"), str):
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
