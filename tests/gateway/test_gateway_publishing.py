"""Gateway against a real broker and simulated buses with the real drivers: batches in order,
status with health and last will, and a broker outage that loses nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import QUANTITIES, dlt_meters, gateway_config, record, rtu_meters, wait_for

from gateway import Gateway, config_from_dict
from launcher.embedded import free_port, mosquitto_broker
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration

async def test_readings_arrive_batched_in_order_with_status(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    dlt = sim_bus("dlt645", dlt_meters(2))
    rtu = sim_bus("modbus", rtu_meters(2))
    gateway = Gateway(config_from_dict(gateway_config(site, dlt, rtu)), mqtt=mqtt,
                      state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: len(seen.batches) >= 4, 15, "four batches")
        stop.set()
        await asyncio.wait_for(task, 15)

    assert seen.seqs() == list(range(1, len(seen.batches) + 1)), "in order, no gap"
    assert gateway.stats.batches_published == len(seen.batches)
    assert gateway.stats.readings_published == len(seen.readings) == gateway.stats.readings_taken
    assert max(len(b.readings) for b in seen.batches) >= 2, "one message per poll cycle"
    meters = {r.meter for r in seen.readings}
    assert meters == {"000000000001", "000000000002", "gw1-rtu-1", "gw1-rtu-2"}
    for reading in seen.readings:
        assert set(reading.values) == set(QUANTITIES)
        assert reading.values["energy_import_total"].unit == "kWh"
        assert reading.values["voltage_a"].unit == "V"
        assert 200 < reading.values["voltage_a"].value < 240
    per_meter_times: dict[str, datetime] = {}
    for reading in seen.readings:
        assert per_meter_times.get(reading.meter, reading.taken_at) <= reading.taken_at
        per_meter_times[reading.meter] = reading.taken_at

    online = [s for s in seen.statuses if s.state == "online"]
    assert online, "status online while running"
    health = online[-1].health
    assert set(health["meters"]) == meters
    assert all(m["errors"] == 0 and m["ok"] >= 1 for m in health["meters"].values())
    assert 0 < health["buses"]["dlt"]["utilisation"] <= 1
    assert health["buffer"]["batches"] >= 0 and health["buffer"]["last_seq"] >= 1
    assert seen.statuses[-1].state == "offline", "graceful stop says offline"
    assert seen.statuses[-1].health["buffer"]["batches"] == 0, "flushed before going offline"


async def test_broker_outage_loses_nothing_and_replays_in_order(
    site: str, sim_bus: Any, tmp_path: Path
) -> None:
    rtu = sim_bus("modbus", rtu_meters(3))
    port = free_port()  # nothing listens here yet
    data = gateway_config(site, None, rtu, poll_s=0.1, batch_s=0.2)
    data["buffer"] = {"replay_rate": 10.0}
    gateway = Gateway(config_from_dict(data), mqtt=MqttSettings("127.0.0.1", port),
                      state_dir=tmp_path / "state")
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await wait_for(lambda: gateway.stats.batches_sealed >= 8, 20, "batches sealed offline")
    assert gateway.stats.batches_published == 0 and not gateway.connected
    taken_offline = gateway.stats.readings_taken
    backlog = gateway.stats.batches_sealed

    with mosquitto_broker(tmp_path / "broker", port) as broker:
        async with record(broker, site) as seen:
            await wait_for(lambda: gateway.stats.readings_published >= taken_offline + 6, 30,
                           "the backlog to drain after the broker came back")
            stop.set()
            await asyncio.wait_for(task, 15)

    assert seen.seqs() == list(range(1, len(seen.batches) + 1)), "replayed in order, no gap"
    assert len(seen.readings) == gateway.stats.readings_taken, "every reading arrived"
    assert gateway.stats.readings_published == gateway.stats.readings_taken
    replay_s = seen.arrived[backlog - 1] - seen.arrived[0]
    assert replay_s >= 0.9 * (backlog - 1) / 10.0, "the backlog is paced at replay_rate"
    taken = [r.taken_at for r in seen.readings if r.meter == "gw1-rtu-1"]
    assert taken == sorted(taken)


async def test_buffer_bounded_drops_oldest_with_event(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    rtu = sim_bus("modbus", rtu_meters(2))
    data = gateway_config(site, None, rtu, poll_s=0.05, batch_s=0.1)
    data["buffer"] = {"max_batches": 10}
    offline = Gateway(config_from_dict(data), mqtt=MqttSettings("127.0.0.1", free_port()),
                      state_dir=tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(offline.run(stop))
    await wait_for(lambda: offline.stats.batches_sealed >= 14, 20, "more batches than fit")
    stop.set()
    await asyncio.wait_for(task, 20)
    assert offline.stats.readings_dropped > 0

    # the same state on a reachable broker: only the newest 10 batches (plus the new ones)
    # arrive, and the drop was reported as an event when it happened
    online = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(online.run(stop))
        await wait_for(lambda: len(seen.batches) >= 12, 15, "the kept batches")
        stop.set()
        await asyncio.wait_for(task, 15)
    first = seen.seqs()[0]
    assert first == offline.stats.batches_sealed - 10 + 1
    assert seen.seqs() == list(range(first, first + len(seen.batches)))
    dropped = [e for e in seen.events if e.kind == "buffer_dropped"]
    assert dropped, "the drop is reported, even across the restart"
    assert sum(e.data["readings"] for e in dropped) == offline.stats.readings_dropped
    assert "dropped the oldest" in dropped[0].detail
    assert online.stats.readings_dropped == offline.stats.readings_dropped, "persisted count"
