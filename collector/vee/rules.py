"""Validation rules of VEE: register reads into fixed intervals, and what is wrong with them.

Everything works on flat arrays holding many meters at once, sorted by (meter, time), so one
pass of vectorised operations validates thousands of meters; there is no per-meter Python loop
except to word the reasons of the few intervals that were flagged. Times are float seconds
since the epoch; energy is kWh.

Pipeline (:func:`derive`):
1. clean the cumulative register: drop single-read glitches, and turn backward steps into
   rollover (near the register's maximum), reset (lands near zero) or replacement (anything
   else) so the corrected register never goes backwards;
2. cut consumption into epoch-aligned intervals by interpolating the corrected register at the
   boundaries (an interval exists once a read covers its end);
3. mark intervals overlapping a gap in the reads (missing) and substitute them by linear
   interpolation of the register (the like-day profile beyond ``linear_max_s`` comes later),
   scaled to the register difference across the gap so nothing is created or lost;
4. flag surges and drops against the meter's own median/MAD per time-of-day bucket.

Rules about consumption judge against what the meter can resolve: its register counts in
steps (0.01 kWh on DL/T645's XXXXXX.XX; times the CT ratio on a CT-connected meter), so a
small load over a short span leaves it unmoved. ``step_kwh`` (one step per read or interval,
:mod:`collector.vee.resolution` works it out) sets the least change a rule may call a fault:
a backward move within one step is read noise, a surge or drop must exceed
``evidence_steps`` steps, and zero consumption while current flows must last until the
current should have moved the register by ``evidence_steps`` steps.

Estimation beyond linear substitution (like-day profiles) is :mod:`collector.vee.estimate`.

Quality and method follow NEM12: A actual, S substitute; 17 linear, 14 like day, 15 average
like day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from collector.config import ValidationConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

# Rule bits carried per interval; names are what anomalies and `intervals.flags` say.
MISSING = 1 << 0
SURGE = 1 << 1
DROP = 1 << 2
ROLLOVER = 1 << 3
RESET = 1 << 4
REPLACEMENT = 1 << 5
GLITCH = 1 << 6
ZERO_WITH_CURRENT = 1 << 7
VOLTAGE = 1 << 8
CLOCK_SKEW = 1 << 9

RULES: dict[int, str] = {
    MISSING: "missing_reads",
    SURGE: "surge",
    DROP: "drop",
    ROLLOVER: "register_rollover",
    RESET: "register_reset",
    REPLACEMENT: "register_replacement",
    GLITCH: "register_glitch",
    ZERO_WITH_CURRENT: "zero_with_current",
    VOLTAGE: "voltage_out_of_band",
    CLOCK_SKEW: "clock_skew",
}


def code(bit: int) -> int:
    """A rule's code in `vee_rules` and `anomalies.rule`: its bit's number."""
    return bit.bit_length() - 1


# The units of an anomaly's (value, expected) per rule, as _reason in passes.py sets them:
# shown beside the numbers, which mean nothing without them ("" where there is none).
ANOMALY_UNITS: dict[str, tuple[str, str]] = {
    "missing_reads": ("kWh", ""),
    "surge": ("kWh", "kWh"),
    "drop": ("kWh", "kWh"),
    "register_rollover": ("kWh", "kWh"),
    "register_reset": ("kWh", "kWh"),
    "register_replacement": ("kWh", "kWh"),
    "register_glitch": ("kWh", "kWh"),
    "zero_with_current": ("kWh", "A"),
    "voltage_out_of_band": ("V", "V"),
    "clock_skew": ("s", "s"),
}


# Rules that hold an interval from billing until a person reviews it.
HOLDS = SURGE | DROP | RESET | REPLACEMENT | ZERO_WITH_CURRENT
# A register that stepped back leaves consumption between the reads around the step unknown
# (counted as 0 or from zero): consumption rules do not judge it, the register event is the
# finding (see :func:`unmeasured`).
UNMEASURED = RESET | REPLACEMENT

METHOD_NONE = 0
METHOD_LIKE_DAY = 14
METHOD_AVG_LIKE_DAY = 15
METHOD_LINEAR = 17

_EPS = 1e-9


def group_starts(meter: npt.NDArray[np.integer]) -> Bool:
    """True where a new meter's run begins (arrays sorted by meter)."""
    first = np.ones(len(meter), dtype=bool)
    first[1:] = meter[1:] != meter[:-1]
    return first


