"""Modbus register maps: which register holds which canonical quantity, as data.

A map is a TOML file, one per meter model (``maps/*.toml`` ships with meterhub; an installer
adds models by dropping files into an extra folder named in the gateway config, no Python).
The model name is the file name without ``.toml``. An extra map with the name of a built-in
one replaces it, so a site can correct a map without waiting for a release.

This module is pure: loading and validating maps (every problem at once, each naming the file,
the key and why), planning reads (adjacent registers grouped into as few requests as the meter
allows) and converting register words to canonical values and back. The gateway driver and the
simulator both use it, so a map is read one way only.

Value conversion: ``canonical = raw * scale * factor(unit -> canonical unit)``. ``scale`` is the
register's resolution as the meter's manual gives it (DTSU666 voltage: 0.1 V), ``unit`` the
manual's unit (SDM power: W); the unit factor comes from a fixed table here, so a map cannot
claim "W" and be off by a thousand. Arithmetic is decimal, so 2205 x 0.1 reads 220.5, not
220.50000000000003, and a float32 register reads as the shortest decimal that round-trips.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, cast

from meterhub.quantities import QUANTITIES

Function = Literal["input", "holding"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]
RelayFunction = Literal["coil", "holding"]

FUNCTIONS: tuple[Function, ...] = ("input", "holding")
DATA_TYPES: tuple[DataType, ...] = ("int16", "uint16", "int32", "uint32", "float32")
WORD_ORDERS: tuple[WordOrder, ...] = ("big", "little")
RELAY_FUNCTIONS: tuple[RelayFunction, ...] = ("coil", "holding")

#: Modbus function code that reads each register function.
READ_CODES: dict[Function, int] = {"holding": 3, "input": 4}
#: Largest register count one FC03/FC04 request may carry (Modbus Application Protocol V1.1b3,
#: 6.3/6.4: 1 to 125), so a 250-byte PDU fits an RTU frame.
PROTOCOL_MAX_REGISTERS = 125

BUILTIN_MAPS_DIR = Path(__file__).parent / "maps"

_WORDS: dict[DataType, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_INT_RANGE: dict[DataType, tuple[int, int]] = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
}

# Units a map may give, per canonical unit, with the factor to the canonical one.
UNIT_FACTORS: dict[str, dict[str, Decimal]] = {
    "kWh": {"kWh": Decimal(1), "Wh": Decimal("0.001"), "MWh": Decimal(1000)},
    "V": {"V": Decimal(1), "kV": Decimal(1000)},
    "A": {"A": Decimal(1), "mA": Decimal("0.001")},
    "kW": {"kW": Decimal(1), "W": Decimal("0.001")},
    "kvar": {"kvar": Decimal(1), "var": Decimal("0.001")},
    "": {"": Decimal(1), "%": Decimal("0.01")},
    "Hz": {"Hz": Decimal(1)},
    "CNY": {"CNY": Decimal(1)},
}


class RegisterMapError(ValueError):
    """A map file that cannot be used; ``problems`` lists each as ``file: key: why``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RegisterValueError(ValueError):
    """Register words that do not make a usable value (NaN, infinity) or a value that does not
    fit its register; the message names the quantity and the register."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Register:
    """One quantity's register(s). ``address`` is the zero-based protocol address."""

    quantity: str
    address: int
    function: Function
    type: DataType
    word_order: WordOrder
    scale: Decimal
    unit: str

    @property
    def words(self) -> int:
        return _WORDS[self.type]

    @property
    def end(self) -> int:
        """Last register address this value occupies."""
        return self.address + self.words - 1

    @property
    def factor(self) -> Decimal:
        """raw -> canonical unit: the register's resolution times the unit conversion."""
        return self.scale * UNIT_FACTORS[QUANTITIES[self.quantity].unit][self.unit]

    def describe(self) -> str:
        return f"{self.quantity} ({self.function} register 0x{self.address:04X}, {self.type})"

    def decode(self, words: Sequence[int]) -> float:
        """Register words (as read, in wire order) -> value in the canonical unit."""
        if len(words) != self.words:
            raise RegisterValueError(f"{self.describe()}: got {len(words)} words")
        ordered = list(words) if self.word_order == "big" else list(reversed(words))
        raw_bytes = b"".join(w.to_bytes(2, "big") for w in ordered)
        if self.type == "float32":
            number = struct.unpack(">f", raw_bytes)[0]
            if not math.isfinite(number):
                raise RegisterValueError(f"{self.describe()}: meter sent {number}")
            raw = Decimal(_shortest_float32(number))
        else:
            raw = Decimal(int.from_bytes(raw_bytes, "big", signed=not self.type.startswith("u")))
        value = float(raw * self.factor)
        return value + 0.0  # normalise -0.0, which a person reading a table would not expect

    def encode(self, value: float) -> list[int]:
        """Canonical value -> register words in wire order (the meter side of :meth:`decode`)."""
        if not math.isfinite(value):
            raise RegisterValueError(f"{self.describe()}: cannot encode {value}")
        raw = Decimal(repr(float(value))) / self.factor
        if self.type == "float32":
            try:
                raw_bytes = struct.pack(">f", float(raw))
            except OverflowError:
                raise RegisterValueError(
                    f"{self.describe()}: {value} does not fit a float32"
                ) from None
        else:
            number = int(raw.to_integral_value())  # half-even, like the meter's own rounding
            low, high = _INT_RANGE[self.type]
            if not low <= number <= high:
                raise RegisterValueError(
                    f"{self.describe()}: {value} is {number} counts, outside {low}..{high}"
                )
            raw_bytes = number.to_bytes(
                2 * self.words, "big", signed=not self.type.startswith("u")
            )
        words = [int.from_bytes(raw_bytes[i : i + 2], "big") for i in range(0, len(raw_bytes), 2)]
        return words if self.word_order == "big" else list(reversed(words))


