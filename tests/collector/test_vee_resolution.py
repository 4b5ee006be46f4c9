"""Rules against what the meter can resolve: register steps, evidence windows (issue 17.3)."""

from __future__ import annotations

import numpy as np
import pytest
from collector_helpers import actual_intervals
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import ConfigError, ValidationConfig
from collector.vee import resolution, rules

CFG = ValidationConfig()
T0 = 1772409600.0  # 2026-03-02 00:00 UTC


def register(
    kw: float,
    seconds: float,
    every: float,
    step: float,
    start: float = 1000.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads of a register counting in `step`s (truncated, as meters do) under a steady load."""
    t = T0 + np.arange(0.0, seconds + every / 2, every)
    e = np.floor((start + kw * (t - T0) / 3600.0) / step + 1e-9) * step
    return t, e


def judge_zero(
    t: np.ndarray,
    e: np.ndarray,
    amps: float,
    interval_s: int,
    step: float,
    cfg: ValidationConfig = CFG,
) -> rules.Intervals:
    iv, _ = rules.derive(np.zeros(len(t), dtype=np.int64), t, e, interval_s, cfg, step_kwh=step)
    cur = np.full(len(iv), amps)
    rules.zero_with_current(iv, iv.meter, iv.start, cur, cfg, interval_s=interval_s, step_kwh=step)
    return iv


def flagged(iv: rules.Intervals, bit: int) -> np.ndarray:
    return (iv.flags & bit) != 0


# ---------------------------------------------------------------- zero with current


def test_small_load_over_seconds_does_not_move_the_register_and_is_no_fault():
    """The demo's false alarm: 1.2 kW read every 2 s into 5 s intervals, 0.01 kWh register."""
    t, e = register(1.2, 240, 2.0, 0.01)
    iv = judge_zero(t, e, amps=1.2 / 0.22 / 0.95, interval_s=5, step=0.01)
    assert (iv.kwh == 0).sum() > 30  # most 5-second intervals read nothing ...
    assert not flagged(iv, rules.ZERO_WITH_CURRENT).any()  # ... and none is a fault
    # judged interval by interval, as before the evidence window, they would all have fired
    one_step = ValidationConfig(evidence_steps=1e-9)
    assert flagged(judge_zero(t, e, 5.7, 5, 0.01, one_step), rules.ZERO_WITH_CURRENT).sum() > 30


def test_stuck_register_fires_once_the_current_should_have_moved_it():
    t, e = register(1.2, 600, 2.0, 0.01)
    e[t >= T0 + 60] = e[t >= T0 + 60][0]  # stuck from 60 s on, 5.7 A still flowing
    iv = judge_zero(t, e, amps=5.7, interval_s=5, step=0.01)
    fired = iv.start[flagged(iv, rules.ZERO_WITH_CURRENT)] - T0
    # 5.7 A x 207 V x 0.5 carries 2 x 0.01 kWh in 122 s: a 540 s run is flagged whole
    assert fired.min() <= 65 and fired.max() >= 590
    # the same run cut short (stuck only 100 s) is too little evidence
    t2, e2 = register(1.2, 160, 2.0, 0.01)
    e2[t2 >= T0 + 60] = e2[t2 >= T0 + 60][0]
    assert not flagged(judge_zero(t2, e2, 5.7, 5, 0.01), rules.ZERO_WITH_CURRENT).any()


def test_run_is_as_weak_as_its_smallest_current_and_breaks_on_gaps():
    iv = actual_intervals(np.zeros(6), T0 + 900.0 * np.array([0, 1, 2, 4, 5, 6]), np.zeros(6))
    # 0.6 A over one 15-min interval: 0.6 x 207 x 0.5 x 0.25 h = 0.0155 kWh < 0.02; two: 0.031
    amps = np.array([0.6, 0.6, 0.6, 0.6, 0.4, 0.6])
    rules.zero_with_current(iv, iv.meter, iv.start, amps, CFG, interval_s=900)
    assert list(flagged(iv, rules.ZERO_WITH_CURRENT)) == [True, True, True, False, False, False]


@settings(max_examples=150, deadline=None)
@given(
    kw=st.floats(0.05, 12.0),
    pf=st.floats(0.5, 1.0),
    step=st.sampled_from([0.001, 0.01, 0.1]),
    interval_s=st.sampled_from([5, 60, 300, 900]),
    every=st.sampled_from([1.0, 2.0, 10.0, 60.0]),
    volts=st.floats(207.0, 253.0),
)
def test_a_healthy_register_never_looks_stuck(kw, pf, step, interval_s, every, volts):
    """Whatever the load, power factor, register step, interval and sampling: a register that
    counts what flows is never flagged (its flat spans carry less than one step)."""
    seconds = min(6 * 3600.0, 400 * every)
    if seconds < 2 * interval_s:
        return
    t, e = register(kw, seconds, every, step)
    iv = judge_zero(t, e, amps=kw * 1000 / (volts * pf), interval_s=interval_s, step=step)
    assert not flagged(iv, rules.ZERO_WITH_CURRENT).any()


@settings(max_examples=150, deadline=None)
@given(
    amps=st.floats(0.6, 60.0),
    step=st.sampled_from([0.001, 0.01, 0.1]),
    interval_s=st.sampled_from([5, 60, 300, 900]),
)
def test_a_stuck_register_is_found_when_the_evidence_suffices(amps, step, interval_s):
    need_h = CFG.evidence_steps * step / (amps * 207.0 * 0.5 / 1000.0)
    intervals = int(np.ceil(need_h * 3600 / interval_s)) + 1
    if intervals > 2000:
        return
    t = T0 + np.arange(0.0, (intervals + 1) * interval_s + 1, interval_s / 2)
    iv = judge_zero(t, np.full(len(t), 5000.0), amps, interval_s, step)
    assert flagged(iv, rules.ZERO_WITH_CURRENT).all()


# ---------------------------------------------------------------- surge / drop


def _flat_history(kwh: float, days: int = 10) -> rules.Intervals:
    n = days * 96
    rng = np.random.default_rng(7)
    kwh = np.round(kwh * rng.normal(1.0, 0.05, n) / 0.4) * 0.4
    return actual_intervals(np.zeros(n), T0 + 900.0 * np.arange(n), kwh)


def test_one_step_of_a_coarse_ct_register_is_not_a_surge():
    """A CT meter (0.01 kWh x ratio 40 = 0.4 kWh a step): intervals jump by whole steps."""
    hist = _flat_history(4.0)
    base = rules.baseline(hist.meter, hist.start, hist.kwh, CFG.tod_buckets)
    probe = hist.take(np.arange(96 * 9, 96 * 9 + 8))
    probe.kwh[:] = [4.4, 3.6, 4.4, 4.0, 4.8, 4.0, 3.6, 4.4]  # within a step or two of 4.0
    rules.surge_drop(probe, base, CFG, interval_s=900, step_kwh=0.4)
    assert probe.flags.sum() == 0
    probe.kwh[3] = 9.6  # a real surge still is one
    rules.surge_drop(probe, base, CFG, interval_s=900, step_kwh=0.4)
    assert list(np.flatnonzero(flagged(probe, rules.SURGE))) == [3]


def test_sustained_drop_is_found_over_its_evidence_window():
    """A drop too small for one interval (noise 15 %) shows over an hour of intervals."""
    rng = np.random.default_rng(3)
    n = 10 * 96
    kwh = np.round(0.4 * rng.normal(1.0, 0.15, n), 2)
    hist = actual_intervals(np.zeros(n), T0 + 900.0 * np.arange(n), kwh)
    base = rules.baseline(hist.meter, hist.start, hist.kwh, CFG.tod_buckets)
    probe = hist.take(np.arange(96 * 9 + 40, 96 * 9 + 48))
    probe.kwh[:] = 0.4  # the usual, around ...
    probe.kwh[2:6] = 0.12  # ... 70 % less for an hour: about 4.7 robust deviations each
    single = ValidationConfig(max_window_intervals=1)
    alone = probe.take(np.arange(len(probe)))
    rules.surge_drop(alone, base, single, interval_s=900)
    assert not flagged(alone, rules.DROP).any()
    rules.surge_drop(probe, base, CFG, interval_s=900)
    assert list(np.flatnonzero(flagged(probe, rules.DROP))) == [2, 3, 4, 5]


# ---------------------------------------------------------------- register noise


def test_backward_move_within_one_step_is_read_noise():
    t, e = register(1.0, 7200, 60.0, 0.01)
    e[40:] -= 0.01  # a float register's last digit flickers down for good
    e[70] -= 0.008  # and once more, for one read
    iv, reg = rules.derive(np.zeros(len(t), dtype=np.int64), t, e, 900, CFG, step_kwh=0.01)
    assert iv.flags.sum() == 0 and len(reg.event_index) == 0
    assert np.all(iv.kwh >= 0)
    coarse = e.copy()
    coarse[40:] -= 5.0  # five hundred steps back is a register event, as before
    iv, _ = rules.derive(np.zeros(len(t), dtype=np.int64), t, coarse, 900, CFG, step_kwh=0.01)
    assert flagged(iv, rules.REPLACEMENT).sum() == 1


# ---------------------------------------------------------------- the step of a meter


def test_step_is_declared_else_inferred_else_the_default():
    m = np.repeat(np.arange(5), 20)
    k = np.arange(20)
    e = np.concatenate(
        [
            np.round(1000 + k * 0.03, 2),  # BCD XXXXXX.XX: 0.01
            1000.5 + k * 0.3,  # one decimal: 0.1
            np.float32(100000 + k * 0.013).astype(np.float64),  # float32 near 1e5: 2^-7
            np.full(20, 5.0),  # stuck: no changes, nothing to infer
            np.round(1000 + k * 0.03, 2),
        ]
    )
    declared = resolution.declared_step(
        np.array([np.nan] * 4 + [0.01]), np.array([np.nan] * 4 + [40.0]), 0.01
    )
    step = resolution.register_step(m, e, declared, 0.01)
    assert list(step) == pytest.approx([0.01, 0.1, 2.0**-7, 0.01, 0.4])
    # a CT ratio without a resolution applies to the default step
    assert resolution.declared_step(np.array([np.nan]), np.array([40.0]), 0.01)[0] == 0.4


@settings(max_examples=200, deadline=None)
@given(
    grid=st.sampled_from([1.0, 0.1, 0.01, 0.001]),
    counts=st.lists(st.integers(0, 10**8), min_size=9, max_size=40, unique=True),
)
def test_inferred_grid_holds_every_read_and_is_no_finer_than_the_register(grid, counts):
    e = np.sort(np.array(counts, dtype=np.float64)) * grid
    e = np.round(e, 3)
    step = resolution.inferred_step(np.zeros(len(e), dtype=np.int64), e, 1)[0]
    assert step >= grid - 1e-12
    q = e / step
    assert np.allclose(q, np.round(q), rtol=0, atol=1e-6 * np.maximum(1, np.abs(q)).max())


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="register_step_kwh"):
        ValidationConfig(register_step_kwh=0)
    with pytest.raises(ConfigError, match="zero_min_power_factor"):
        ValidationConfig(zero_min_power_factor=1.5)