def _sorted_key(meter: npt.NDArray[np.integer], t: F64, base: float, span: float) -> F64:
    """One sortable float per (meter, time): meter-major, so searchsorted works across meters."""
    return meter.astype(np.float64) * span + (t - base)


# ---------------------------------------------------------------------------- 1. register


@dataclass(frozen=True, slots=True)
class Register:
    """The cleaned register of kept reads, and what happened to it."""

    keep: Bool  # per input read: used (False: glitch, or pending a read that decides)
    corrected: F64  # per input read: the never-decreasing register (NaN where not kept)
    event_index: I64  # input reads where a rule fired
    event_rule: I64  # rule bit per event
    event_before: F64  # register before the step
    event_after: F64  # register at the read


def clean_register(meter: npt.NDArray[np.integer], t: F64, e: F64,
                   cfg: ValidationConfig, *, step_kwh: F64 | float | None = None) -> Register:
    """Never-decreasing register from raw reads. A backward move of at most one register
    step (``step_kwh`` per read, default ``cfg.register_step_kwh``) is read noise (a float
    register's last digit, a read taken mid-update): absorbed, no rule fires."""
    n = len(e)
    tol = _per_item(step_kwh, cfg.register_step_kwh, n) + _EPS
    first = group_starts(meter)
    last = np.ones(n, dtype=bool)
    last[:-1] = meter[1:] != meter[:-1]
    back = np.zeros(n, dtype=bool)
    back[1:] = ~first[1:] & (e[1:] < e[:-1] - tol[1:])

    # Pass 1: a single read out of line is a glitch when the reads around it agree.
    keep = np.ones(n, dtype=bool)
    j = np.flatnonzero(back)
    has_next = ~last[j]
    nxt = np.minimum(j + 1, n - 1)
    dip = has_next & (e[nxt] >= e[j - 1] - _EPS)
    has_prev2 = (j >= 2) & ~first[j - 1]
    prev2 = np.maximum(j - 2, 0)
    spike = ~dip & has_prev2 & (e[j] >= e[prev2] - _EPS)
    glitch_idx = np.concatenate([j[dip], j[spike] - 1])
    keep[glitch_idx] = False
    # A backward step on the newest read cannot be judged yet (glitch or reset?) unless its
    # value says rollover/reset plainly: wait for the next read.
    undecided = j[~has_next & ~dip & ~spike]
    if len(undecided):
        prev = e[undecided - 1]
        plain = _near_max(prev, cfg) & (e[undecided] <= cfg.register_modulus_kwh
                                        * cfg.rollover_margin)
        plain |= e[undecided] <= cfg.reset_max_kwh
        keep[undecided[~plain]] = False

    # Pass 2: on kept reads, every remaining backward step is persistent.
    k = np.flatnonzero(keep)
    mk, ek = meter[k], e[k]
    firstk = group_starts(mk)
    d = np.zeros(len(k))
    d[1:] = ek[1:] - ek[:-1]
    step = ~firstk & (d < -_EPS)
    noise = step & (-d <= tol[k])
    offset = np.zeros(len(k))
    offset[noise] = -d[noise]  # held flat: the register did not really go back
    s = np.flatnonzero(step & ~noise)
    before, after = ek[s - 1], ek[s]
    rollover = _near_max(before, cfg) & (after <= cfg.register_modulus_kwh * cfg.rollover_margin)
    reset = ~rollover & (after <= cfg.reset_max_kwh)
    replacement = ~rollover & ~reset
    offset[s[rollover]] = cfg.register_modulus_kwh  # consumption = max - before + after
    offset[s[reset]] = before[reset]  # counted again from zero: consumption = after
    offset[s[replacement]] = before[replacement] - after[replacement]  # unknown: zero
    cum = np.cumsum(offset)
    group_base = np.maximum.accumulate(np.where(firstk, np.arange(len(k)), 0))
    corrected_k = ek + cum - cum[group_base]

    corrected = np.full(n, np.nan)
    corrected[k] = corrected_k
    rules = np.where(rollover, ROLLOVER, np.where(reset, RESET, REPLACEMENT))
    ev_idx = np.concatenate([k[s], glitch_idx])
    ev_rule = np.concatenate([rules, np.full(len(glitch_idx), GLITCH)]).astype(np.int64)
    ev_before = np.concatenate([before, e[np.maximum(glitch_idx - 1, 0)]])
    ev_after = np.concatenate([after, e[glitch_idx]])
    return Register(keep, corrected, ev_idx.astype(np.int64), ev_rule, ev_before, ev_after)