@dataclass(frozen=True, slots=True)
class Relay:
    """The meter's load switch: a coil (FC01/FC05) or a holding register (FC03/FC06).
    ``close_permitted_value`` exists only for registers of meters that support "close
    permitted" (the customer presses the meter's button to reconnect)."""

    function: RelayFunction
    address: int
    open_value: int
    closed_value: int
    close_permitted_value: int | None = None

    def describe(self) -> str:
        return f"relay {self.function} 0x{self.address:04X}"

    def state(self, value: int) -> Literal["open", "closed"] | None:
        """Relay state for a value read back; None when the value is neither."""
        if value == self.open_value:
            return "open"
        if value == self.closed_value:
            return "closed"
        return None


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """One meter model. ``max_registers``/``max_gap`` are the defaults for :func:`plan_reads`."""

    name: str
    source: str
    description: str
    phases: int
    max_registers: int
    max_gap: int
    registers: Mapping[str, Register]
    relay: Relay | None = None
    serial_defaults: Mapping[str, Any] | None = None

    def register(self, quantity: str) -> Register:
        try:
            return self.registers[quantity]
        except KeyError:
            raise KeyError(
                f"model {self.name!r} has no register for {quantity!r} "
                f"(it has {', '.join(self.registers)})"
            ) from None

    @property
    def quantities(self) -> tuple[str, ...]:
        return tuple(self.registers)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One FC03/FC04 request covering one or more registers (and the unused gaps between)."""

    function: Function
    address: int
    count: int
    registers: tuple[Register, ...]

    @property
    def function_code(self) -> int:
        return READ_CODES[self.function]

    def decode(self, words: Sequence[int]) -> dict[str, float]:
        """The request's answer (``count`` words) -> canonical values of its registers."""
        if len(words) != self.count:
            raise RegisterValueError(
                f"read of {self.count} {self.function} registers at 0x{self.address:04X} "
                f"got {len(words)} words"
            )
        return {
            r.quantity: r.decode(words[r.address - self.address : r.end - self.address + 1])
            for r in self.registers
        }


# --------------------------------------------------------------------------- planning


