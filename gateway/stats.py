"""Counters shared by the gateway's publisher and command executor."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Histogram

from meterhub.metrics import LATENCY_BUCKETS_S


def _receipt_latency() -> Histogram:
    return Histogram("meterhub_gateway_receipt_latency_seconds",
                     "Sealed batch to the collector's receipt naming it",
                     buckets=LATENCY_BUCKETS_S, registry=None)


@dataclass
class GatewayStats:
    """Counters a caller (the demo, a test) can read while the gateway runs."""

    readings_taken: int = 0
    readings_published: int = 0  # readings whose batch the broker acknowledged
    batches_sealed: int = 0
    batches_published: int = 0
    batches_confirmed: int = 0  # deleted on the collector's receipt
    batches_resent: int = 0  # published again: no receipt within the timeout
    receipts_ignored: int = 0  # malformed, or naming another gateway or site
    readings_dropped: int = 0  # dropped from a full buffer
    commands_done: int = 0
    commands_repeated: int = 0
    commands_refused: int = 0  # unsigned, forged, replayed, malformed ...
    commands_failed: int = 0  # a bug while handling one (logged; the next one still runs)
    poll_errors: int = 0
    connects: int = 0
    # sealed -> receipted: the whole trip through broker and collector commit
    receipt_latency: Histogram = field(default_factory=_receipt_latency)
