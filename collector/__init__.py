"""Backend collector: MQTT ingest into PostgreSQL, validation (VEE), review queue.

Public face: :class:`CollectorConfig`, :class:`ValidationConfig`, :class:`Collector` (with
``stats``), and the review decision (:func:`decide_review`); what others may read is in
:mod:`collector.read_model`. Everything else is machinery.
"""

from collector.config import CollectorConfig, ConfigError, ValidationConfig
from collector.review import Decided, ReviewError
from collector.review import decide as decide_review
from collector.service import Collector, CollectorStats

__all__ = [
    "Collector",
    "CollectorConfig",
    "CollectorStats",
    "ConfigError",
    "Decided",
    "ReviewError",
    "ValidationConfig",
    "decide_review",
]
