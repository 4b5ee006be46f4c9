"""Modbus TCP endpoints are polled side by side: each endpoint is a bus with its own worker,
so a slow device on one does not hold up another (real driver, simulated TCP meters)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from gateway_helpers import SIM_MODEL, record, rtu_meters, wait_for

from firmware_sim.modbus_tcp import ModbusTcpServer
from gateway import Gateway, config_from_dict
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration
REPLY_DELAY_S = 0.2


async def test_tcp_devices_are_polled_concurrently(mqtt: MqttSettings, site: str,
                                                   tmp_path: Path) -> None:
    servers = []
    for first in (1, 2, 3):
        meters = rtu_meters(1, first=first)
        meters[0].faults.slow_reply_s = REPLY_DELAY_S
        servers.append(ModbusTcpServer(meters).start())
    try:
        data = {
            "gateway": {"id": "gw1", "site": site, "batch_interval_s": 0.5},
            "buses": [{"name": f"tcp{i}", "protocol": "modbus", "tcp": f"127.0.0.1:{s.port}",
                       "model": SIM_MODEL, "timeout_s": 1.0, "poll_interval_s": 0.01,
                       "report_relay_every": 0,  # count reads only
                       "meters": [{"unit": i}]}
                      for i, s in enumerate(servers, start=1)],
        }
        gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
        stop = asyncio.Event()
        async with record(mqtt, site) as seen:
            task = asyncio.create_task(gateway.run(stop))
            await wait_for(lambda: gateway.stats.readings_taken >= 1, 10, "a first reading")
            started = gateway.stats.readings_taken
            await asyncio.sleep(2.0)
            taken = gateway.stats.readings_taken - started
            stop.set()
            await asyncio.wait_for(task, 15)
    finally:
        for server in servers:
            server.stop()
    # one at a time, 2 s of 0.2 s replies would be ~10 readings in all; side by side ~30
    assert taken >= 24, taken
    per_meter = Counter(r.meter for r in seen.readings)
    assert set(per_meter) == {"gw1-tcp1-1", "gw1-tcp2-2", "gw1-tcp3-3"}
