"""The gateway's Prometheus metrics: read from its stats, bus workers and store at scrape time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

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

    from gateway.app import Gateway

P = "meterhub_gateway_"


class GatewayMetrics:
    """``registry`` for :func:`meterhub.metrics.serve_metrics`; ``refresh`` reads the store."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._depth = (0, 0)
        self.registry: CollectorRegistry = registry_of(self._collect)

    async def refresh(self) -> None:
        self._depth = await asyncio.to_thread(self.gateway.store_depth)

    def _collect(self) -> Iterator[Metric]:
        gw, s = self.gateway, self.gateway.stats
        yield gauge(P + "up", "1 while the MQTT session is up", float(gw.connected))
        yield from counters(
            P,
            (
                ("readings_taken", "Readings read from meters", s.readings_taken),
                ("readings_published", "Readings the broker acknowledged", s.readings_published),
                ("batches_sealed", "Batches sealed into the store", s.batches_sealed),
                ("batches_confirmed", "Batches a collector receipt confirmed", s.batches_confirmed),
                (
                    "batches_resent",
                    "Batches published again for want of a receipt",
                    s.batches_resent,
                ),
                ("readings_dropped", "Readings dropped from a full store", s.readings_dropped),
                (
                    "receipts_ignored",
                    "Receipts refused (malformed or not ours)",
                    s.receipts_ignored,
                ),
                ("poll_errors", "Failed meter transactions", s.poll_errors),
                ("mqtt_connects", "MQTT sessions opened", s.connects),
            ),
        )
        yield labelled(
            CounterMetricFamily,
            P + "commands",
            "Relay and clock commands by outcome",
            ("outcome",),
            [
                (("done",), s.commands_done),
                (("repeated",), s.commands_repeated),
                (("refused",), s.commands_refused),
                (("failed",), s.commands_failed),
            ],
        )
        batches, readings = self._depth
        yield gauge(P + "store_batches", "Sealed batches waiting for a receipt", batches)
        yield gauge(P + "store_readings", "Readings in those batches", readings)
        yield gauge(
            P + "store_capacity_batches",
            "Batches the store keeps before dropping",
            gw.config.buffer.max_batches,
        )
        workers = gw.bus_workers()
        yield labelled(
            CounterMetricFamily,
            P + "bus_busy_seconds",
            "Seconds the bus carried a transaction (rate() is the utilisation)",
            ("bus",),
            [((n,), w.busy_s) for n, w in workers.items()],
        )
        yield labelled(
            CounterMetricFamily,
            P + "bus_transactions",
            "Transactions on the bus",
            ("bus",),
            [((n,), w.transactions) for n, w in workers.items()],
        )
        meters = [(n, mid, h) for n, w in workers.items() for mid, h in w.health.items()]
        yield labelled(
            CounterMetricFamily,
            P + "meter_reads",
            "Successful reads per meter",
            ("bus", "meter"),
            [((n, m), h.reads_ok) for n, m, h in meters],
        )
        yield labelled(
            CounterMetricFamily,
            P + "meter_errors",
            "Failed reads per meter",
            ("bus", "meter"),
            [((n, m), h.errors) for n, m, h in meters],
        )
        yield labelled(
            GaugeMetricFamily,
            P + "meter_consecutive_failures",
            "Failures since the meter last answered",
            ("bus", "meter"),
            [((n, m), h.consecutive_failures) for n, m, h in meters],
        )
        yield task_restarts(P, {n: h.restarts for n, h in gw.supervisor.tasks.items()})
        yield from s.receipt_latency.collect()