def _near_max(value: F64, cfg: ValidationConfig) -> Bool:
    return np.asarray(value >= cfg.register_modulus_kwh * (1 - cfg.rollover_margin))


def _per_item(value: F64 | float | None, default: float, n: int) -> F64:
    """A per-item array from a scalar, an array or None (the default)."""
    if value is None:
        return np.full(n, float(default))
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))


# ---------------------------------------------------------------------------- 2. intervals


@dataclass(slots=True)
class Intervals:
    """Flat interval arrays, sorted by (meter, start)."""

    meter: I64
    start: F64
    kwh: F64
    raw_kwh: F64
    quality: npt.NDArray[np.str_]  # 'A' or 'S'
    method: I64
    flags: I64  # rule bits
    gap: F64  # length (s) of the read gap this interval lies in, 0 when none
    gap_from: F64
    gap_to: F64

    def __len__(self) -> int:
        return len(self.start)

    def take(self, mask: Bool | I64) -> Intervals:
        return Intervals(*(getattr(self, f)[mask] for f in Intervals.__slots__))


def _bracket(key_reads: F64, key_at: F64) -> tuple[I64, I64, F64]:
    """For each point: the reads left and right of it and the fraction of the way between."""
    r = np.searchsorted(key_reads, key_at, side="left")
    r = np.minimum(r, len(key_reads) - 1)
    l_ = np.maximum(r - 1, 0)
    exact = key_reads[r] == key_at
    l_ = np.where(exact, r, l_)
    span = key_reads[r] - key_reads[l_]
    frac = np.divide(key_at - key_reads[l_], span, out=np.zeros_like(key_at), where=span > 0)
    return l_, r, frac


def _interpolate(l_: I64, r: I64, frac: F64, value: F64) -> F64:
    return value[l_] + (value[r] - value[l_]) * frac


def expected_spacing(meter: npt.NDArray[np.integer], t: F64, sample: int = 128) -> F64:
    """Median spacing of each meter's reads, per read (vectorised grouped median).

    Only each meter's first ``sample`` spacings are used: the median of a steady poll
    schedule settles long before that, and sorting every spacing cost more than deriving the
    intervals themselves.
    """
    n = len(t)
    if n == 0:
        return np.zeros(0)
    meter = np.asarray(meter, dtype=np.int64)
    first = group_starts(meter)
    starts = np.flatnonzero(first)
    position = np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))
    d = np.full(n, np.nan)
    d[1:] = np.where(first[1:], np.nan, t[1:] - t[:-1])
    counts = np.diff(np.append(starts, n))
    pick = np.flatnonzero((position >= 1) & (position <= sample))
    med_by_group = np.full(len(starts), np.nan)
    if len(pick):
        group_of = np.repeat(np.arange(len(starts)), counts)
        med = grouped_median(group_of[pick], d[pick])
        med_by_group[np.unique(group_of[pick])] = med
    return np.repeat(med_by_group, counts)


def _sorted_groups(group: I64, x: F64) -> tuple[I64, F64, I64, I64]:
    """Sort x within groups with one float sort (group-major key): several times faster than
    lexsort. Returns sorted (group, x), each group's start and size."""
    lo = float(x.min())
    width = float(x.max()) - lo + 1.0
    combined = group.astype(np.float64) * width + (x - lo)
    order = np.argsort(combined, kind="stable")
    g, v = group[order], x[order]
    starts = np.flatnonzero(group_starts(g))
    counts = np.diff(np.append(starts, len(g)))
    return g, v, starts, counts


