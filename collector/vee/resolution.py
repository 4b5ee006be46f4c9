"""What a meter's energy register can resolve: one register step per meter, in kWh.

The rules (:mod:`collector.vee.rules`) judge consumption against it. A step comes from, in
order:

1. what the meter declares: ``meters.register_resolution_kwh`` (the register's last digit, e.g.
   a Modbus map's scale) times ``meters.ct_ratio`` (a CT-connected meter counts secondary
   energy and reports it scaled to the primary side, so one step of its register is
   resolution x ratio kWh); a ratio without a resolution applies to the default step;
2. what its reads show, once they hold ``min_changes`` changes: the coarsest decimal grid
   (1, 0.1, 0.01 or 0.001 kWh) every read lies on (BCD and scaled-integer registers), or for a
   float register (reads on no such grid) the spacing of a float32 at the largest read, the
   step a float32 register really has (0.0078 kWh at 100,000 kWh);
3. ``ValidationConfig.register_step_kwh`` (0.01 kWh, DL/T645's XXXXXX.XX).

A coarser inferred step only makes the rules more patient, never louder; a stuck register
shows no changes and keeps the declared or default step. An operator declares a meter's with
``meterhub collector meters resolution METER --register-kwh 0.01 --ct-ratio 40``
(:func:`declare`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import psycopg

from collector.vee.rules import group_starts

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_GRIDS = (1.0, 0.1, 0.01, 0.001)  # coarsest first


def declared_step(resolution_kwh: F64, ct_ratio: F64, default: float) -> F64:
    """Step per meter from its declared resolution and CT ratio (NaN where it declares none)."""
    res = np.where(
        np.isnan(resolution_kwh), np.where(np.isnan(ct_ratio), np.nan, default), resolution_kwh
    )
    return np.asarray(res * np.where(np.isnan(ct_ratio), 1.0, ct_ratio), dtype=np.float64)


def inferred_step(meter: I64, e: F64, n_meters: int, min_changes: int = 8) -> F64:
    """Step per meter (index = meter number) seen in its reads sorted by (meter, time); NaN
    where the register changed fewer than ``min_changes`` times."""
    out = np.full(n_meters, np.nan)
    if len(e) == 0:
        return out
    first = group_starts(meter)
    starts = np.flatnonzero(first)
    who = meter[starts]
    changed = np.zeros(len(e), dtype=bool)
    changed[1:] = ~first[1:] & (e[1:] != e[:-1])
    enough = np.add.reduceat(changed.astype(np.int64), starts) >= min_changes
    step = np.full(len(starts), np.nan)
    for grid in reversed(_GRIDS):  # finest first: a coarser grid that fits overwrites it
        q = e / grid
        on = np.abs(q - np.round(q)) <= 1e-9 * np.maximum(1.0, np.abs(q))
        fits = np.logical_and.reduceat(on, starts)
        step[fits] = grid
    largest = np.maximum.reduceat(np.abs(e), starts)
    float_like = np.isnan(step)
    step[float_like] = np.spacing(largest[float_like].astype(np.float32)).astype(np.float64)
    out[who[enough]] = step[enough]
    return out


def register_step(meter: I64, e: F64, declared: F64, default: float) -> F64:
    """Step per meter: declared, else inferred from its reads, else the default."""
    inferred = inferred_step(meter, e, len(declared))
    step = np.where(np.isnan(declared), inferred, declared)
    return np.where(np.isnan(step), default, step)


def load_declared(conn: psycopg.Connection, names: list[int], default: float) -> F64:
    """Declared step per meter key (NaN where the meter declares none)."""
    rows = conn.execute(
        "SELECT u.i, m.register_resolution_kwh, m.ct_ratio"
        " FROM unnest(%s::int[]) WITH ORDINALITY AS u(m, i)"
        " LEFT JOIN meters m ON m.meter_key = u.m ORDER BY u.i",
        (names,),
    ).fetchall()
    res = np.array([np.nan if r[1] is None else float(r[1]) for r in rows])
    ct = np.array([np.nan if r[2] is None else float(r[2]) for r in rows])
    return declared_step(res.reshape(-1), ct.reshape(-1), default)


def declare(
    conn: psycopg.Connection, meter: str, resolution_kwh: float | None, ct_ratio: float | None
) -> None:
    """Set (None: clear) what a registered meter's register resolves; checked first."""
    if resolution_kwh is not None and not 0 < resolution_kwh <= 1000:
        raise ValueError(f"register resolution {resolution_kwh} kWh: expected 0 < kWh <= 1000")
    if ct_ratio is not None and not 1 <= ct_ratio <= 100_000:
        raise ValueError(f"CT ratio {ct_ratio}: expected 1 <= ratio <= 100000 (e.g. 40 for 200/5)")
    done = conn.execute(
        "UPDATE meters SET register_resolution_kwh = %s, ct_ratio = %s WHERE meter_id = %s",
        (resolution_kwh, ct_ratio, meter),
    ).rowcount
    if not done:
        raise ValueError(f"meter {meter!r} is not registered")
