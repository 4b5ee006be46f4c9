"""Receipts (issue 12 item 4): after a commit the collector tells each gateway which of its
batches are done (stored, repeated, or refused for good) on the gateway's receipt topic."""

from __future__ import annotations

import json
import queue
import uuid

import paho.mqtt.client as paho
import pytest
from collector_helpers import (
    T0,
    batch_payload,
    config,
    minutes,
    reading,
    rows_payload,
    running,
    subscribed,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion

from meterhub import wire

pytestmark = pytest.mark.integration


@pytest.fixture
def receipts(mqtt, site):
    """Every receipt on this test's site, decoded, in arrival order."""
    got: queue.Queue[tuple[str, wire.Receipt]] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"r-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda _c, _u, m: got.put((m.topic, wire.decode_receipt(m.payload)))
    client.connect(mqtt.host, mqtt.port)
    client.subscribe(wire.subscription("receipt", site), qos=1)
    client.loop_start()
    yield got
    client.disconnect()
    client.loop_stop()


def _ranges(got: queue.Queue[tuple[str, wire.Receipt]], gateway: str) -> set[int]:
    seqs: set[int] = set()
    while not got.empty():
        topic, receipt = got.get_nowait()
        assert topic.endswith(f"/{receipt.gateway}/receipt")
        if receipt.gateway == gateway:
            for first, last in receipt.ranges:
                seqs.update(range(first, last + 1))
    return seqs


async def test_committed_duplicate_and_refused_batches_are_receipted(db_url, mqtt, site, pub,
                                                                     receipts):
    topic = wire.topic(site, "gwR", "readings")
    async with running(config(db_url, mqtt, site)) as col:
        await subscribed(col)
        for seq in (1, 2, 3):
            pub.publish(topic, batch_payload(site, "gwR", seq, [reading("r1", T0 + minutes(seq),
                                                                        float(seq))]))
        pub.publish(topic, batch_payload(site, "gwR", 2, [reading("r1", T0 + minutes(2), 2.0)]))
        # envelope fine, the reading refused: the batch is done for good, receipted too
        bad = json.loads(rows_payload(site, "gwR", 7, [reading("r1", T0, 1.0)]))
        bad["readings"][0]["taken_at"] = "not a time"
        pub.publish(topic, json.dumps(bad).encode())
        # a readings message whose envelope is refused but names its gateway and seq
        pub.publish(topic, json.dumps({"schema": 1, "gateway": "gwR", "site": site, "seq": 9,
                                       "sent_at": "x", "readings": []}).encode())
        # a forged gateway name on gwR's topic: not receipted for anyone
        pub.publish(topic, batch_payload(site, "gwZ", 11, [reading("r9", T0, 1.0)]))
        await wait_until(lambda: col.stats.messages == 7, what="all messages")
        await wait_until(lambda: receipts.qsize() >= 1, what="a receipt")
        await wait_until(lambda: col.stats.receipts_sent <= receipts.qsize(), what="receipts")
    assert _ranges(receipts, "gwR") == {1, 2, 3, 7, 9}


def test_receipt_round_trip():
    at = T0
    payload = wire.encode_receipt("gw-1", "s1", wire.seq_ranges([5, 1, 2, 3, 7]), at)
    assert json.loads(payload) == {"schema": 1, "gateway": "gw-1", "site": "s1",
                                   "ranges": [[1, 3], [5, 5], [7, 7]], "at": wire.utc_iso(at)}
    assert wire.decode_receipt(payload) == wire.Receipt("gw-1", "s1", ((1, 3), (5, 5), (7, 7)),
                                                        at)
    for bad in ([[3, 1]], [], [[1, True]], [[1]], "x"):
        with pytest.raises(wire.WireError):
            wire.decode_receipt(json.dumps({"schema": 1, "gateway": "g", "site": "s",
                                            "ranges": bad, "at": wire.utc_iso(at)}))
