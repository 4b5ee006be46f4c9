"""Precision and recall of the validation rules against a labelled run.

A labelled run is reads of simulated meters together with the faults injected into them
(``firmware_sim.labels``: kind, meter, start, end; passed here as plain :class:`Label`s, the
collector does not import the simulator). Each fault kind has the rule that must report it and
the rules that may also fire because of it (a stuck register is also a drop in consumption):

- a flagged interval is a true flag of its rule when a fault of that meter, for which the
  rule is expected or allowed, overlaps the interval widened by ``tolerance_s`` on each side
  (a register event is flagged on the interval holding the first read after it);
- a fault is found when its expected rule flags an interval of that meter overlapping it
  (widened the same way).

precision = true flags / flags, recall = found faults / faults, per rule, over the intervals
and faults inside the scored window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from collector.config import ValidationConfig
from collector.vee import judge, resolution, rules

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: fault kind -> (the rule that must report it, rules it may also make fire)
FAULT_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "surge": ("surge", ()),
    "drop": ("drop", ()),
    "zero_with_current": ("zero_with_current", ("drop",)),
    "reset": ("register_reset", ()),
    "rollover": ("register_rollover", ()),
    "backwards": ("register_replacement", ()),
    "clock_drift": ("clock_skew", ()),
    "voltage": ("voltage_out_of_band", ()),
    "no_reply": ("missing_reads", ()),
}


@dataclass(frozen=True, slots=True)
class Label:
    """An injected fault: meter number (as in the reads), kind, simulated start and end."""

    meter: int
    kind: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class RuleScore:
    rule: str
    flags: int
    true_flags: int
    faults: int
    found: int

    @property
    def precision(self) -> float | None:
        return self.true_flags / self.flags if self.flags else None

    @property
    def recall(self) -> float | None:
        return self.found / self.faults if self.faults else None


def side_table(meter: I64, t: F64, current: F64, voltage: F64, interval_s: int) -> F64:
    """Per (meter, interval) what a pass loads beside the register (the pure twin of the
    pass's query): max current, min and max voltage."""
    start = np.floor(t / interval_s) * interval_s
    order = np.lexsort((start, meter))
    m, s = meter[order], start[order]
    new = np.ones(len(m), dtype=bool)
    new[1:] = (m[1:] != m[:-1]) | (s[1:] != s[:-1])
    at = np.flatnonzero(new)
    if len(at) == 0:
        return np.zeros((0, 5))
    c, v = current[order], voltage[order]
    return np.column_stack(
        [
            m[at].astype(np.float64),
            s[at],
            np.fmax.reduceat(c, at),
            np.fmin.reduceat(v, at),
            np.fmax.reduceat(v, at),
        ]
    )


def clock_checks(meter: I64, t: F64, skew: F64) -> judge.Clocks:
    """The reads that carried the meter's clock, as the gateway's clock checks."""
    read = ~np.isnan(skew)
    return judge.Clocks(meter[read], t[read], skew[read])


class Recorded(Protocol):
    """A labelled run as the simulator records it (``firmware_sim.recording.Recording``):
    reads sorted by (meter, t), meter numbers indexing ``meter_ids``, and its fault labels
    (``meter`` a meter id, ``end`` None while the fault lasts)."""

    @property
    def meter_ids(self) -> list[str]: ...
    @property
    def meter(self) -> I64: ...
    @property
    def t(self) -> F64: ...
    @property
    def energy(self) -> F64: ...
    @property
    def current(self) -> F64: ...
    @property
    def voltage(self) -> F64: ...
    @property
    def clock_skew(self) -> F64: ...
    @property
    def labels(self) -> Sequence[Any]: ...


def judge_recording(
    rec: Recorded, interval_s: int, cfg: ValidationConfig
) -> tuple[judge.Verdict | None, list[Label]]:
    """Every rule over a recording's reads at once, as one pass over their whole span would
    judge them (no stored history: the span is its own baseline), and its labels by meter
    number; a fault still lasting at the end lasts to the last read."""
    meter, t, e = rec.meter, rec.t, rec.energy
    reads = judge.Reads(meter, t, e)
    n = len(rec.meter_ids)
    step = resolution.register_step(meter, e, np.full(n, np.nan), cfg.register_step_kwh)
    verdict = judge.judge(
        reads,
        side_table(meter, t, rec.current, rec.voltage, interval_s),
        clock_checks(meter, t, rec.clock_skew),
        judge.History.empty(),
        interval_s,
        cfg,
        expected_s=rules.expected_spacing(meter, t),
        step_kwh=step,
    )
    number = {m: i for i, m in enumerate(rec.meter_ids)}
    last = float(t.max()) if len(t) else 0.0
    labels = [
        Label(number[lb.meter], lb.kind, lb.start, last if lb.end is None else lb.end)
        for lb in rec.labels
    ]
    return verdict, labels


def score(
    iv: rules.Intervals,
    labels: Iterable[Label],
    interval_s: int,
    tolerance_s: float,
    window: tuple[float, float],
) -> dict[str, RuleScore]:
    """Precision and recall per rule of the flagged intervals against the labels."""
    lo, hi = window
    by_meter: dict[int, list[Label]] = defaultdict(list)
    faults: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    scored = [lb for lb in labels if lb.end >= lo and lb.start < hi]
    for lb in scored:
        if lb.kind not in FAULT_RULES:
            raise ValueError(f"label of unknown fault kind {lb.kind!r}")
        by_meter[lb.meter].append(lb)
        faults[FAULT_RULES[lb.kind][0]] += 1
    flags: dict[str, int] = defaultdict(int)
    true_flags: dict[str, int] = defaultdict(int)
    hit: set[tuple[Label, str]] = set()
    inside = np.flatnonzero((iv.flags != 0) & (iv.start >= lo) & (iv.start < hi))
    for i in inside:
        m, s, f = int(iv.meter[i]), float(iv.start[i]), int(iv.flags[i])
        near = [
            lb
            for lb in by_meter.get(m, ())
            if lb.start - tolerance_s < s + interval_s and s < lb.end + tolerance_s
        ]
        for bit, rule in rules.RULES.items():
            if not f & bit:
                continue
            flags[rule] += 1
            causes = [
                lb
                for lb in near
                if rule == FAULT_RULES[lb.kind][0] or rule in FAULT_RULES[lb.kind][1]
            ]
            true_flags[rule] += bool(causes)
            hit.update((lb, rule) for lb in causes if FAULT_RULES[lb.kind][0] == rule)
    for _label, rule in hit:
        found[rule] += 1
    names = sorted(set(flags) | set(faults))
    return {r: RuleScore(r, flags[r], true_flags[r], faults[r], found[r]) for r in names}


def review_items(iv: rules.Intervals, interval_s: int) -> dict[str, int]:
    """Work orders the flags would open, per rule: one per run of consecutive held intervals
    of one meter and rule (as :func:`collector.vee.review.open_review_items` opens them)."""
    out: dict[str, int] = {}
    for bit, rule in rules.RULES.items():
        if not bit & rules.HOLDS:
            continue
        idx = np.flatnonzero(iv.flags & bit)
        if len(idx):
            out[rule] = int(rules.run_starts(iv, idx, float(interval_s)).sum())
    return out