def plan_reads(
    regmap: RegisterMap,
    quantities: Iterable[str],
    *,
    max_registers: int | None = None,
    max_gap: int | None = None,
) -> list[ReadRequest]:
    """Group the registers of ``quantities`` into as few read requests as the meter allows.

    A request spans at most ``max_registers`` registers and skips at most ``max_gap`` unused
    registers between two wanted ones (reading a few unused registers is cheaper on RS-485 than
    a second request: 8 bytes, a turnaround and 3.5 silent characters). Greedy from the lowest
    address is optimal here: each request starts at the first register not yet covered and
    takes every following one it can. KeyError names a quantity the model lacks.
    """
    limit = regmap.max_registers if max_registers is None else max_registers
    gap = regmap.max_gap if max_gap is None else max_gap
    if not 1 <= limit <= PROTOCOL_MAX_REGISTERS:
        raise ValueError(f"max_registers {limit} must be 1..{PROTOCOL_MAX_REGISTERS}")
    if gap < 0:
        raise ValueError(f"max_gap {gap} must be >= 0")
    wanted = {q: regmap.register(q) for q in dict.fromkeys(quantities)}
    plan: list[ReadRequest] = []
    for function in FUNCTIONS:
        regs = sorted(
            (r for r in wanted.values() if r.function == function), key=lambda r: (r.address, r.end)
        )
        group: list[Register] = []
        start = end = 0
        for reg in regs:
            if group and reg.address - end - 1 <= gap and max(end, reg.end) - start + 1 <= limit:
                group.append(reg)
                end = max(end, reg.end)
                continue
            if group:
                plan.append(ReadRequest(function, start, end - start + 1, tuple(group)))
            group, start, end = [reg], reg.address, reg.end
        if group:
            plan.append(ReadRequest(function, start, end - start + 1, tuple(group)))
    return plan


# --------------------------------------------------------------------------- loading


