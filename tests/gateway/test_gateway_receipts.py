"""End-to-end receipts on the real broker, with a fake collector: a batch leaves the gateway's
store only when a receipt on its own topic names it; without one it is sent again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from gateway_helpers import gateway_config, record, rtu_meters, wait_for

from gateway import Gateway, config_from_dict
from gateway.store import Store
from meterhub import wire
from meterhub.settings import MqttSettings


def test_receipt_wire_format() -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    payload = wire.encode_receipt("gw1", "north", [(1, 4), (7, 7)], at)
    assert payload == (b'{"schema":1,"gateway":"gw1","site":"north","ranges":[[1,4],[7,7]],'
                       b'"at":"2030-01-02T03:04:05.000Z"}')
    assert wire.decode_receipt(payload) == wire.Receipt("gw1", "north", ((1, 4), (7, 7)), at)
    assert wire.parse_topic("meterhub/v1/north/gw1/receipt") == ("north", "gw1", "receipt")
    for bad in ('{"schema":1,"gateway":"gw1","site":"n","ranges":[[4,1]],"at":"2030-01-01Z"}',
                '{"schema":1,"gateway":"gw1","site":"n","ranges":[[1,true]],"at":"x"}',
                '{"schema":1,"gateway":"gw1","site":"n","ranges":{},"at":"x"}'):
        with pytest.raises(wire.WireError, match=r"receipt\.ranges"):
            wire.decode_receipt(bad)


def test_store_keeps_sent_batches_until_confirmed(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite3", max_batches=100)
    for _ in range(3):
        store.seal(lambda seq: b"%d" % seq, 1)
    assert [b.seq for b in store.due(now=0)] == [1, 2, 3]
    store.sent(1, lambda attempts: 1000.0)
    store.sent(2, lambda attempts: -1.0)  # overdue: due again at once
    assert [(b.seq, b.attempts) for b in store.due(now=time.time())] == [(2, 1), (3, 0)]
    assert [b.seq for b in store.due(now=time.time() + 2000)] == [1, 2, 3]
    assert store.unsent() == 1
    assert len(store.confirmed([(1, 2), (9, 12)])) == 2
    assert store.depth() == (1, 1)
    store.close()


def test_a_state_file_from_before_receipts_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE batches (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL, "
               "readings INTEGER NOT NULL, sealed_at REAL NOT NULL)")
    db.execute("INSERT INTO batches VALUES (5, x'00', 2, 0)")
    db.commit()
    db.close()
    store = Store(path, max_batches=100)
    assert [(b.seq, b.attempts) for b in store.due(now=0)] == [(5, 0)]
    store.close()


async def _publish(mqtt: MqttSettings, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(mqtt.host, mqtt.port) as client:
        await client.publish(topic, payload, qos=1)


@pytest.mark.integration
async def test_batches_wait_for_receipts_and_are_resent_without(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    rtu = sim_bus("modbus", rtu_meters(1))
    data = gateway_config(site, None, rtu, poll_s=0.1, batch_s=0.2)
    data["buffer"] = {"receipt_timeout_s": 0.5}
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    store = tmp_path / "gw1.sqlite3"
    stop = asyncio.Event()
    async with record(mqtt, site, confirm=False) as seen:  # a collector that never confirms
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: Counter(seen.seqs())[1] >= 2, 15, "batch 1 sent again")
        assert gateway.stats.batches_resent >= 1
        kept = Store(store, max_batches=10).depth()[0]
        assert kept >= 2, "nothing confirmed, nothing deleted"

        # receipts that are not this gateway's are ignored
        sent = max(seen.seqs())
        other = wire.encode_receipt("gw2", site, [(1, sent)], datetime.now(UTC))
        await _publish(mqtt, wire.topic(site, "gw1", "receipt"), other)  # wrong gateway
        await _publish(mqtt, wire.topic(site, "gw2", "receipt"), other)  # wrong topic
        await _publish(mqtt, wire.topic(site, "gw1", "receipt"), b'{"schema":1,"ranges":"x"}')
        await wait_for(lambda: gateway.stats.receipts_ignored >= 2, 10, "ignored receipts")
        assert gateway.stats.batches_confirmed == 0

        # the collector's receipt: those batches go, and are not sent again
        receipt = wire.encode_receipt("gw1", site, [(1, sent)], datetime.now(UTC))
        await _publish(mqtt, wire.topic(site, "gw1", "receipt"), receipt)
        await wait_for(lambda: gateway.stats.batches_confirmed == sent, 10, "confirmed")
        count = len(seen.batches)
        await asyncio.sleep(1.5)  # > the receipt timeout
        later = seen.seqs()[count:]
        assert all(seq > sent for seq in later), "a confirmed batch was sent again"
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.integration
async def test_receipts_off_deletes_at_puback(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    rtu = sim_bus("modbus", rtu_meters(1))
    data = gateway_config(site, None, rtu, poll_s=0.1, batch_s=0.2)
    data["buffer"] = {"receipts": False}
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site, confirm=False) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: len(seen.batches) >= 3, 15, "three batches")
        stop.set()
        await asyncio.wait_for(task, 15)
    assert Store(tmp_path / "gw1.sqlite3", max_batches=10).depth()[0] == 0
    assert len(set(seen.seqs())) == len(seen.seqs()), "each sent once"
    assert seen.statuses[-1].health["buffer"]["receipts"] is False
