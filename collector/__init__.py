"""Backend collector: MQTT ingest into PostgreSQL, validation (VEE), review queue.

Public face: :class:`CollectorConfig`, :class:`ValidationConfig`, :class:`Collector` (with
``stats``), and the review queue (:mod:`collector.vee.review`, also as ``collector.review``);
everything else is machinery. One reading's way: :mod:`collector.service` takes MQTT messages,
:mod:`collector.parse` checks them (on top of :mod:`meterhub.wire`), :mod:`collector.store`
writes them by COPY (text laid out by :mod:`collector._copy`), :mod:`collector.vee` turns
them into intervals.
"""

from collector.config import CollectorConfig, ConfigError, ValidationConfig
from collector.service import Collector, CollectorStats
from collector.vee import review

__all__ = [
    "Collector",
    "CollectorConfig",
    "CollectorStats",
    "ConfigError",
    "ValidationConfig",
    "review",
]
