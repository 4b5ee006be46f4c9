"""Validation rules on hand-made series (tables of expected flags) and properties."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import ValidationConfig
from collector.vee import estimate, rules

CFG = ValidationConfig()
T0 = 1772409600.0  # 2026-03-02 00:00 UTC, a Monday
IV_S = 900


def series(kwh_per_h: float = 1.0, hours: float = 2.0, step: float = 60.0,
           start: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    t = T0 + np.arange(0, hours * 3600 + 1, step)
    return t, start + (t - T0) / 3600 * kwh_per_h


def run(t: np.ndarray, e: np.ndarray, cfg: ValidationConfig = CFG) -> rules.Intervals:
    iv, _ = rules.derive(np.zeros(len(t), dtype=np.int64), t, e, IV_S, cfg)
    return iv


def names(flags: int) -> set[str]:
    return {name for bit, name in rules.RULES.items() if flags & bit}


# ---------------------------------------------------------------- register going backwards


def _glitch_dip():
    t, e = series()
    e[30] -= 5.0
    return t, e


def _glitch_spike():
    t, e = series()
    e[30] += 50.0
    return t, e


def _rollover():
    t, e = series(start=999_999.5)
    e = np.where(e >= 1_000_000, e - 1_000_000, e)
    return t, e


def _reset():
    t, e = series()
    e[60:] = e[60:] - e[60] + 0.01
    return t, e


def _replacement():
    t, e = series()
    e[60:] = e[60:] - e[60] + 400.0
    return t, e


@pytest.mark.parametrize(
    ("make", "rule", "total"),
    [
        (_glitch_dip, "register_glitch", 2.0),
        (_glitch_spike, "register_glitch", 2.0),
        (_rollover, "register_rollover", 2.0),
        # reset: counted again from zero (0.01 at the reset read instead of 1/60)
        (_reset, "register_reset", 2.0 - 1 / 60 + 0.01),
        # replacement: the step itself is unknown and counted as zero
        (_replacement, "register_replacement", 2.0 - 1 / 60),
    ],
)
def test_backwards_register_is_told_apart(make, rule, total):
    t, e = make()
    iv = run(t, e)
    fired = set().union(*(names(int(f)) for f in iv.flags))
    assert fired == {rule}
    assert np.all(iv.kwh >= 0)
    assert iv.kwh.sum() == pytest.approx(total, abs=1e-6)
    held = [bool(f & rules.HOLDS) for f in iv.flags if f]
    assert held == [rule in ("register_reset", "register_replacement")]


def test_backwards_step_on_newest_read_waits_for_the_next_read():
    t, e = series()
    e[-1] -= 3.0  # could be a glitch or a reset: not judged yet
    iv, reg = rules.derive(np.zeros(len(t), dtype=np.int64), t, e, IV_S, CFG)
    assert not reg.keep[-1]
    assert len(iv) == 7 and not iv.flags.any()  # the last interval waits


# ---------------------------------------------------------------- intervals and gaps


def test_intervals_are_epoch_aligned_and_need_a_read_covering_their_end():
    t, e = series(hours=1.0)
    t, e = t + 300, e  # reads from 00:05 to 01:05
    iv = run(t, e)
    assert list(iv.start - T0) == [900, 1800, 2700]  # 00:15, 00:30, 00:45 (ends 01:00)
    iv = run(t[:-11], e[:-11])  # last read 00:55: 00:45-01:00 is not covered yet
    assert list(iv.start - T0) == [900, 1800]


@pytest.mark.parametrize(
    ("gap_h", "quality", "method"),
    [(0.1, "A", 0), (0.75, "S", 17), (3.0, "S", 17)],  # 3 h: no history, stays linear
)
def test_missing_reads_are_substituted(gap_h, quality, method):
    t, e = series(hours=8)
    keep = ~((t > T0 + 3600) & (t < T0 + 3600 + gap_h * 3600))
    iv = run(t[keep], e[keep])
    gap = iv.take((iv.start >= T0 + 3600) & (iv.start < T0 + 3600 + gap_h * 3600 - 1))
    assert set(gap.quality) == {quality}
    assert set(gap.method) == {method}
    assert iv.kwh.sum() == pytest.approx(8.0)


def test_long_gap_uses_like_day_profile_scaled_to_the_register():
    # Eight days with a 02:00-04:00 peak; day 8 (Monday) loses 02:00-06:00 but the register
    # across the gap says 6 kWh were used (not the usual 2): the profile is scaled to it.
    step = 300.0
    t = T0 + np.arange(0, 8 * 86400, step)
    hour = ((t - T0) % 86400) // 3600
    rate = np.where((hour >= 2) & (hour < 4), 1.0, 0.25)
    day8 = t >= T0 + 7 * 86400
    gap = day8 & (t > T0 + 7 * 86400 + 2 * 3600) & (t < T0 + 7 * 86400 + 6 * 3600)
    rate = np.where(gap, 1.5, rate)
    e = 10 + np.cumsum(rate * step / 3600)
    m = np.zeros((~gap).sum(), dtype=np.int64)
    iv, _ = rules.derive(m, t[~gap], e[~gap], IV_S, CFG)
    a = (iv.quality == "A")
    estimate.estimate_like_day(iv, iv.meter[a], iv.start[a], iv.kwh[a], CFG, IV_S)
    est = iv.take((iv.flags & rules.MISSING).astype(bool))
    assert set(est.method) == {rules.METHOD_LIKE_DAY}  # one previous Monday
    register_diff = e[~gap][np.searchsorted(t[~gap], est.gap_to[0])] - \
        e[~gap][np.searchsorted(t[~gap], est.gap_from[0])]
    assert est.kwh.sum() == pytest.approx(run(t[~gap], e[~gap]).kwh[
        (iv.flags & rules.MISSING).astype(bool)].sum())
    assert register_diff > 5.5  # ~1.5 kWh/h for 4 h, far above the usual profile
    # shape follows the profile: 02:00-04:00 intervals 4x the 04:00-06:00 ones
    mid = est.take((est.start >= T0 + 7 * 86400 + 2 * 3600 + IV_S)
                   & (est.start < T0 + 7 * 86400 + 4 * 3600))
    late = est.take((est.start >= T0 + 7 * 86400 + 4 * 3600)
                    & (est.start < T0 + 7 * 86400 + 6 * 3600 - IV_S))
    assert mid.kwh.mean() == pytest.approx(4 * late.kwh.mean(), rel=0.05)


def test_holidays_are_estimated_like_sundays():
    assert list(estimate.day_kind(np.array([T0, T0 + 86400]), (date(2026, 3, 3),))) == [0, 6]


# ---------------------------------------------------------------- surge and drop


def _history(days: int = 28, level: float = 0.25, noise: float = 0.02,
             seed: int = 1) -> rules.Intervals:
    rng = np.random.default_rng(seed)
    start = T0 + np.arange(days * 96) * IV_S
    kwh = level + rng.normal(0, noise, len(start)) + 0.5 * (((start % 86400) // 3600) >= 18)
    n = len(start)
    return rules.Intervals(np.zeros(n, dtype=np.int64), start, kwh, kwh.copy(), np.full(n, "A"),
                         np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                         np.zeros(n), np.zeros(n), np.zeros(n))


@pytest.mark.parametrize(
    ("at_hour", "kwh", "expected"),
    [
        (3, 0.27, set()),  # normal night
        (3, 1.50, {"surge"}),  # night spike
        (19, 0.80, set()),  # evening peak is normal in the evening (time-of-day aware)
        (3, 0.80, {"surge"}),  # ... but not at night
        (19, 0.00, {"drop"}),  # evening load gone
        (3, 0.00, set()),  # a dark night: under the 0.3 kWh minimum deviation
    ],
)
def test_surge_and_drop_against_own_time_of_day_baseline(at_hour, kwh, expected):
    cfg = ValidationConfig(drop_z=6.0, min_abs_kwh=0.3)
    hist = _history()
    base = rules.baseline(hist.meter, hist.start, hist.kwh, cfg.tod_buckets)
    probe = hist.take(np.array([28 * 96 - 96 + at_hour * 4]))
    probe.kwh[:] = kwh
    rules.surge_drop(probe, base, cfg)
    assert names(int(probe.flags[0])) == expected


def test_baseline_matches_numpy_median_and_mad():
    hist = _history(days=10)
    base = rules.baseline(hist.meter, hist.start, hist.kwh, 24)
    bucket = ((hist.start % 86400) // 3600).astype(int)
    for b in (0, 7, 19):
        x = hist.kwh[bucket == b]
        assert base.median[b] == pytest.approx(np.median(x))
        assert base.mad[b] == pytest.approx(np.median(np.abs(x - np.median(x))))


def test_estimates_are_not_judged_and_thin_buckets_give_no_verdict():
    cfg = ValidationConfig(min_baseline_samples=8)
    hist = _history(days=1)  # 4 samples per hour bucket: too few
    base = rules.baseline(hist.meter, hist.start, hist.kwh, cfg.tod_buckets)
    probe = hist.take(np.array([12]))
    probe.kwh[:] = 50.0
    rules.surge_drop(probe, base, cfg)
    assert probe.flags[0] == 0
    hist = _history()
    base = rules.baseline(hist.meter, hist.start, hist.kwh, cfg.tod_buckets)
    probe = hist.take(np.array([12]))
    probe.kwh[:] = 50.0
    probe.quality[:] = "S"
    rules.surge_drop(probe, base, cfg)
    assert probe.flags[0] == 0


# ---------------------------------------------------------------- reading rules


def test_zero_consumption_while_current_flows():
    t, e = series(kwh_per_h=0.0)
    iv = run(t, e)
    amps_meter = np.zeros(2, dtype=np.int64)
    amps_start = iv.start[:2]
    rules.zero_with_current(iv, amps_meter, amps_start, np.array([3.0, 0.1]), CFG)
    assert [names(int(f)) for f in iv.flags[:3]] == [{"zero_with_current"}, set(), set()]


def test_many_meters_at_once_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    ms, ts, es = [], [], []
    for k in range(5):
        t = T0 + np.sort(rng.uniform(0, 86400, 300))
        e = 100 * k + np.cumsum(rng.exponential(0.01, 300))
        ms.append(np.full(300, k)), ts.append(t), es.append(e)
    together, _ = rules.derive(np.concatenate(ms), np.concatenate(ts), np.concatenate(es),
                               IV_S, CFG)
    for k in range(5):
        alone, _ = rules.derive(np.zeros(300, dtype=np.int64), ts[k], es[k], IV_S, CFG)
        mine = together.take(together.meter == k)
        assert np.allclose(mine.kwh, alone.kwh) and np.array_equal(mine.start, alone.start)
        assert np.array_equal(mine.flags, alone.flags)


# ---------------------------------------------------------------- properties


@st.composite
def registers(draw):
    n = draw(st.integers(3, 80))
    gaps = draw(st.lists(st.floats(1, 5000), min_size=n - 1, max_size=n - 1))
    use = draw(st.lists(st.floats(0, 3), min_size=n - 1, max_size=n - 1))
    t = T0 + draw(st.floats(0, 900)) + np.concatenate([[0.0], np.cumsum(gaps)])
    e = draw(st.floats(0, 5000)) + np.concatenate([[0.0], np.cumsum(use)])
    return t, e


@settings(max_examples=200, deadline=None)
@given(registers(), st.data())
def test_interval_sum_equals_register_difference_over_any_window(reg, data):
    t, e = reg
    iv = run(t, e)
    if len(iv) == 0:
        return
    a = data.draw(st.integers(0, len(iv) - 1))
    b = data.draw(st.integers(a, len(iv) - 1))
    lo, hi = iv.start[a], iv.start[b] + IV_S
    expected = np.interp(hi, t, e) - np.interp(lo, t, e)
    assert iv.kwh[a:b + 1].sum() == pytest.approx(expected, rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(registers(), st.integers(1, 4), st.data())
def test_estimation_never_makes_the_register_go_backwards(reg, weeks, data):
    t, e = reg
    # history: random same-slot values a week before, then a long gap forced in the middle
    cfg = ValidationConfig(linear_max_s=data.draw(st.sampled_from([0, 600, 3600])),
                           like_day_weeks=weeks)
    iv = run(t, e, cfg)
    if len(iv) == 0:
        return
    hist_start = np.concatenate([iv.start - 7 * 86400 * w for w in range(1, weeks + 1)])
    hist_kwh = np.array(data.draw(st.lists(st.floats(0, 10), min_size=len(hist_start),
                                           max_size=len(hist_start))))
    total = iv.kwh.sum()
    estimate.estimate_like_day(iv, np.zeros(len(hist_start), dtype=np.int64), hist_start, hist_kwh,
                          cfg, IV_S)
    assert np.all(iv.kwh >= 0)  # cumulative register rebuilt from intervals never decreases
    assert iv.kwh.sum() == pytest.approx(total, rel=1e-9, abs=1e-6)


def test_every_rule_names_the_units_of_its_numbers() -> None:
    """The page shows an anomaly's value and expected value with these units: a rule added
    without them would show bare numbers again."""
    assert set(rules.ANOMALY_UNITS) == set(rules.RULES.values())
