"""Readings as columns, and those columns as PostgreSQL binary COPY: the layout-v2 hot path.

A readings message is decoded once into flat columns (meter, time, one float per typed
quantity with NaN for "absent"); a whole batch of messages becomes one binary COPY stream of
`readings` rows built by numpy, with no Python object per value. Rows are grouped by which
columns they carry, since a NULL field has no bytes: each group is one fixed-width numpy
record array. Energy registers become exact integer counts of the meter's resolution here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

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


@dataclass(slots=True)
class Columns:
    """Good readings as columns: row i is (meters[i], times[i]) with values[i*WIDTH:...]."""

    meters: list[str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    micros: list[int] = field(default_factory=list)
    origins: list[int] = field(default_factory=list)  # index of the row's message (BatchSeen)
    values: list[float] = field(default_factory=list)  # WIDTH floats per row, NaN = absent
    extras: list[tuple[int, int, float]] = field(default_factory=list)  # (row, code, value)
    count: int = 0  # values present (typed and extra)

    def add(
        self,
        meter: str,
        ts: datetime,
        micros: int,
        origin: int,
        values: list[tuple[str, float, str]],
    ) -> None:
        row = _NAN_ROW.copy()
        n = len(self.meters)
        for name, number, _unit in values:
            slot = SLOT.get(name)
            if slot is not None:
                row[slot] = number
            else:
                self.extras.append((n, EXTRA_CODES[name], number))
        self.meters.append(meter)
        self.times.append(ts)
        self.micros.append(micros)
        self.origins.append(origin)
        self.values.extend(row)
        self.count += len(values)

    def extend(self, other: Columns, origin: int) -> None:
        """Append another message's rows; their origin becomes `origin`."""
        base = len(self.meters)
        self.meters.extend(other.meters)
        self.times.extend(other.times)
        self.micros.extend(other.micros)
        self.origins.extend([origin] * len(other.meters))
        self.values.extend(other.values)
        self.extras.extend((base + r, c, v) for r, c, v in other.extras)
        self.count += other.count

    def keep(self, mask: list[bool]) -> Columns:
        """The rows whose mask is true (ownership refusals take the others out)."""
        out = Columns()
        new_index: dict[int, int] = {}
        for i, ok in enumerate(mask):
            if not ok:
                continue
            new_index[i] = len(out.meters)
            out.meters.append(self.meters[i])
            out.times.append(self.times[i])
            out.micros.append(self.micros[i])
            out.origins.append(self.origins[i])
            out.values.extend(self.values[i * WIDTH : (i + 1) * WIDTH])
        out.extras = [(new_index[r], c, v) for r, c, v in self.extras if r in new_index]
        out.count = int(np.count_nonzero(~np.isnan(np.array(out.values)))) + len(out.extras)
        return out

    def __len__(self) -> int:
        return len(self.meters)


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
