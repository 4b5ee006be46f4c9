"""Validation, estimation and editing (VEE) of register reads into billable intervals.

- :mod:`collector.vee.rules`: the validation rules (pure numpy: register cleaning, intervals,
  gaps, surge/drop, reading rules);
- :mod:`collector.vee.estimate`: like-day estimation of intervals without reads;
- :mod:`collector.vee.passes`: the passes against the database that run both and write
  intervals and anomalies;
- :mod:`collector.vee.review`: the review queue a person works through.
"""

from collector.vee.passes import (
    PassResult,
    drop_old_readings,
    estimate_forward,
    revalidate,
    run_pending,
    validate_chunk,
)
from collector.vee.review import Decided, Decision, ReviewError, decide, open_items

__all__ = [
    "Decided",
    "Decision",
    "PassResult",
    "ReviewError",
    "decide",
    "drop_old_readings",
    "estimate_forward",
    "open_items",
    "revalidate",
    "run_pending",
    "validate_chunk",
]
