"""The collector's /metrics: ingest counters, commit latency, dead letters by reason."""

from __future__ import annotations

from typing import Any

from collector_helpers import (
    T0,
    batch_payload,
    config,
    minutes,
    reading,
    running,
    subscribed,
    wait_until,
)

from collector.metrics import CollectorMetrics
from meterhub import wire
from meterhub.metrics import metrics_endpoint

P = "meterhub_collector_"


async def test_collector_metrics(db_url: str, mqtt: Any, site: str, pub: Any, scrape: Any) -> None:
    topic = wire.topic(site, "gw1", "readings")
    async with (
        running(config(db_url, mqtt, site)) as col,
        metrics_endpoint("127.0.0.1:0", lambda: CollectorMetrics(col)) as bound,
    ):
        await subscribed(col)
        pub.publish(
            topic,
            batch_payload(
                site, "gw1", 1, [reading(f"m{i}", T0 + minutes(1), 10.0) for i in range(3)]
            ),
        )
        pub.publish(topic, b'{"schema":1,')  # truncated: a dead letter
        await wait_until(
            lambda: col.stats.readings_stored == 3 and col.stats.dead_letters == 1,
            what="3 stored, 1 dead letter",
        )
        m = await scrape(bound)
    assert m[(P + "up", ())] == 1
    assert m[(P + "readings_stored_total", ())] == 3
    assert m[(P + "batches_committed_total", ())] >= 1
    dead = {
        dict(labels)["reason"]: v
        for (name, labels), v in m.items()
        if name == P + "dead_letters_total"
    }
    kept = {
        dict(labels)["reason"]: v
        for (name, labels), v in m.items()
        if name == P + "dead_letters_kept"
    }
    assert sum(dead.values()) == 1 and kept == dead, (dead, kept)
    assert m[(P + "commit_latency_seconds_count", ())] >= 1
    assert 0 <= m[(P + "seconds_since_commit", ())] < 60
