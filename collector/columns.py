"""Readings as columns, and those columns as PostgreSQL binary COPY: the layout-v2 hot path.

A readings message is decoded once into a block of columns (meter, time, one float per typed
quantity with NaN for "absent"); a whole batch of messages becomes one binary COPY stream of
`readings` rows built by numpy, with no Python object per value. Rows are grouped by which
columns they carry, since a NULL field has no bytes: each group is one fixed-width numpy
record array. Energy registers become exact integer counts of the meter's resolution here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

# The typed columns of `readings` after (ts, batch), in table order, with their quantities.
# The first two are energy registers (bigint counts); the rest are float4.
TYPED: tuple[tuple[str, str], ...] = (
    ("energy_import", "energy_import_total"),
    ("energy_export", "energy_export_total"),
    ("voltage_a", "voltage_a"),
    ("voltage_b", "voltage_b"),
    ("voltage_c", "voltage_c"),
    ("current_a", "current_a"),
    ("current_b", "current_b"),
    ("current_c", "current_c"),
    ("power_active", "power_active_total"),
    ("power_factor", "power_factor_total"),
    ("frequency", "frequency"),
)
SLOT: dict[str, int] = {quantity: i for i, (_, quantity) in enumerate(TYPED)}
WIDTH = len(TYPED)
ENERGY_SLOTS = 2  # slots 0 and 1 hold registers
COPY_COLUMNS = "ts, batch, energy_import, energy_export, meter, " + ", ".join(
    column for column, _ in TYPED[ENERGY_SLOTS:]
)

# `quantity_codes` of migration 0008: the quantities stored in `reading_extras`.
EXTRA_CODES: dict[str, int] = {
    "energy_import_t1": 1,
    "energy_import_t2": 2,
    "energy_import_t3": 3,
    "energy_import_t4": 4,
    "energy_combined_total": 5,
    "power_active_a": 6,
    "power_active_b": 7,
    "power_active_c": 8,
    "power_reactive_total": 9,
    "power_factor_a": 10,
    "power_factor_b": 11,
    "power_factor_c": 12,
    "balance_remaining": 13,
}
CUMULATIVE_EXTRAS = frozenset({1, 2, 3, 4, 5})

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NAN_ROW = [float("nan")] * WIDTH
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)


def pg_micros(ts: datetime) -> int:
    """A time as PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC."""
    delta = ts - PG_EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """:func:`pg_micros` undone."""
    return PG_EPOCH + timedelta(microseconds=micros)


@dataclass(slots=True)
class Block:
    """One message's good readings: row i is (meters[i], micros[i]) with values[i]."""

    meters: list[str]
    micros: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]  # (rows, WIDTH), NaN = absent
    extras: list[tuple[int, int, float]]  # (row, code, value)
    origin: int = 0  # index of the row's message in the batch (BatchSeen)


