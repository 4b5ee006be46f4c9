"""Every validation rule over loaded arrays, in the order a pass applies them.

One composition, used by the database pass (:mod:`collector.vee.passes`, which loads the
arrays and words the verdict) and by the labelled runs that measure the rules' precision and
recall (``bench/vee_quality.py``, ``tests/collector/test_vee_quality.py``), so what is measured
is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from collector.config import ValidationConfig
from collector.vee import estimate, rules

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Reads:
    """Energy register reads sorted by (meter, t)."""

    meter: I64
    t: F64
    e: F64


@dataclass(frozen=True, slots=True)
class Clocks:
    """The gateways' checks of the meters' clocks: meter, when read (epoch s), drift (s)."""

    meter: I64
    at: F64
    drift: F64

    @staticmethod
    def empty() -> Clocks:
        z = np.zeros(0)
        return Clocks(np.zeros(0, dtype=np.int64), z, z)


@dataclass(frozen=True, slots=True)
class History:
    """Actual unflagged intervals before the window: baseline and like-day input."""

    meter: I64
    start: F64
    kwh: F64

    @staticmethod
    def empty() -> History:
        z = np.zeros(0)
        return History(np.zeros(0, dtype=np.int64), z, z)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The intervals with their flags, and what each rule saw (for the reasons)."""

    iv: rules.Intervals
    reg: rules.Register
    med: F64
    scale: F64
    amps: F64
    vmin: F64
    vmax: F64
    skew: F64


def judge(
    reads: Reads,
    side: F64,
    clocks: Clocks,
    history: History,
    interval_s: int,
    cfg: ValidationConfig,
    *,
    expected_s: F64,
    step_kwh: F64,
) -> Verdict | None:
    """Intervals of the reads, estimated and flagged by every rule; None when no interval.

    ``side`` is one row per (meter, interval): meter, interval start, max current, min and max
    voltage; a clock check speaks for the intervals ending after it, up to
    ``clock_check_valid_s`` or the next check. ``expected_s`` is the expected
    read spacing per read; ``step_kwh`` the register step per meter
    (:mod:`collector.vee.resolution`).
    """
    meter, t = reads.meter, reads.t
    iv, reg = rules.derive(
        meter, t, reads.e, interval_s, cfg, expected_s=expected_s, step_kwh=step_kwh[meter]
    )
    if len(iv) == 0:
        return None
    step = step_kwh[iv.meter]
    hm, hs, hk = history.meter, history.start, history.kwh
    # like-day from history plus this pass's own actual intervals
    own = (iv.quality == "A") & ((iv.flags & rules.HOLDS) == 0)
    estimate.estimate_like_day(
        iv,
        np.concatenate([hm, iv.meter[own]]),
        np.concatenate([hs, iv.start[own]]),
        np.concatenate([hk, iv.kwh[own]]),
        cfg,
        interval_s,
    )
    recent = hs >= (iv.start.min() - cfg.baseline_days * 86400.0)
    base = rules.baseline(
        np.concatenate([hm[recent], iv.meter[own]]),
        np.concatenate([hs[recent], iv.start[own]]),
        np.concatenate([hk[recent], iv.kwh[own]]),
        cfg.tod_buckets,
    )
    skip = rules.unmeasured(iv, reg, meter, t, interval_s)
    med, scale = rules.surge_drop(iv, base, cfg, interval_s=interval_s, step_kwh=step, skip=skip)
    sm, ss = side[:, 0].astype(np.int64), side[:, 1]
    amps = rules.zero_with_current(
        iv, sm, ss, side[:, 2], cfg, interval_s=interval_s, step_kwh=step, skip=skip
    )
    vmin = rules.lookup(iv.meter, iv.start, sm, ss, side[:, 3])
    vmax = rules.lookup(iv.meter, iv.start, sm, ss, side[:, 4])
    lo_v = cfg.nominal_voltage * (1 - cfg.voltage_band)
    hi_v = cfg.nominal_voltage * (1 + cfg.voltage_band)
    iv.flags[(vmin < lo_v) | (vmax > hi_v)] |= rules.VOLTAGE
    skew = rules.latest_before(iv.meter, iv.start + interval_s, clocks.meter, clocks.at,
                               clocks.drift, cfg.clock_check_valid_s)
    iv.flags[np.abs(skew) > cfg.clock_skew_s] |= rules.CLOCK_SKEW
    return Verdict(iv, reg, med, scale, amps, vmin, vmax, skew)


def flat_at_start(reads: Reads, step_kwh: F64, n_meters: int) -> npt.NDArray[np.bool_]:
    """Meters whose register has not moved over their first two reads: a run of zero
    consumption may have begun before the window, so the pass loads reads further back
    (``zero_lookback_s``) to measure it whole."""
    out = np.zeros(n_meters, dtype=bool)
    if len(reads.e) < 2:
        return out
    first = np.flatnonzero(rules.group_starts(reads.meter))
    has_two = first + 1 < len(reads.e)
    first = first[has_two]
    same = reads.meter[first + 1] == reads.meter[first]
    first = first[same]
    flat = np.abs(reads.e[first + 1] - reads.e[first]) < step_kwh[reads.meter[first]] / 2
    out[reads.meter[first[flat]]] = True
    return out


def replace_meters(reads: Reads, which: npt.NDArray[np.bool_], longer: Reads) -> Reads:
    """``reads`` with the meters in ``which`` taken from ``longer`` instead (both sorted by
    (meter, t), meter numbers shared)."""
    keep = ~which[reads.meter]
    take = which[longer.meter]
    meter = np.concatenate([reads.meter[keep], longer.meter[take]])
    t = np.concatenate([reads.t[keep], longer.t[take]])
    order = np.lexsort((t, meter))
    e = np.concatenate([reads.e[keep], longer.e[take]])
    return Reads(meter[order], t[order], e[order])
