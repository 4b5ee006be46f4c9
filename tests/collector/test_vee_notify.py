"""The collector wakes billing: a validation pass that writes intervals notifies
``meterhub.channels.INTERVALS`` and a review decision that releases held intervals notifies
``HOLDS_RELEASED`` (in the writing transaction, so at its commit)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from collector_helpers import T0, batch_payload, config, reading, running, subscribed, wait_until

from collector.config import ValidationConfig
from collector.vee import review
from meterhub import channels, wire

pytestmark = pytest.mark.integration


def _notes(listener: psycopg.Connection) -> list[tuple[str, str]]:
    return [(n.channel, n.payload) for n in listener.notifies(timeout=0.5)]


async def test_intervals_and_released_holds_notify(db_url, mqtt, site, pub) -> None:
    cfg = ValidationConfig(min_baseline_samples=8, tod_buckets=1, late_after_s=1e9)
    # 1 kWh/h for 10 hours, with a 20 kWh/h surge over 08:15-08:30 (held for review)
    kwh, reads = 100.0, []
    for m in range(0, 601, 5):
        kwh += (20.0 if 495 < m <= 510 else 1.0) * 5 / 60 if m else 0.0
        reads.append(reading("m1", T0 + timedelta(minutes=m), round(kwh, 6)))
    with psycopg.connect(db_url, autocommit=True) as listener:
        for channel in (channels.INTERVALS, channels.HOLDS_RELEASED):
            listener.execute(f"LISTEN {channel}")
        async with running(config(db_url, mqtt, site, validate_every_s=0.2, validation=cfg)) as col:
            await subscribed(col)
            pub.publish(wire.topic(site, "gw1", "readings"), batch_payload(site, "gw1", 1, reads))
            await wait_until(lambda: len(review.open_items(db_url)) == 1, what="a review item")
        assert (channels.INTERVALS, "") in _notes(listener)
        item = review.open_items(db_url)[0]["id"]
        assert review.decide(db_url, item, "confirmed", "eng. Li").released == 1
        assert _notes(listener) == [(channels.HOLDS_RELEASED, str(item))]
