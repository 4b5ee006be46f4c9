"""The gateway's /metrics while it polls simulated meters and a collector peer confirms."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import gateway_config, record, rtu_meters, wait_for

from gateway import Gateway, config_from_dict
from gateway.metrics import GatewayMetrics
from meterhub.metrics import metrics_endpoint
from meterhub.settings import MqttSettings


@pytest.mark.integration
async def test_gateway_metrics(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path, scrape: Any
) -> None:
    rtu = sim_bus("modbus", rtu_meters(2))
    gateway = Gateway(
        config_from_dict(gateway_config(site, None, rtu, poll_s=0.1, batch_s=0.2)),
        mqtt=mqtt,
        state_dir=tmp_path,
    )
    stop = asyncio.Event()
    async with (
        record(mqtt, site) as _seen,
        metrics_endpoint("127.0.0.1:0", lambda: GatewayMetrics(gateway)) as bound,
    ):
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.stats.batches_confirmed >= 3, 20, "three receipts")
        m = await scrape(bound)
        stop.set()
        await asyncio.wait_for(task, 20)
    P = "meterhub_gateway_"
    assert m[(P + "up", ())] == 1
    reads = {
        dict(labels)["meter"]: v
        for (name, labels), v in m.items()
        if name == P + "meter_reads_total"
    }
    assert len(reads) == 2 and all(v > 0 for v in reads.values()), reads
    assert m[(P + "bus_busy_seconds_total", (("bus", "rtu"),))] > 0
    assert m[(P + "bus_transactions_total", (("bus", "rtu"),))] > 0
    assert m[(P + "batches_confirmed_total", ())] >= 3
    assert m[(P + "store_capacity_batches", ())] > 0
    assert (P + "store_batches", ()) in m
    # every confirmed batch's seal -> receipt time is in the histogram, and is short here
    assert m[(P + "receipt_latency_seconds_count", ())] >= 3
    assert (
        m[(P + "receipt_latency_seconds_bucket", (("le", "10.0"),))]
        == m[(P + "receipt_latency_seconds_count", ())]
    )
