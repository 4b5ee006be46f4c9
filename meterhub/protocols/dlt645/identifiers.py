"""DL/T645 data identifiers (DI): what each one holds and how its bytes encode a value.

One table per version (2007: 4-byte DI3 DI2 DI1 DI0; 1997: 2-byte DI1 DI0), each entry with
the canonical quantity name (``meterhub.quantities``) where one exists, unit, bytes, decimals
and sign. Values are BCD, least significant byte first; a signed value carries its sign in bit 7
of the most significant byte (DL/T645-2007 appendix A). Energy identifiers of 2007 form a
family (DI2 quantity, DI1 tariff, DI0 settlement period), so :func:`lookup` also answers for
tariffs and past settlements that the fixed table does not list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from typing import Literal

from meterhub.protocols.dlt645.errors import BcdError, LengthError, UnknownIdentifierError
from meterhub.protocols.dlt645.frame import address_from_wire, address_to_wire

Version = Literal["2007", "1997"]
Kind = Literal["number", "date", "time", "address", "word"]
Scalar = float | int | str | date | time
DecodedValue = Scalar | tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class DataId:
    """One data identifier.

    ``size`` is the byte count of one value. A block identifier (``block=True``, e.g.
    0001FF00) answers several values of that size back to back; how many depends on the meter
    (its tariff count, its phases), so the count comes from the reply length. ``quantities``
    names the canonical quantity of each value (None where meterhub has no name for it).
    """

    di: int
    version: Version
    name: str
    unit: str
    size: int
    decimals: int = 0
    signed: bool = False
    kind: Kind = "number"
    quantities: tuple[str | None, ...] = (None,)
    block: bool = False
    writable: bool = False

    @property
    def quantity(self) -> str | None:
        return None if self.block else self.quantities[0]

    @property
    def di_bytes(self) -> bytes:
        """The identifier as sent: DI0 first."""
        width = 4 if self.version == "2007" else 2
        return self.di.to_bytes(width, "little")

    def label(self) -> str:
        return format_di(self.di, self.version)


def format_di(di: int, version: str = "2007") -> str:
    return f"{di:08X}" if version == "2007" else f"{di:04X}"


# ----------------------------------------------------------------------------- BCD


def bcd_to_int(raw: bytes) -> int:
    """BCD bytes, least significant first -> int."""
    value = 0
    for byte in reversed(raw):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise BcdError(f"byte {byte:02X}H is not BCD (in {raw.hex(' ').upper()})")
        value = value * 100 + hi * 10 + lo
    return value


def int_to_bcd(value: int, size: int) -> bytes:
    """Non-negative int -> ``size`` BCD bytes, least significant first."""
    if value < 0 or value >= 100**size:
        raise ValueError(f"{value} does not fit {size} BCD bytes")
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def _decode_number(raw: bytes, entry: DataId) -> float | int:
    if entry.signed:
        negative = bool(raw[-1] & 0x80)
        magnitude = bcd_to_int(raw[:-1] + bytes([raw[-1] & 0x7F]))
    else:
        negative, magnitude = False, bcd_to_int(raw)
    if entry.decimals == 0:
        return -magnitude if negative else magnitude
    number = magnitude / 10**entry.decimals
    return -number if negative else number


def _encode_number(value: float, entry: DataId) -> bytes:
    scaled = round(abs(value) * 10**entry.decimals)
    # a signed value's top digit shares its byte with the sign bit, so it stops at 7
    limit = 8 * 10 ** (2 * entry.size - 1) if entry.signed else 100**entry.size
    if scaled >= limit or (value < 0 and not entry.signed):
        raise ValueError(f"{value} does not fit {entry.label()} ({entry.name})")
    raw = bytearray(int_to_bcd(scaled, entry.size))
    if entry.signed and value < 0:
        raw[-1] |= 0x80
    return bytes(raw)


def _decode_one(raw: bytes, entry: DataId) -> Scalar:
    match entry.kind:
        case "number":
            return _decode_number(raw, entry)
        case "word":  # status words are plain bits, little-endian, not BCD
            return int.from_bytes(raw, "little")
        case "address":
            return address_from_wire(raw)
        case "date":  # YYMMDDWW, WW first on the wire; WW (0 = Sunday) is redundant
            _, day, month, year = (bcd_to_int(raw[i : i + 1]) for i in range(4))
            try:
                return date(2000 + year, month, day)
            except ValueError:
                raise BcdError(f"{raw.hex(' ').upper()} is not a date YYMMDDWW") from None
        case "time":  # hhmmss, ss first on the wire
            second, minute, hour = (bcd_to_int(raw[i : i + 1]) for i in range(3))
            try:
                return time(hour, minute, second)
            except ValueError:
                raise BcdError(f"{raw.hex(' ').upper()} is not a time hhmmss") from None
    raise AssertionError(entry.kind)


def _encode_one(value: Scalar, entry: DataId) -> bytes:
    match entry.kind:
        case "number":
            if not isinstance(value, int | float):
                raise TypeError(f"{entry.label()} wants a number, got {value!r}")
            return _encode_number(value, entry)
        case "word":
            if not isinstance(value, int):
                raise TypeError(f"{entry.label()} wants an int, got {value!r}")
            return value.to_bytes(entry.size, "little")
        case "address":
            if not isinstance(value, str):
                raise TypeError(f"{entry.label()} wants a 12-digit address, got {value!r}")
            return address_to_wire(value)
        case "date":
            if not isinstance(value, date):
                raise TypeError(f"{entry.label()} wants a date, got {value!r}")
            weekday = value.isoweekday() % 7  # DL/T645: 0 = Sunday
            return int_to_bcd(weekday, 1) + b"".join(
                int_to_bcd(part, 1) for part in (value.day, value.month, value.year % 100)
            )
        case "time":
            if not isinstance(value, time):
                raise TypeError(f"{entry.label()} wants a time, got {value!r}")
            return b"".join(int_to_bcd(p, 1) for p in (value.second, value.minute, value.hour))
    raise AssertionError(entry.kind)


def decode_value(entry: DataId, raw: bytes) -> DecodedValue:
    """Value bytes (after the DI) -> a number, date, time, address, or a tuple for a block."""
    if entry.block:
        if not raw or len(raw) % entry.size:
            raise LengthError(
                f"{entry.label()} ({entry.name}) wants a multiple of {entry.size} bytes, "
                f"got {len(raw)}"
            )
        return tuple(
            _decode_one(raw[i : i + entry.size], entry) for i in range(0, len(raw), entry.size)
        )
    if len(raw) != entry.size:
        raise LengthError(
            f"{entry.label()} ({entry.name}) has {entry.size} bytes, got {len(raw)}"
        )
    return _decode_one(raw, entry)


def encode_value(entry: DataId, value: DecodedValue) -> bytes:
    if entry.block:
        if not isinstance(value, tuple):
            raise TypeError(f"block {entry.label()} wants a tuple of values")
        return b"".join(_encode_one(v, entry) for v in value)
    if isinstance(value, tuple):
        raise TypeError(f"{entry.label()} is not a block")
    return _encode_one(value, entry)


# ----------------------------------------------------------------------------- tables

_PHASES = ("a", "b", "c")


def _energy_2007() -> list[DataId]:
    out = [
        DataId(0x00000000, "2007", "combined active energy, total", "kWh", 4, 2, True,
               quantities=("energy_combined_total",)),
        DataId(0x00010000, "2007", "forward active energy, total", "kWh", 4, 2,
               quantities=("energy_import_total",)),
        DataId(0x00020000, "2007", "reverse active energy, total", "kWh", 4, 2,
               quantities=("energy_export_total",)),
        DataId(0x0001FF00, "2007", "forward active energy, total and each tariff", "kWh", 4, 2,
               quantities=("energy_import_total", *(f"energy_import_t{t}" for t in range(1, 5))),
               block=True),
        DataId(0x0002FF00, "2007", "reverse active energy, total and each tariff", "kWh", 4, 2,
               quantities=("energy_export_total",), block=True),
    ]
    for t in range(1, 5):
        out.append(DataId(0x00010000 | t << 8, "2007", f"forward active energy, tariff {t}",
                          "kWh", 4, 2, quantities=(f"energy_import_t{t}",)))
        out.append(DataId(0x00020000 | t << 8, "2007", f"reverse active energy, tariff {t}",
                          "kWh", 4, 2))
    return out


def _instant_2007() -> list[DataId]:
    out: list[DataId] = []
    for i, ph in enumerate(_PHASES, start=1):
        out.append(DataId(0x02010000 | i << 8, "2007", f"voltage, phase {ph.upper()}", "V", 2, 1,
                          quantities=(f"voltage_{ph}",)))
        out.append(DataId(0x02020000 | i << 8, "2007", f"current, phase {ph.upper()}", "A", 3, 3,
                          True, quantities=(f"current_{ph}",)))
    for i, ph in enumerate(("total", *_PHASES)):
        suffix = "total" if ph == "total" else ph
        where = "total" if ph == "total" else f"phase {ph.upper()}"
        out.append(DataId(0x02030000 | i << 8, "2007", f"active power, {where}", "kW", 3, 4,
                          True, quantities=(f"power_active_{suffix}",)))
        out.append(DataId(0x02040000 | i << 8, "2007", f"reactive power, {where}", "kvar", 3, 4,
                          True, quantities=("power_reactive_total" if i == 0 else None,)))
        out.append(DataId(0x02060000 | i << 8, "2007", f"power factor, {where}", "", 2, 3,
                          True, quantities=(f"power_factor_{suffix}",)))
    out += [
        DataId(0x0201FF00, "2007", "voltage block A, B, C", "V", 2, 1,
               quantities=("voltage_a", "voltage_b", "voltage_c"), block=True),
        DataId(0x0202FF00, "2007", "current block A, B, C", "A", 3, 3, True,
               quantities=("current_a", "current_b", "current_c"), block=True),
        DataId(0x0203FF00, "2007", "active power block total, A, B, C", "kW", 3, 4, True,
               quantities=("power_active_total", "power_active_a", "power_active_b",
                           "power_active_c"), block=True),
        DataId(0x0206FF00, "2007", "power factor block total, A, B, C", "", 2, 3, True,
               quantities=("power_factor_total", "power_factor_a", "power_factor_b",
                           "power_factor_c"), block=True),
        DataId(0x02800002, "2007", "grid frequency", "Hz", 2, 2, quantities=("frequency",)),
    ]
    return out


def _parameters_2007() -> list[DataId]:
    return [
        DataId(0x04000101, "2007", "date (YYMMDDWW)", "", 4, kind="date", writable=True),
        DataId(0x04000102, "2007", "time (hhmmss)", "", 3, kind="time", writable=True),
        DataId(0x04000401, "2007", "meter address", "", 6, kind="address"),
        DataId(0x04000503, "2007", "status word 3 (relay)", "", 2, kind="word"),
        DataId(0x00900200, "2007", "remaining money", "CNY", 4, 2,
               quantities=("balance_remaining",)),
        DataId(0x00900201, "2007", "overdraft money", "CNY", 4, 2),
        DataId(0x04001001, "2007", "alarm amount 1", "CNY", 4, 2, writable=True),
        DataId(0x04001002, "2007", "alarm amount 2", "CNY", 4, 2, writable=True),
        DataId(0x04001003, "2007", "overdraft limit", "CNY", 4, 2, writable=True),
    ]


def _table_1997() -> list[DataId]:
    out = [
        DataId(0x9010, "1997", "forward active energy, total", "kWh", 4, 2,
               quantities=("energy_import_total",)),
        DataId(0x9020, "1997", "reverse active energy, total", "kWh", 4, 2,
               quantities=("energy_export_total",)),
        DataId(0x901F, "1997", "forward active energy, total and each tariff", "kWh", 4, 2,
               quantities=("energy_import_total", *(f"energy_import_t{t}" for t in range(1, 5))),
               block=True),
        DataId(0xB630, "1997", "active power, total", "kW", 3, 4,
               quantities=("power_active_total",)),
        DataId(0xB650, "1997", "power factor, total", "", 2, 3,
               quantities=("power_factor_total",)),
        DataId(0xC010, "1997", "date (YYMMDDWW)", "", 4, kind="date", writable=True),
        DataId(0xC011, "1997", "time (hhmmss)", "", 3, kind="time", writable=True),
        DataId(0xC032, "1997", "meter number", "", 6, kind="address"),
    ]
    for t in range(1, 5):
        out.append(DataId(0x9010 + t, "1997", f"forward active energy, tariff {t}", "kWh", 4, 2,
                          quantities=(f"energy_import_t{t}",)))
    for i, ph in enumerate(_PHASES, start=1):
        out.append(DataId(0xB610 + i, "1997", f"voltage, phase {ph.upper()}", "V", 2, 0,
                          quantities=(f"voltage_{ph}",)))
        out.append(DataId(0xB620 + i, "1997", f"current, phase {ph.upper()}", "A", 2, 2,
                          quantities=(f"current_{ph}",)))
        out.append(DataId(0xB630 + i, "1997", f"active power, phase {ph.upper()}", "kW", 3, 4,
                          quantities=(f"power_active_{ph}",)))
        out.append(DataId(0xB650 + i, "1997", f"power factor, phase {ph.upper()}", "", 2, 3,
                          quantities=(f"power_factor_{ph}",)))
    return out


TABLE_2007: dict[int, DataId] = {
    e.di: e for e in (*_energy_2007(), *_instant_2007(), *_parameters_2007())
}
TABLE_1997: dict[int, DataId] = {e.di: e for e in _table_1997()}
TABLES: dict[str, dict[int, DataId]] = {"2007": TABLE_2007, "1997": TABLE_1997}

# Named parameters the driver and the simulator both need.
DI_DATE = {"2007": 0x04000101, "1997": 0xC010}
DI_TIME = {"2007": 0x04000102, "1997": 0xC011}
DI_ADDRESS = {"2007": 0x04000401, "1997": 0xC032}
DI_STATUS_WORD_3 = 0x04000503
STATUS3_RELAY_OPEN = 1 << 4
STATUS3_RELAY_COMMAND = 1 << 6
STATUS3_PRE_TRIP_ALARM = 1 << 7
STATUS3_KEEP_POWER = 1 << 12

_ENERGY_NAMES = {
    0x00: "combined active energy",
    0x01: "forward active energy",
    0x02: "reverse active energy",
    0x03: "combined reactive energy 1",
    0x04: "combined reactive energy 2",
}


def _energy_family(di: int) -> DataId | None:
    """DL/T645-2007 energy DIs: 00 DI2(quantity) DI1(tariff 00..3F or FF) DI0(settlement)."""
    di3, di2, di1, di0 = di >> 24, di >> 16 & 0xFF, di >> 8 & 0xFF, di & 0xFF
    if di3 != 0 or di2 not in _ENERGY_NAMES or di0 > 0x0C or not (di1 <= 0x3F or di1 == 0xFF):
        return None
    signed = di2 in (0x00, 0x03, 0x04)
    unit = "kvarh" if di2 in (0x03, 0x04) else "kWh"
    tariff = "total and each tariff" if di1 == 0xFF else ("total" if di1 == 0 else
                                                           f"tariff {di1}")
    when = "current" if di0 == 0 else f"settlement {di0} back"
    return DataId(di, "2007", f"{_ENERGY_NAMES[di2]}, {tariff}, {when}", unit, 4, 2, signed,
                  block=di1 == 0xFF)


def _table(version: str) -> dict[int, DataId]:
    try:
        return TABLES[version]
    except KeyError:
        raise ValueError(f"DL/T645 version {version!r} is not 2007 or 1997") from None


def lookup(di: int, version: str = "2007") -> DataId:
    """The table entry for ``di``; raises :class:`UnknownIdentifierError` for anything else."""
    entry = _table(version).get(di)
    if entry is None and version == "2007":
        entry = _energy_family(di)
    if entry is None:
        raise UnknownIdentifierError(
            f"data identifier {format_di(di, version)} is not in the DL/T645-{version} table"
        )
    return entry


def for_quantity(quantity: str, version: str = "2007") -> DataId:
    """The single-value identifier that reads a canonical quantity."""
    for entry in _table(version).values():
        if not entry.block and entry.quantity == quantity:
            return entry
    raise UnknownIdentifierError(
        f"quantity {quantity!r} has no DL/T645-{version} data identifier"
    )


def blocks(version: str = "2007") -> list[DataId]:
    """Block identifiers that read several canonical quantities at once."""
    return [e for e in _table(version).values() if e.block and any(e.quantities)]


def quantities_for(version: str = "2007") -> list[str]:
    """Canonical quantities that this version can read."""
    return [e.quantity for e in _table(version).values() if not e.block and e.quantity]