def grouped_median(group: npt.NDArray[np.integer], x: F64) -> F64:
    """Median of x per group (NaN ignored), one value per distinct group, in sorted order."""
    valid = ~np.isnan(x)
    groups = np.unique(group)
    out = np.full(len(groups), np.nan)
    if not valid.any():
        return out
    g, v, starts, counts = _sorted_groups(np.asarray(group, dtype=np.int64)[valid], x[valid])
    med = (v[starts + (counts - 1) // 2] + v[starts + counts // 2]) / 2
    out[np.searchsorted(groups, g[starts])] = med
    return out


def derive(meter: npt.NDArray[np.integer], t: F64, e: F64, interval_s: int,
           cfg: ValidationConfig, expected_s: F64 | None = None, *,
           step_kwh: F64 | float | None = None) -> tuple[Intervals, Register]:
    """Intervals from cumulative register reads sorted by (meter, t); ``step_kwh`` per read
    (see :func:`clean_register`)."""
    meter64: I64 = np.asarray(meter, dtype=np.int64)
    reg = clean_register(meter64, t, e, cfg, step_kwh=step_kwh)
    k = np.flatnonzero(reg.keep)
    mk, tk, ck, ek = meter64[k], t[k], reg.corrected[k], e[k]
    if len(k) == 0:
        return _empty(), reg
    size = float(interval_s)
    first = group_starts(mk)
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(k)) - 1
    b0 = np.ceil(tk[starts] / size)
    b1 = np.floor(tk[ends] / size)
    nb = np.maximum(b1 - b0 + 1, 0).astype(np.int64)
    ni = np.maximum(nb - 1, 0)
    total = int(ni.sum())
    if total == 0:
        return _empty(), reg
    # Flat boundaries b0[g] .. b1[g] per meter: interpolate once, intervals are the diffs.
    nbi = np.where(ni > 0, nb, 0)
    gid = np.repeat(np.arange(len(starts)), nbi)
    within = np.arange(int(nbi.sum())) - np.repeat(np.cumsum(nbi) - nbi, nbi)
    b_time = (b0[gid] + within) * size
    b_meter = mk[starts][gid]
    base = float(tk.min()) - size
    span = float(tk.max() - base) + 2 * size
    key_r = _sorted_key(mk, tk, base, span)
    key_b = _sorted_key(b_meter, b_time, base, span)
    l_, r_, frac = _bracket(key_r, key_b)
    c = _interpolate(l_, r_, frac, ck)
    raw = _interpolate(l_, r_, frac, ek)
    is_start = np.ones(len(b_time), dtype=bool)  # every boundary but each meter's last
    is_start[np.cumsum(nbi)[nbi > 0] - 1] = False
    si = np.flatnonzero(is_start)
    i_start, i_meter = b_time[si], b_meter[si]
    key_s = key_b[si]
    kwh = np.maximum(c[si + 1] - c[si], 0.0)
    raw_kwh = raw[si + 1] - raw[si]
    out = Intervals(
        meter=i_meter, start=i_start, kwh=kwh, raw_kwh=raw_kwh,
        quality=np.full(total, "A"), method=np.zeros(total, dtype=np.int64),
        flags=np.zeros(total, dtype=np.int64), gap=np.zeros(total),
        gap_from=np.zeros(total), gap_to=np.zeros(total),
    )
    # Register events flag the interval that holds the read where they happened.
    if len(reg.event_index):
        ev_t = t[reg.event_index]
        ev_key = _sorted_key(meter64[reg.event_index], np.floor(ev_t / size) * size, base,
                             span)
        pos = np.searchsorted(key_s, ev_key)
        hit = (pos < total) & (key_s[np.minimum(pos, total - 1)] == ev_key)
        np.bitwise_or.at(out.flags, pos[hit], reg.event_rule[hit])
    _mark_gaps(out, mk, tk, first, key_r, key_s, base, span, size, cfg, expected_s, k)
    return out, reg


def unmeasured(iv: Intervals, reg: Register, meter: I64, t: F64, interval_s: float) -> Bool:
    """Intervals overlapping the span between the reads around a reset or replacement: their
    consumption is partly unknown, so consumption rules skip them (``skip=``)."""
    out = np.zeros(len(iv), dtype=bool)
    kept = np.flatnonzero(reg.keep)
    for i, rule in zip(reg.event_index, reg.event_rule, strict=True):
        if not rule & UNMEASURED:
            continue
        prev = kept[np.searchsorted(kept, i) - 1]
        out |= ((iv.meter == meter[i]) & (iv.start < t[i])
                & (iv.start + interval_s > t[prev]))
    return out


def _empty() -> Intervals:
    z = np.zeros(0)
    zi = np.zeros(0, dtype=np.int64)
    return Intervals(zi, z, z, z, np.zeros(0, dtype="<U1"), zi, zi, z, z, z)


def _mark_gaps(out: Intervals, mk: I64, tk: F64, first: Bool, key_r: F64, key_s: F64,
               base: float, span: float, size: float, cfg: ValidationConfig,
               expected_s: F64 | None, k: I64) -> None:
    """Intervals overlapping a read gap longer than the meter's expected spacing allows."""
    spacing = np.zeros(len(tk))
    spacing[1:] = np.where(first[1:], 0.0, tk[1:] - tk[:-1])
    expected = expected_s[k] if expected_s is not None else expected_spacing(mk, tk)
    expected = np.where(np.isnan(expected), size, expected)
    limit = np.maximum(cfg.missing_factor * expected, size)
    g = np.flatnonzero(spacing > limit)
    if len(g) == 0:
        return
    lo, hi = tk[g - 1], tk[g]
    first_i = np.searchsorted(key_s, _sorted_key(mk[g], lo - size, base, span), side="right")
    last_i = np.searchsorted(key_s, _sorted_key(mk[g], hi, base, span), side="left")
    counts = np.maximum(last_i - first_i, 0)
    idx = np.repeat(first_i, counts) + (np.arange(counts.sum())
                                        - np.repeat(np.cumsum(counts) - counts, counts))
    which = np.repeat(np.arange(len(g)), counts)
    out.flags[idx] |= MISSING
    out.quality[idx] = "S"
    out.method[idx] = METHOD_LINEAR
    out.gap[idx] = (hi - lo)[which]
    out.gap_from[idx] = lo[which]
    out.gap_to[idx] = hi[which]


# ---------------------------------------------------------------------------- 3. baseline


@dataclass(frozen=True, slots=True)
class Baseline:
    """Median and MAD of actual interval kWh per (meter, time-of-day bucket)."""

    key: I64  # meter * buckets + bucket, sorted
    median: F64
    mad: F64
    count: I64


def tod_bucket(start: F64, buckets: int) -> I64:
    return (np.floor((start % 86400) / (86400 / buckets))).astype(np.int64)


def baseline(meter: I64, start: F64, kwh: F64, buckets: int) -> Baseline:
    """Robust baseline per meter and time of day, vectorised over all meters at once."""
    key = meter.astype(np.int64) * buckets + tod_bucket(start, buckets)
    if len(key) == 0:
        z = np.zeros(0)
        return Baseline(np.zeros(0, dtype=np.int64), z, z, np.zeros(0, dtype=np.int64))
    k, v, starts, counts = _sorted_groups(key, kwh)
    med = (v[starts + (counts - 1) // 2] + v[starts + counts // 2]) / 2
    dev = np.abs(v - np.repeat(med, counts))
    _, d, _, _ = _sorted_groups(np.repeat(np.arange(len(starts)), counts), dev)
    mad = (d[starts + (counts - 1) // 2] + d[starts + counts // 2]) / 2
    return Baseline(k[starts], med, mad, counts.astype(np.int64))


def surge_drop(iv: Intervals, base: Baseline, cfg: ValidationConfig,
               candidates: Bool | None = None, *, interval_s: float | None = None,
               step_kwh: F64 | float | None = None, skip: Bool | None = None
               ) -> tuple[F64, F64]:
    """Flag surges and drops of actual intervals; returns (median, robust scale) per interval.

    A surge is ``kwh - median > max(surge_z * 1.4826 * MAD, floor)`` in the interval's
    time-of-day bucket, ``floor = max(min_abs_kwh, evidence_steps * step)``; a drop mirrors
    it. The step term keeps a coarse register (a CT meter's 0.4 kWh, a short interval's
    one-step jumps) from reading as a surge. A sustained one is judged over its evidence
    window too (:func:`_sustained`): 2 to ``evidence_window_s`` worth of consecutive intervals
    (at most ``max_window_intervals``), each beyond the floor the same way, whose summed
    deviation exceeds z x the root-sum-square of their scales; noise averages out over the
    window, a real drop does not. Buckets with fewer than ``min_baseline_samples`` actual
    intervals give no verdict. ``interval_s`` defaults to the intervals' smallest spacing.
    """
    key = iv.meter * cfg.tod_buckets + tod_bucket(iv.start, cfg.tod_buckets)
    pos = np.minimum(np.searchsorted(base.key, key), max(len(base.key) - 1, 0))
    if len(base.key) == 0:
        return np.full(len(iv), np.nan), np.full(len(iv), np.nan)
    found = (base.key[pos] == key) & (base.count[pos] >= cfg.min_baseline_samples)
    med = np.where(found, base.median[pos], np.nan)
    scale = np.where(found, 1.4826 * base.mad[pos], np.nan)
    judged = found & (iv.quality == "A")
    if skip is not None:
        judged &= ~skip
    if candidates is not None:
        judged &= candidates
    step = _per_item(step_kwh, cfg.register_step_kwh, len(iv))
    # intervals are differences of register reads, each off by up to a step, and a MAD of
    # such values is itself counted in steps (0 when most read the same): one step of
    # uncertainty is added to the scale
    scale = np.hypot(scale, step)
    diff = iv.kwh - med
    floor = np.maximum(cfg.min_abs_kwh, cfg.evidence_steps * step)
    surge = judged & (diff > np.maximum(cfg.surge_z * scale, floor))
    drop = judged & (-diff > np.maximum(cfg.drop_z * scale, floor))
    size = float(interval_s) if interval_s else _smallest_spacing(iv)
    longest = int(min(cfg.max_window_intervals, cfg.evidence_window_s // size)) if size else 1
    if longest >= 2:
        surge |= _sustained(iv, judged & (diff > floor), diff, scale, cfg.surge_z, longest, size)
        drop |= _sustained(iv, judged & (-diff > floor), -diff, scale, cfg.drop_z, longest, size)
    iv.flags[surge] |= SURGE
    iv.flags[drop] |= DROP
    return med, scale


# ---------------------------------------------------------------------------- 4. reading rules


def zero_with_current(iv: Intervals, cur_meter: I64, cur_start: F64, cur_max: F64,
                      cfg: ValidationConfig, *, interval_s: float | None = None,
                      step_kwh: F64 | float | None = None, skip: Bool | None = None) -> F64:
    """Flag runs of actual intervals with (near) zero energy while current flowed, once the
    current should have moved the register.

    A run is consecutive intervals of one meter, each with ``kwh <= min(zero_kwh, step /
    1000)`` (the register did not move) and a current above ``zero_current_a``. Its evidence
    is the least energy that current can carry: the run's smallest current x the band's
    lowest voltage x ``zero_min_power_factor`` x its length. Only a run whose evidence
    reaches ``evidence_steps`` register steps is flagged (all its intervals): 1 kW for a few
    seconds does not move a 0.01 kWh register. ``interval_s`` defaults to the smallest
    spacing of the intervals given.
    """
    amps = lookup(iv.meter, iv.start, cur_meter, cur_start, cur_max)
    step = _per_item(step_kwh, cfg.register_step_kwh, len(iv))
    # zero: the register did not move between the reads around the interval; one that moved
    # a step shows more than a thousandth of it even spread over an interval far shorter than
    # the reads' spacing
    zero = ((iv.quality == "A") & (iv.kwh <= np.minimum(cfg.zero_kwh, step * 1e-3))
            & (amps > cfg.zero_current_a))
    if skip is not None:
        zero &= ~skip
    idx = np.flatnonzero(zero)
    if len(idx) == 0:
        return amps
    size = float(interval_s) if interval_s else _smallest_spacing(iv)
    new = run_starts(iv, idx, size)
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    least_amps = np.minimum.reduceat(amps[idx], starts)
    length_h = np.diff(np.append(starts, len(idx))) * size / 3600.0
    volts = cfg.nominal_voltage * (1 - cfg.voltage_band)
    evidence_kwh = least_amps * volts * cfg.zero_min_power_factor * length_h / 1000.0
    fired = evidence_kwh >= cfg.evidence_steps * np.maximum.reduceat(step[idx], starts)
    iv.flags[idx[fired[run]]] |= ZERO_WITH_CURRENT
    return amps


def run_starts(iv: Intervals, idx: I64, size: float) -> Bool:
    """For the intervals ``idx`` (ascending): True where a run of consecutive intervals of
    one meter begins."""
    new = np.ones(len(idx), dtype=bool)
    new[1:] = ((idx[1:] != idx[:-1] + 1) | (iv.meter[idx[1:]] != iv.meter[idx[:-1]])
               | (iv.start[idx[1:]] - iv.start[idx[:-1]] != size))
    return new


def _sustained(iv: Intervals, beyond: Bool, dev: F64, scale: F64, z: float, longest: int,
               size: float) -> Bool:
    """Intervals inside a window of 2..longest consecutive ``beyond`` intervals whose summed
    deviation exceeds ``z`` x the root-sum-square of their scales."""
    idx = np.flatnonzero(beyond)
    out = np.zeros(len(iv), dtype=bool)
    if len(idx) < 2:
        return out
    new = run_starts(iv, idx, size)
    run_first = np.maximum.accumulate(np.where(new, np.arange(len(idx)), 0))
    pos = np.arange(len(idx)) - run_first
    cdev = np.concatenate([[0.0], np.cumsum(dev[idx])])
    cvar = np.concatenate([[0.0], np.cumsum(scale[idx] ** 2)])
    mark = np.zeros(len(idx) + 1, dtype=np.int64)
    for width in range(2, longest + 1):
        end = np.flatnonzero(pos >= width - 1)
        total = cdev[end + 1] - cdev[end + 1 - width]
        spread = np.sqrt(cvar[end + 1] - cvar[end + 1 - width])
        fired = end[total > z * spread]
        np.add.at(mark, fired - width + 1, 1)
        np.add.at(mark, fired + 1, -1)
    out[idx[np.cumsum(mark[:-1]) > 0]] = True
    return out


def _smallest_spacing(iv: Intervals) -> float:
    d = np.diff(iv.start)
    d = d[(d > 0) & (iv.meter[1:] == iv.meter[:-1])]
    return float(d.min()) if len(d) else 0.0  # one interval alone: no length, no evidence


def lookup(meter: I64, start: F64, t_meter: I64, t_start: F64, t_value: F64) -> F64:
    """Value of (t_meter, t_start) for each (meter, start); NaN where absent. Tables sorted."""
    if len(t_value) == 0:
        return np.full(len(meter), np.nan)
    lo = float(min(start.min() if len(start) else 0.0, t_start.min()))
    hi = float(max(start.max() if len(start) else 0.0, t_start.max()))
    span = hi - lo + 1.0
    tk = _sorted_key(t_meter, t_start, lo, span)
    order = np.argsort(tk, kind="stable")
    tk, tv = tk[order], t_value[order]
    key = _sorted_key(meter, start, lo, span)
    pos = np.minimum(np.searchsorted(tk, key), len(tk) - 1)
    return np.where(tk[pos] == key, tv[pos], np.nan)


def latest_before(meter: I64, at: F64, c_meter: I64, c_at: F64, c_value: F64,
                  max_age: float) -> F64:
    """For each (meter, at): the value of that meter's newest check at or before ``at`` and
    at most ``max_age`` older; NaN where there is none. Checks need not be sorted.

    A clock check speaks for the time after it until the next one: an interval is judged by
    the clock as last read before it ended, not only by a check inside it."""
    out = np.full(len(meter), np.nan)
    if len(c_value) == 0 or len(meter) == 0:
        return out
    lo = float(min(at.min(), c_at.min()))
    span = float(max(at.max(), c_at.max())) - lo + max_age + 1.0
    ck = _sorted_key(c_meter, c_at, lo, span)
    order = np.argsort(ck, kind="stable")
    ck, cm, ct, cv = ck[order], c_meter[order], c_at[order], c_value[order]
    pos = np.searchsorted(ck, _sorted_key(meter, at, lo, span), side="right") - 1
    ok = pos >= 0
    pos = np.maximum(pos, 0)
    ok &= (cm[pos] == meter) & (at - ct[pos] <= max_age)
    out[ok] = cv[pos[ok]]
    return out


def out_of_band(value: F64, low: float, high: float) -> Bool:
    return np.asarray((value < low) | (value > high))
