"""The collector's Prometheus metrics: its stats at scrape time, dead letters from the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from meterhub.metrics import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    counters,
    gauge,
    labelled,
    registry_of,
    task_restarts,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from collector.service import Collector

P = "meterhub_collector_"


class CollectorMetrics:
    """``registry`` and ``refresh`` for :func:`meterhub.metrics.serve_metrics`."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self._dead_letters: list[tuple[str, int]] | None = None
        self.registry: CollectorRegistry = registry_of(self._collect)

    async def refresh(self) -> None:
        """Dead letters kept, by reason: the table is shared by every collector of a site."""
        self._dead_letters = None
        async with await psycopg.AsyncConnection.connect(
            self.collector.config.database_url, connect_timeout=5, autocommit=True
        ) as conn:
            cur = await conn.execute(
                "SELECT code, count(*) FROM dead_letters GROUP BY code ORDER BY code"
            )
            self._dead_letters = [(str(code), int(n)) for code, n in await cur.fetchall()]

    def _collect(self) -> Iterator[Metric]:
        s = self.collector.stats
        yield gauge(
            P + "up", "1 while subscribed to the broker", float(self.collector.ready.is_set())
        )
        yield from counters(
            P,
            (
                ("messages", "MQTT messages committed", s.messages),
                ("readings_received", "Readings parsed (duplicates included)", s.readings_received),
                ("readings_stored", "Readings newly stored", s.readings_stored),
                ("batches_committed", "Database transactions committed", s.batches_committed),
                (
                    "duplicate_batches",
                    "Batches already stored (redelivery, resend)",
                    s.duplicate_batches,
                ),
                ("receipts_sent", "Receipts published to gateways", s.receipts_sent),
                ("db_errors", "Failed writes (outages and refused data)", s.db_errors),
                ("intervals_written", "Validated intervals written", s.intervals_written),
            ),
        )
        yield labelled(
            CounterMetricFamily,
            P + "dead_letters",
            "Messages or readings dead-lettered by this process, by reason",
            ("reason",),
            [((code,), n) for code, n in sorted(s.dead_letters_by_code.items())],
        )
        if self._dead_letters is not None:
            yield labelled(
                GaugeMetricFamily,
                P + "dead_letters_kept",
                "Dead letters in the database, by reason",
                ("reason",),
                [((code,), n) for code, n in self._dead_letters],
            )
        if s.last_commit_at is not None:
            yield gauge(
                P + "seconds_since_commit",
                "Ingest lag: time since the last commit",
                (datetime.now(UTC) - s.last_commit_at).total_seconds(),
            )
        yield task_restarts(P, s.task_restarts)
        yield from s.commit_latency.collect()
