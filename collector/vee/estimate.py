"""Estimation of VEE: like-day profiles for intervals without reads.

A gap in the reads is first bridged linearly (:func:`collector.vee.rules.derive`); beyond
``linear_max_s`` the like-day profile shapes the substitute, scaled to the register so the
total stays exactly what the meter counted. The same profile, unscaled, is the forward
estimate of a meter that has gone silent (:func:`collector.vee.passes.estimate_forward`).
Pure numpy, flat arrays of many meters at once, as in :mod:`collector.vee.rules`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np

from collector.config import ValidationConfig
from collector.vee.rules import (
    F64,
    I64,
    METHOD_AVG_LIKE_DAY,
    METHOD_LIKE_DAY,
    MISSING,
    Intervals,
    _sorted_key,
)

WEEK = 7 * 86400.0


def day_kind(day_start: F64, holidays: tuple[date, ...]) -> I64:
    """0..6 weekday (Monday 0), with holidays counted as Sunday (6)."""
    days = np.floor(day_start / 86400).astype(np.int64)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    if holidays:
        hol = np.array([(datetime(h.year, h.month, h.day, tzinfo=UTC).timestamp()) // 86400
                        for h in holidays], dtype=np.int64)
        weekday = np.where(np.isin(days, hol), 6, weekday)
    return weekday


def like_day_profile(m: I64, s: F64, hist_meter: I64, hist_start: F64, hist_kwh: F64,
                     cfg: ValidationConfig, interval_s: int) -> tuple[F64, I64]:
    """Mean kWh of the same slot on the previous ``like_day_weeks`` days of the same kind
    (weekday; holidays count as Sundays) per (meter, start); NaN where there is none. Also
    returns how many days contributed."""
    size = float(interval_s)
    h_order = np.lexsort((hist_start, hist_meter))
    hm, hs, hk = hist_meter[h_order], hist_start[h_order], hist_kwh[h_order]
    base = float(min(hs.min() if len(hs) else s.min(), s.min())) - WEEK * 60
    span = float(max(hs.max() if len(hs) else 0.0, s.max()) - base) + 2 * size
    hkey = _sorted_key(hm, hs, base, span)
    kind = day_kind(s, cfg.holidays)
    samples = np.zeros((len(s), cfg.like_day_weeks))
    have = np.zeros((len(s), cfg.like_day_weeks), dtype=bool)
    # Candidate days: step back a day at a time and keep the first N of the same kind.
    found = np.zeros(len(s), dtype=np.int64)
    for back in range(1, 7 * cfg.like_day_weeks * 2 + 1):
        cand = s - back * 86400.0
        if (found >= cfg.like_day_weeks).all():
            break
        same = (day_kind(cand, cfg.holidays) == kind) & (found < cfg.like_day_weeks)
        if not same.any():
            continue
        key = _sorted_key(m, cand, base, span)
        pos = np.minimum(np.searchsorted(hkey, key), max(len(hkey) - 1, 0))
        hit = same & (hkey[pos] == key) if len(hkey) else np.zeros_like(same)
        rows = np.flatnonzero(same)
        col = found[rows]
        samples[rows, col] = np.where(hit[rows], hk[pos[rows]] if len(hk) else 0.0, 0.0)
        have[rows, col] = hit[rows]
        found[rows] += 1
    n_have = have.sum(axis=1)
    profile = np.divide(samples.sum(axis=1), n_have, out=np.full(len(s), np.nan),
                        where=n_have > 0)
    return profile, n_have.astype(np.int64)


def estimate_like_day(iv: Intervals, hist_meter: I64, hist_start: F64, hist_kwh: F64,
                      cfg: ValidationConfig, interval_s: int) -> None:
    """Replace linear substitutes in gaps longer than ``linear_max_s`` by a like-day profile.

    The profile is the mean of the same time of day on the same kind of day (weekday; holidays
    count as Sundays) over the previous weeks, from actual intervals. Each gap's estimate is
    scaled to the register difference across it, so the total is exactly what the register
    says. Without history the linear substitute stays and the reason says so.
    """
    long_gap = (iv.flags & MISSING).astype(bool) & (iv.gap > cfg.linear_max_s)
    idx = np.flatnonzero(long_gap)
    if len(idx) == 0:
        return
    m, s = iv.meter[idx], iv.start[idx]
    profile, n_have = like_day_profile(m, s, hist_meter, hist_start, hist_kwh, cfg, interval_s)
    # Per gap (a run of intervals sharing gap_from/gap_to on one meter): scale to the register.
    run_key = np.stack([m.astype(np.float64), iv.gap_from[idx], iv.gap_to[idx]])
    _, run = np.unique(run_key, axis=1, return_inverse=True)
    run = run.ravel()
    total = np.bincount(run, weights=iv.kwh[idx])
    usable = ~np.isnan(profile)
    run_ok = np.bincount(run, weights=(~usable).astype(float)) == 0  # full profile for the run
    psum = np.bincount(run, weights=np.where(usable, profile, 0.0))
    ok = run_ok[run] & (psum[run] > 0)
    share = np.divide(np.where(usable, profile, 0.0), psum[run], out=np.zeros(len(idx)),
                      where=psum[run] > 0)
    est = total[run] * share
    target = idx[ok]
    iv.kwh[target] = est[ok]
    single = n_have[ok] == 1
    iv.method[target] = np.where(single, METHOD_LIKE_DAY, METHOD_AVG_LIKE_DAY)
