"""Broker SIGKILL and restart mid-stream (issue 12): with end-to-end receipts, every reading
the gateway sealed is stored exactly once.

Real mosquitto (persistence on, killed before it can save), real PostgreSQL, a real Gateway
polling simulated Modbus RTU and DL/T645 meters on pseudo-terminals, a real Collector. The
gateway keeps polling while the broker is down; after the restart its store must drain to
empty through the collector's receipts, and the database must hold each sealed reading once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import Collector, CollectorConfig
from firmware_sim.fleet import Fleet
from gateway import Gateway, config_from_dict
from gateway.store import Store
from launcher.embedded import _mosquitto_binary, free_port, mosquitto_process

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_mosquitto_binary() is None, reason="needs the mosquitto binary"),
]

QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]
DLT_ADDRESSES = ["000000000001", "000000000002"]
RTU_UNITS = [1, 2]
MODEL = "sim-prepaid-1p"


def _fleet() -> Fleet:
    return Fleet.from_dict({"buses": [
        {"name": "dlt", "protocol": "dlt645-2007", "turnaround_ms": 5,
         "meters": [{"address": a, "energy_kwh": 100.0 + n}
                    for n, a in enumerate(DLT_ADDRESSES)]},
        {"name": "rtu", "protocol": "modbus", "turnaround_ms": 5,
         "meters": [{"unit": u, "model": MODEL, "energy_kwh": 50.0 * u}
                    for u in RTU_UNITS]},
    ]})


def _gateway_config(site: str, fleet: Fleet) -> dict[str, Any]:
    poll = {"timeout_s": 0.3, "retries": 0, "poll_interval_s": 0.4, "quantities": QUANTITIES}
    return {
        "gateway": {"id": "gw1", "site": site, "batch_interval_s": 0.4,
                    "status_interval_s": 1.0},
        # receipts on (the default), resent 2 s after the last try without one; the drain
        # at stop may take a while after an outage
        "buffer": {"receipts": True, "receipt_timeout_s": 2.0, "publish_timeout_s": 30.0},
        "buses": [
            {"name": "dlt", "protocol": "dlt645-2007", "port": fleet.port("dlt"), "baud": 9600,
             "parity": "E", "relay_control": False, **poll,
             "meters": [{"address": a} for a in DLT_ADDRESSES]},
            {"name": "rtu", "protocol": "modbus", "port": fleet.port("rtu"), "baud": 9600,
             "parity": "N", "model": MODEL, **poll,
             "meters": [{"unit": u} for u in RTU_UNITS]},
        ],
    }


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchall()


def _count(db_url: str, sql: str) -> int:
    return int(_rows(db_url, sql)[0][0])


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "plain"])
async def test_broker_sigkill_and_restart_stores_every_sealed_reading_once(
    db_url: str, site: str, tmp_path: Path, shared: bool
) -> None:
    port = free_port()
    broker_dir = tmp_path / "mosquitto"
    state_dir = tmp_path / "gateway"
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(_fleet())
        first = contextlib.ExitStack()
        stack.enter_context(first)
        mqtt, proc = first.enter_context(mosquitto_process(broker_dir, port))

        collector = Collector(CollectorConfig(
            database_url=db_url, mqtt=mqtt, site=site,
            shared_group=f"g{site}" if shared else None,
            client_id=f"col-{uuid.uuid4().hex[:8]}", leave_on_stop=True,
            validate_every_s=None, batch_max_delay_s=0.05, commission_unknown_meters=True,
            receipts=True))
        gateway = Gateway(config_from_dict(_gateway_config(site, fleet), source="test"),
                          mqtt=mqtt, state_dir=state_dir)
        col_stop, gw_stop = asyncio.Event(), asyncio.Event()
        col_task = asyncio.create_task(collector.run(col_stop))
        await asyncio.wait_for(collector.ready.wait(), 15)
        gw_task = asyncio.create_task(gateway.run(gw_stop))
        try:
            # mid-stream: batches flow end to end before the kill
            await _wait(lambda: _count(db_url, "SELECT count(*) FROM gateway_batches") >= 3,
                        20, "batches stored before the kill")
            await asyncio.sleep(1.0)
            proc.kill()  # SIGKILL: no chance to save its persistence file
            await asyncio.to_thread(proc.wait, 5)
            first.close()
            sealed_at_kill = gateway.stats.batches_sealed
            await _wait(lambda: not gateway.connected, 10, "the gateway sees the outage")
            await asyncio.sleep(7.0)  # the gateway polls and seals on with no broker
            assert gateway.stats.batches_sealed > sealed_at_kill + 5, "polled during outage"

            stack.enter_context(mosquitto_process(broker_dir, port))
            await _wait(lambda: gateway.connected and collector.ready.is_set(), 30,
                        "gateway and collector back on the broker")
            await asyncio.sleep(2.0)  # polling goes on after the restart too
            # stop polling: the gateway seals what it read and waits (up to publish_timeout_s)
            # until the collector's receipts have emptied its store
            gw_stop.set()
            await asyncio.wait_for(gw_task, 60)
        finally:
            gw_stop.set()
            col_stop.set()
            await asyncio.gather(gw_task, return_exceptions=True)
            await asyncio.wait_for(col_task, 30)

    stats = gateway.stats
    store = Store(state_dir / "gw1.sqlite3", max_batches=100)
    try:
        left = store.depth()
        last_seq = store.last_seq()
    finally:
        store.close()
    assert left == (0, 0), f"batches never receipted: {left}"
    assert stats.readings_dropped == 0
    assert stats.batches_sealed == last_seq

    seqs = [s for (s,) in _rows(db_url, "SELECT seq FROM gateway_batches WHERE gateway = 'gw1' "
                                        "ORDER BY seq")]
    assert seqs == list(range(1, last_seq + 1)), "no batch missing, none extra"
    assert _count(db_url, "SELECT count(*) FROM seq_gaps") == 0
    assert _count(db_url, "SELECT sum(readings) FROM gateway_batches") == stats.readings_taken

    rows = _count(db_url, "SELECT count(*) FROM readings")  # one row per (meter, ts): the key
    values = _count(db_url, "SELECT count(*) FROM reading_values")
    assert rows == stats.readings_taken, f"{rows} rows for {stats.readings_taken} readings"
    assert values == stats.readings_taken * len(QUANTITIES), (
        f"{values} values for {stats.readings_taken} readings x {len(QUANTITIES)} quantities")
    meters = {m for (m,) in _rows(db_url, "SELECT DISTINCT meter_id FROM reading_values")}
    assert len(meters) == len(DLT_ADDRESSES) + len(RTU_UNITS)