def load_map(path: Path | str) -> RegisterMap:
    """Load and check one map file; RegisterMapError lists every problem found."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise RegisterMapError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError as exc:
        raise RegisterMapError([f"{path}: not UTF-8 text ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError([f"{path}: not valid TOML ({exc})"]) from None
    except (ValueError, RecursionError) as exc:  # tomllib: an integer past 4300 digits, or
        # arrays nested deeper than the stack; neither is a map anyone meant to write
        raise RegisterMapError([f"{path}: not usable TOML ({type(exc).__name__}: {exc})"]) \
            from None
    return parse_map(data, name=path.stem, source=str(path))


def load_maps(extra_dir: Path | str | None = None) -> dict[str, RegisterMap]:
    """Every built-in map plus those in ``extra_dir`` (which win on equal names).

    Problems of all files are reported together, so an installer fixes them in one go.
    """
    files = {p.stem: p for p in sorted(BUILTIN_MAPS_DIR.glob("*.toml"))}
    problems: list[str] = []
    if extra_dir is not None:
        extra = Path(extra_dir)
        if not extra.is_dir():
            raise RegisterMapError([f"{extra}: register map folder does not exist"])
        files.update({p.stem: p for p in sorted(extra.glob("*.toml"))})
    maps: dict[str, RegisterMap] = {}
    for name, path in sorted(files.items()):
        try:
            maps[name] = load_map(path)
        except RegisterMapError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RegisterMapError(problems)
    return maps


def available_models(extra_dir: Path | str | None = None) -> list[str]:
    return sorted(load_maps(extra_dir))


_TOP_KEYS = {"meter", "registers", "relay"}
_METER_KEYS = {
    "description", "phases", "word_order", "max_registers", "max_gap", "serial", "source",
}
_REGISTER_KEYS = {"quantity", "address", "function", "type", "word_order", "scale", "unit"}
_RELAY_KEYS = {"function", "address", "open", "closed", "close_permitted"}


def parse_map(data: Mapping[str, Any], *, name: str, source: str = "<map>") -> RegisterMap:
    """Check a map already parsed from TOML; see :func:`load_map`."""
    problems: list[str] = []

    def bad(key: str, why: str) -> None:
        problems.append(f"{source}: {key}: {why}")

    for key in data:
        if key not in _TOP_KEYS:
            bad(key, f"unknown section (expected {', '.join(sorted(_TOP_KEYS))})")
    meter = data.get("meter")
    if not isinstance(meter, dict):
        bad("meter", "a [meter] table is required")
        meter = {}
    for key in meter:
        if key not in _METER_KEYS:
            bad(f"meter.{key}", f"unknown key (expected {', '.join(sorted(_METER_KEYS))})")
    description = meter.get("description", "")
    if not isinstance(description, str):
        bad("meter.description", "expected text")
        description = ""
    phases = meter.get("phases", 1)
    if phases not in (1, 3) or isinstance(phases, bool):
        bad("meter.phases", f"{phases!r} is not 1 or 3")
    default_order = meter.get("word_order", "big")
    if default_order not in WORD_ORDERS:
        bad("meter.word_order", f"{default_order!r} is not one of {', '.join(WORD_ORDERS)}")
        default_order = "big"
    max_registers = _int_in(
        meter, "max_registers", 1, PROTOCOL_MAX_REGISTERS, "meter.max_registers", bad, default=64
    )
    max_gap = _int_in(meter, "max_gap", 0, PROTOCOL_MAX_REGISTERS, "meter.max_gap", bad, default=0)
    serial = meter.get("serial")
    if serial is not None and not isinstance(serial, dict):
        bad("meter.serial", "expected a table such as { baud = 9600, parity = \"N\" }")
        serial = None

    registers: dict[str, Register] = {}
    entries = data.get("registers")
    if not isinstance(entries, list) or not entries:
        bad("registers", "at least one [[registers]] entry is required")
        entries = []
    for i, entry in enumerate(entries):
        reg = _parse_register(entry, f"registers[{i}]", default_order, bad)
        if reg is None:
            continue
        if reg.quantity in registers:
            bad(f"registers[{i}].quantity", f"{reg.quantity!r} is mapped twice")
            continue
        if reg.end - reg.address + 1 > max_registers:
            bad(f"registers[{i}]", f"a {reg.type} does not fit max_registers {max_registers}")
        registers[reg.quantity] = reg
    _check_overlaps(list(registers.values()), bad)

    relay = None
    if "relay" in data:
        relay = _parse_relay(data["relay"], bad)
    if problems:
        raise RegisterMapError(problems)
    return RegisterMap(
        name=name,
        source=source,
        description=description,
        phases=phases,
        max_registers=max_registers,
        max_gap=max_gap,
        registers=registers,
        relay=relay,
        serial_defaults=serial,
    )


def _int_in(
    table: Mapping[str, Any],
    key: str,
    low: int,
    high: int,
    where: str,
    bad: Any,
    default: int | None = None,
) -> int:
    value = table.get(key, default)
    if value is None:
        bad(where, "required")
        return low
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bad(where, f"{value!r} is not an integer in {low}..{high}")
        return low
    return value


def _parse_register(entry: Any, at: str, default_order: str, bad: Any) -> Register | None:
    if not isinstance(entry, dict):
        bad(at, "expected a table")
        return None
    ok = True

    def fail(key: str, why: str) -> None:
        nonlocal ok
        ok = False
        bad(f"{at}.{key}" if key else at, why)

    for key in entry:
        if key not in _REGISTER_KEYS:
            fail(key, f"unknown key (expected {', '.join(sorted(_REGISTER_KEYS))})")
    quantity = entry.get("quantity")
    if not isinstance(quantity, str):
        fail("quantity", "required: a canonical quantity name (meterhub.quantities)")
    elif quantity not in QUANTITIES:
        fail("quantity", f"{quantity!r} is not a canonical quantity")
    function = entry.get("function")
    if function not in FUNCTIONS:
        fail("function", f"{function!r} is not one of {', '.join(FUNCTIONS)}")
    dtype = entry.get("type")
    if dtype not in DATA_TYPES:
        fail("type", f"{dtype!r} is not one of {', '.join(DATA_TYPES)}")
    order = entry.get("word_order", default_order)
    if order not in WORD_ORDERS:
        fail("word_order", f"{order!r} is not one of {', '.join(WORD_ORDERS)}")
    address = entry.get("address")
    if isinstance(address, bool) or not isinstance(address, int):
        fail("address", f"required: a register address 0..65535, got {address!r}")
    elif dtype in _WORDS and not 0 <= address <= 0x10000 - _WORDS[dtype]:
        fail("address", f"{address:#06x} is outside 0x0000..0xFFFF for a {dtype}")
    scale_raw = entry.get("scale", 1)
    scale = Decimal(0)
    if isinstance(scale_raw, bool) or not isinstance(scale_raw, int | float):
        fail("scale", f"expected a number, got {scale_raw!r}")
    elif not math.isfinite(scale_raw) or scale_raw == 0:
        fail("scale", f"{scale_raw!r} must be finite and non-zero")
    else:
        scale = Decimal(repr(scale_raw))
    unit = entry.get("unit")
    if isinstance(quantity, str) and quantity in QUANTITIES:
        canonical = QUANTITIES[quantity].unit
        allowed = UNIT_FACTORS[canonical]
        if unit is None:
            fail("unit", f"required: the meter's unit for {quantity} (one of {_units(allowed)})")
        elif unit not in allowed:
            fail("unit", f"{unit!r} does not convert to {canonical or 'no unit'} "
                 f"(use one of {_units(allowed)})")
    if not ok:
        return None
    return Register(
        quantity=cast(str, quantity),
        address=cast(int, address),
        function=cast(Function, function),
        type=cast(DataType, dtype),
        word_order=cast(WordOrder, order),
        scale=scale,
        unit=cast(str, unit),
    )


def _units(allowed: Mapping[str, Decimal]) -> str:
    return ", ".join(repr(u) for u in allowed)


def _check_overlaps(regs: list[Register], bad: Any) -> None:
    """Two quantities may share a register only if they read it the same way; a partial
    overlap is a typo in an address."""
    for function in FUNCTIONS:
        ordered = sorted((r for r in regs if r.function == function), key=lambda r: r.address)
        widest: Register | None = None  # the earlier register reaching furthest
        for reg in ordered:
            if widest is not None and reg.address <= widest.end:
                same = (widest.address, widest.type, widest.word_order) == (
                    reg.address, reg.type, reg.word_order
                )
                if not same:
                    bad(
                        f"registers ({reg.quantity})",
                        f"{function} register 0x{reg.address:04X} overlaps {widest.describe()}",
                    )
            if widest is None or reg.end > widest.end:
                widest = reg


def _parse_relay(table: Any, bad: Any) -> Relay | None:
    if not isinstance(table, dict):
        bad("relay", "expected a [relay] table")
        return None
    count = 0

    def fail(key: str, why: str) -> None:
        nonlocal count
        count += 1
        bad(f"relay.{key}", why)

    for key in table:
        if key not in _RELAY_KEYS:
            fail(key, f"unknown key (expected {', '.join(sorted(_RELAY_KEYS))})")
    function = table.get("function")
    if function not in RELAY_FUNCTIONS:
        fail("function", f"{function!r} is not one of {', '.join(RELAY_FUNCTIONS)}")
        return None
    address = table.get("address")
    if isinstance(address, bool) or not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        fail("address", f"{address!r} is not an address 0..65535")
    high = 1 if function == "coil" else 0xFFFF
    values: dict[str, int | None] = {}
    for key in ("open", "closed", "close_permitted"):
        value = table.get(key)
        if value is None and key == "close_permitted":
            values[key] = None
            continue
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or not 0 <= value <= high:
            fail(key, f"{value!r} is not a {function} value 0..{high}")
            continue
        values[key] = value
    if function == "coil" and values.get("close_permitted") is not None:
        fail("close_permitted", "a coil has only two states; use a holding register")
    given = [v for v in values.values() if v is not None]
    if len(given) != len(set(given)):
        fail("open", "open, closed and close_permitted must be different values")
    if count:
        return None
    return Relay(
        function=cast(RelayFunction, function),
        address=cast(int, address),
        open_value=cast(int, values["open"]),
        closed_value=cast(int, values["closed"]),
        close_permitted_value=values["close_permitted"],
    )


def _shortest_float32(number: float) -> str:
    """Shortest decimal text that rounds back to the same float32 (what the meter meant)."""
    packed = struct.pack(">f", number)
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        if struct.pack(">f", float(text)) == packed:
            return text
    return repr(number)  # pragma: no cover - 9 significant digits always round-trip
