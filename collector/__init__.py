"""Backend collector: MQTT ingest into PostgreSQL, validation (VEE), review queue.

Public face: :class:`CollectorConfig`, :class:`ValidationConfig`, :class:`Collector` (with
``stats``), and the review decisions (:func:`decide_review`; :mod:`review_decisions`: reject,
estimate, correct, assign, comment, history, bulk, work orders); what others may read is in
:mod:`collector.read_model`. Everything else is machinery. One reading's way:
:mod:`collector.service` takes MQTT messages, :mod:`collector.parse` checks them (on top of
:mod:`meterhub.wire`), :mod:`collector.store` writes them by binary COPY (built by
:mod:`collector.columns`), :mod:`collector.vee` turns them into intervals.
"""

from collector.config import CollectorConfig, ConfigError, ValidationConfig
from collector.service import Collector, CollectorStats
from collector.vee import decisions as review_decisions
from collector.vee.review import Decided, ReviewError
from collector.vee.review import decide as decide_review

__all__ = [
    "Collector",
    "CollectorConfig",
    "CollectorStats",
    "ConfigError",
    "Decided",
    "ReviewError",
    "ValidationConfig",
    "decide_review",
    "review_decisions",
]