@dataclass(slots=True)
class Columns:
    """Good readings as columns, a block per message, concatenated once for the COPY.

    The per-reading path (:meth:`add`, schema-1 messages and messages with a bad reading)
    gathers rows until :meth:`seal` makes them a block; the columnar path adds whole blocks
    (:meth:`add_block`) with no Python object per value."""

    blocks: list[Block] = field(default_factory=list)
    count: int = 0  # values present (typed and extra)
    _meters: list[str] = field(default_factory=list)
    _micros: list[int] = field(default_factory=list)
    _values: list[float] = field(default_factory=list)
    _extras: list[tuple[int, int, float]] = field(default_factory=list)
    _spans: tuple[tuple[str, ...], list[Span]] | None = None  # spans(), with its gateway_of

    def add(self, meter: str, micros: int, values: list[tuple[str, float, str]]) -> None:
        self._spans = None
        row = _NAN_ROW.copy()
        n = len(self._meters)
        for name, number, _unit in values:
            slot = SLOT.get(name)
            if slot is not None:
                row[slot] = number
            else:
                self._extras.append((n, EXTRA_CODES[name], number))
        self._meters.append(meter)
        self._micros.append(micros)
        self._values.extend(row)
        self.count += len(values)

    def seal(self) -> None:
        """The rows added one by one become a block."""
        if self._meters:
            self.blocks.append(Block(
                self._meters, np.array(self._micros, dtype=np.int64),
                np.array(self._values, dtype=np.float64).reshape(-1, WIDTH), self._extras))
            self._meters, self._micros, self._values, self._extras = [], [], [], []

    def add_block(self, block: Block, count: int) -> None:
        self._spans = None
        self.seal()
        self.blocks.append(block)
        self.count += count

    def extend(self, other: Columns, origin: int) -> None:
        """Append another message's blocks; their origin becomes `origin`."""
        other.seal()
        self._spans = None
        for block in other.blocks:
            block.origin = origin
            self.blocks.append(block)
        self.count += other.count

    def keep(self, mask: npt.NDArray[np.bool_]) -> Columns:
        """The rows whose mask is true (ownership refusals take the others out)."""
        self.seal()
        out = Columns()
        first = 0
        for block in self.blocks:
            n = len(block.meters)
            ok = mask[first : first + n]
            first += n
            if not ok.any():
                continue
            new_row = np.cumsum(ok) - 1
            out.blocks.append(Block(
                [m for m, keep in zip(block.meters, ok.tolist(), strict=True) if keep],
                block.micros[ok], block.values[ok],
                [(int(new_row[r]), c, v) for r, c, v in block.extras if ok[r]], block.origin))
            out.count += int(np.count_nonzero(~np.isnan(block.values[ok])))
            out.count += sum(1 for r, _c, _v in block.extras if ok[r])
        return out

    @property
    def meters(self) -> list[str]:
        self.seal()
        return [m for block in self.blocks for m in block.meters]

    @property
    def micros(self) -> npt.NDArray[np.int64]:
        self.seal()
        return _cat([b.micros for b in self.blocks], np.int64)

    @property
    def values(self) -> npt.NDArray[np.float64]:
        self.seal()
        if not self.blocks:
            return np.empty((0, WIDTH))
        return np.concatenate([b.values for b in self.blocks])

    @property
    def origins(self) -> npt.NDArray[np.int64]:
        self.seal()
        return _cat([np.full(len(b.meters), b.origin, dtype=np.int64) for b in self.blocks],
                    np.int64)

    @property
    def extras(self) -> list[tuple[int, int, float]]:
        """(row, code, value) with rows counted across blocks."""
        self.seal()
        out: list[tuple[int, int, float]] = []
        first = 0
        for b in self.blocks:
            out.extend((first + r, c, v) for r, c, v in b.extras)
            first += len(b.meters)
        return out

    def __len__(self) -> int:
        return sum(len(b.meters) for b in self.blocks) + len(self._meters)


@dataclass(frozen=True, slots=True)
class Span:
    """The readings of one meter from one gateway in a batch: first and last time, count."""

    meter: str
    gateway: str
    first: datetime
    last: datetime
    rows: int


