"""The clock-skew rule's lookup: an interval is judged by its meter's newest clock check at
or before the interval's end, if not older than the validity window (checked against a
plain loop)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from collector.vee.rules import latest_before

times = st.integers(min_value=0, max_value=50).map(lambda n: n * 60.0)
checks = st.lists(st.tuples(st.integers(0, 2), times, st.floats(-500, 500)), max_size=12,
                  unique_by=lambda c: (c[0], c[1]))
asks = st.lists(st.tuples(st.integers(0, 2), times), max_size=12)


def _loop(asked: list[tuple[int, float]], found: list[tuple[int, float, float]],
          max_age: float) -> list[float]:
    out = []
    for meter, at in asked:
        best = [c for c in found if c[0] == meter and c[1] <= at and at - c[1] <= max_age]
        out.append(max(best, key=lambda c: c[1])[2] if best else math.nan)
    return out


@given(asks, checks, st.sampled_from([0.0, 60.0, 600.0, 1e9]))
def test_latest_before_matches_a_plain_loop(asked, found, max_age) -> None:
    got = latest_before(np.array([a[0] for a in asked], dtype=np.int64),
                        np.array([a[1] for a in asked]),
                        np.array([c[0] for c in found], dtype=np.int64),
                        np.array([c[1] for c in found]),
                        np.array([c[2] for c in found]), max_age)
    want = _loop(asked, found, max_age)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (math.isnan(g) and math.isnan(w)) or g == w


def test_a_check_speaks_for_the_intervals_after_it() -> None:
    got = latest_before(np.array([0, 0, 0, 1]), np.array([100.0, 900.0, 5000.0, 900.0]),
                        np.array([0, 0]), np.array([200.0, 800.0]), np.array([130.0, -2.0]),
                        3600.0)
    assert np.isnan(got[0]) and got[1] == -2.0 and np.isnan(got[2]) and np.isnan(got[3])
