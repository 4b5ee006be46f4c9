"""A dead meter on a busy simulated RS-485 line (real Modbus RTU driver, wire-time emulation)
must not take more than its share of the line from the meters that answer."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from gateway_helpers import SIM_MODEL, rtu_meters

from gateway.config import BusConfig, MeterConfig
from gateway.drivers import open_driver
from gateway.scheduler import BusWorker
from meterhub.wire import Event, Reading

QUANTITIES = ("energy_import_total", "voltage_a", "current_a", "power_active_total")
WINDOW_S = 6.0


async def _reads_per_meter(sim_bus: Any, dead: bool) -> tuple[Counter[str], list[Event]]:
    """Poll four meters as fast as the line allows for WINDOW_S; the fourth may be dead."""
    meters = rtu_meters(4)
    meters[3].faults.no_reply = dead
    sim = sim_bus("modbus", meters, baud=9600, turnaround_s=0.01)
    bus = BusConfig(
        name="rtu", protocol="modbus", port=sim.port, baud=9600, parity="N",
        timeout_s=0.3, retries=1,  # a dead meter costs 0.6 s of line per attempt
        meters=tuple(MeterConfig(f"m{m.address}", m.address, "modbus", 0.01, QUANTITIES,
                                 SIM_MODEL) for m in meters),
    )
    readings: list[Reading] = []
    events: list[Event] = []
    driver = open_driver(bus)
    worker = BusWorker(bus, driver, on_reading=readings.append, on_event=events.append)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(WINDOW_S)
    worker.stop()
    await task
    await driver.close()
    return Counter(r.meter for r in readings), events


async def test_dead_meter_takes_no_more_than_its_share(sim_bus: Any) -> None:
    healthy, _ = await _reads_per_meter(sim_bus, dead=False)
    with_dead, events = await _reads_per_meter(sim_bus, dead=True)

    assert "m4" not in with_dead
    assert {e.kind for e in events} == {"no_answer"} and all(e.meter == "m4" for e in events)
    # with all four answering, each meter gets a quarter of the line; a dead fourth meter may
    # cost at most that quarter, so the others must read at least as often as then
    per_meter_healthy = sum(healthy[m] for m in ("m1", "m2", "m3")) / 3
    per_meter_with_dead = sum(with_dead[m] for m in ("m1", "m2", "m3")) / 3
    assert per_meter_with_dead >= 0.95 * per_meter_healthy, (healthy, with_dead)
    assert max(with_dead.values()) - min(with_dead.values()) <= 1, "still fair among the rest"