def spans(cols: Columns, gateway_of: list[str]) -> list[Span]:
    """Each (meter, gateway) pair of ``cols`` (``gateway_of``: the gateway of each origin),
    grouped with numpy: a batch holds tens of thousands of readings of a few hundred
    pairs. Sorted by meter, then gateway."""
    cols.seal()
    if cols._spans is not None and cols._spans[0] == tuple(gateway_of):
        return cols._spans[1]
    if not cols.blocks:
        return []
    meter_codes: dict[str, int] = {}
    gateway_codes: dict[str, int] = {}
    pairs = []
    for block in cols.blocks:
        g = gateway_codes.setdefault(gateway_of[block.origin], len(gateway_codes))
        codes = [meter_codes.setdefault(m, len(meter_codes)) for m in block.meters]
        pairs.append(np.array(codes, dtype=np.int64) * (1 << 32) + g)
    pair = np.concatenate(pairs)
    micros = cols.micros
    order = np.lexsort((micros, pair))
    sorted_pair = pair[order]
    starts = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1]])
    ends = np.r_[starts[1:], len(order)]
    meters = list(meter_codes)
    gateways = list(gateway_codes)
    found = [Span(meters[p >> 32], gateways[p & 0xFFFFFFFF], from_micros(lo), from_micros(hi), n)
             for p, lo, hi, n in zip(sorted_pair[starts].tolist(),
                                     micros[order[starts]].tolist(),
                                     micros[order[ends - 1]].tolist(),
                                     (ends - starts).tolist(), strict=True)]
    found.sort(key=lambda s: (s.meter, s.gateway))
    cols._spans = (tuple(gateway_of), found)  # ownership and the meter upsert both ask
    return found


def _cat(arrays: list[npt.NDArray[Any]], dtype: type) -> npt.NDArray[Any]:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)


def register_counts(
    values: npt.NDArray[np.float64], decimals: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """kWh to integer counts of 10^-decimals kWh (the meter's resolution), rounded."""
    return np.rint(values * np.power(10.0, decimals)).astype(np.int64)


def binary_copy(
    ts: npt.NDArray[np.int64],
    batch: npt.NDArray[np.int64],
    meter: npt.NDArray[np.int32],
    values: npt.NDArray[np.float64],
    decimals: npt.NDArray[np.int64],
) -> bytes:
    """One binary COPY stream of `readings` rows (columns COPY_COLUMNS): `values` is (n, WIDTH)
    with NaN for NULL; energy slots become counts of each row's `decimals`."""
    present = ~np.isnan(values)
    pattern = present @ (1 << np.arange(WIDTH, dtype=np.int64))
    out = [_HEADER]
    for pat in np.unique(pattern):
        rows = np.flatnonzero(pattern == pat)
        have = [bool(int(pat) >> s & 1) for s in range(WIDTH)]
        out.append(_group(rows, have, ts, batch, meter, values, decimals))
    out.append(_TRAILER)
    return b"".join(out)


def _group(
    rows: npt.NDArray[np.int64],
    have: list[bool],
    ts: npt.NDArray[np.int64],
    batch: npt.NDArray[np.int64],
    meter: npt.NDArray[np.int32],
    values: npt.NDArray[np.float64],
    decimals: npt.NDArray[np.int64],
) -> bytes:
    """Rows sharing one NULL pattern as fixed-width records."""
    fields: list[tuple[str, str]] = [
        ("n", ">i2"),
        ("lt", ">i4"),
        ("ts", ">i8"),
        ("lb", ">i4"),
        ("batch", ">i8"),
    ]
    for s in range(ENERGY_SLOTS):
        fields.append((f"l{s}", ">i4"))
        if have[s]:
            fields.append((f"v{s}", ">i8"))
    fields += [("lm", ">i4"), ("meter", ">i4")]
    for s in range(ENERGY_SLOTS, WIDTH):
        fields.append((f"l{s}", ">i4"))
        if have[s]:
            fields.append((f"v{s}", ">f4"))
    rec = np.empty(len(rows), dtype=np.dtype(fields))
    rec["n"] = 3 + WIDTH  # ts, batch, meter and the typed columns
    rec["lt"] = 8
    rec["ts"] = ts[rows]
    rec["lb"] = 8
    rec["batch"] = batch[rows]
    rec["lm"] = 4
    rec["meter"] = meter[rows]
    for s in range(WIDTH):
        if not have[s]:
            rec[f"l{s}"] = -1
        elif s < ENERGY_SLOTS:
            rec[f"l{s}"] = 8
            rec[f"v{s}"] = register_counts(values[rows, s], decimals[rows])
        else:
            rec[f"l{s}"] = 4
            rec[f"v{s}"] = values[rows, s]
    return rec.tobytes()
