"""Billing's Prometheus metrics: the engine's counters, and commands read from the database.

Command states and latencies are site-wide facts kept in ``billing_commands`` and its audit
trail, so every engine of a site reports the same figures: scrape one, or aggregate with
``max``. The latency histogram starts with the verifications after the exporter started.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
from prometheus_client import Histogram

from billing.lifecycle import CommandState
from meterhub.metrics import (
    LATENCY_BUCKETS_S,
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

    from billing.engine import BillingEngine

P = "meterhub_billing_"

_STATES = """SELECT purpose, state, count(*) FROM billing_commands GROUP BY purpose, state"""
# commands verified since the cursor: created -> the ack that verified them
_VERIFIED = """
SELECT a.audit_id, c.purpose, extract(epoch FROM a.at - c.created_at)::float8
FROM billing_command_audit a JOIN billing_commands c USING (command_id)
WHERE a.audit_id > %s AND a.to_state = 'verified'
ORDER BY a.audit_id LIMIT 10000"""


class BillingMetrics:
    """``registry`` and ``refresh`` for :func:`meterhub.metrics.serve_metrics`."""

    def __init__(self, engine: BillingEngine) -> None:
        self.engine = engine
        self._states: list[tuple[str, str, int]] = []
        self._cursor: int | None = None
        self.latency = Histogram(
            P + "command_latency_seconds",
            "Command created to its ack verified, by purpose",
            ("purpose",),
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.registry: CollectorRegistry = registry_of(self._collect)

    async def refresh(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.engine.config.database_url, connect_timeout=5, autocommit=True
        ) as conn:
            cur = await conn.execute(_STATES)
            self._states = [(str(p), str(s), int(n)) for p, s, n in await cur.fetchall()]
            if self._cursor is None:
                cur = await conn.execute(
                    "SELECT coalesce(max(audit_id), 0) FROM billing_command_audit"
                )
                self._cursor = int((await cur.fetchone() or (0,))[0])
                return
            while True:
                cur = await conn.execute(_VERIFIED, (self._cursor,))
                rows = await cur.fetchall()
                for audit_id, purpose, seconds in rows:
                    self.latency.labels(purpose).observe(max(0.0, seconds))
                    self._cursor = audit_id
                if len(rows) < 10000:
                    break

    def _collect(self) -> Iterator[Metric]:
        s = self.engine.stats
        yield gauge(
            P + "mqtt_up", "1 while the command link's MQTT session is up", float(s.mqtt_connected)
        )
        yield from counters(
            P,
            (
                ("intervals_charged", "Validated intervals charged", s.intervals_charged),
                ("intervals_unbilled", "Intervals that could not be priced", s.intervals_unbilled),
                ("adjustments", "Adjusting ledger entries", s.adjustments),
                ("commands_sent", "Signed commands published", s.commands_sent),
                ("cutoffs_acked", "Cut-offs verified by an ack", s.cutoffs_acked),
                ("restores_acked", "Restores verified by an ack", s.restores_acked),
                ("alerts_raised", "Balance alerts raised", s.alerts_raised),
                ("tampers", "Relay movements no command explains", s.tampers),
                ("db_outages", "Database outages ridden out", s.errors),
            ),
        )
        yield labelled(
            CounterMetricFamily,
            P + "acks_refused",
            "Acks ignored, by reason",
            ("reason",),
            sorted(((r,), n) for r, n in s.acks_refused.items()),
        )
        counts = {(p, st): n for p, st, n in self._states}
        purposes = sorted({p for p, _ in counts})
        yield labelled(
            GaugeMetricFamily,
            P + "commands",
            "Commands by purpose and state",
            ("purpose", "state"),
            [
                ((p, st.value), counts.get((p, st.value), 0))
                for p in purposes
                for st in CommandState
            ],
        )
        yield task_restarts(P, s.task_restarts)
        yield from self.latency.collect()
