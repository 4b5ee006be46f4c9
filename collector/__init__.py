"""Backend collector: MQTT ingest into PostgreSQL, validation (VEE), review queue.

Public face: :class:`CollectorConfig`, :class:`ValidationConfig`, :class:`Collector` (with
``stats``), and the review helpers; everything else is machinery.
"""

from collector.config import CollectorConfig, ConfigError, ValidationConfig
from collector.service import Collector, CollectorStats

__all__ = [
    "Collector",
    "CollectorConfig",
    "CollectorStats",
    "ConfigError",
    "ValidationConfig",
]
