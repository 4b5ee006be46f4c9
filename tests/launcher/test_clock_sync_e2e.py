"""Meter clocks end to end (issue 17 item 2) and relay capability as data (item 4).

A simulated DL/T645-2007 meter whose clock runs 300 s ahead, on a pseudo-terminal, read by a
real Gateway that checks meter clocks; a real Collector stores the clock checks and its
validation flags the meter's intervals with clock_skew; a real BillingEngine sees the drift,
sends a signed time_sync; the gateway broadcasts the time (08H), reads the clock back and the
ack's read-back verifies the command; the next clock check shows the meter on time. Beside it
a meter configured without a relay: its gateway says so in its status, and billing refuses a
prepaid account on it. Real broker, real PostgreSQL; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing import BillingConfig, BillingEngine, RelaylessMeter, create_account
from collector import Collector, CollectorConfig
from collector.config import ValidationConfig
from firmware_sim.fleet import Fleet
from gateway import Gateway, config_from_dict
from launcher.keys import generate_key_pair
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration

DRIFTED, RELAYLESS = "000000000011", "000000000012"
QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]

# the meter's clock_skew anomalies (layout v2: meters and rules by key)
SKEW_ANOMALIES = ("FROM anomalies a JOIN meters m ON m.meter_key = a.meter"
                  " JOIN vee_rules v ON v.code = a.rule"
                  " WHERE m.meter_id = %s AND v.name = 'clock_skew'")


def _fleet() -> Fleet:
    return Fleet.from_dict({"bus": [
        {"name": "dlt", "protocol": "dlt645-2007", "turnaround_ms": 5,
         "meter": [{"address": DRIFTED, "energy_kwh": 100.0, "speedup": 60.0,
                    "clock_offset_s": 300.0, "clock_drift_ppm": 50.0},
                   {"address": RELAYLESS, "energy_kwh": 50.0, "speedup": 60.0}]},
    ]})


def _gateway_config(site: str, fleet: Fleet, trusted: Path) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw1", "site": site, "batch_interval_s": 0.5,
                    "status_interval_s": 1.0},
        "security": {"trusted_keys": [str(trusted)]},
        "buses": [
            {"name": "dlt", "protocol": "dlt645-2007", "port": fleet.port("dlt"), "baud": 9600,
             "parity": "E", "timeout_s": 0.3, "retries": 1, "poll_interval_s": 0.5,
             "quantities": QUANTITIES, "relay_control": False, "clock_check_s": 10,
             "meters": [{"address": DRIFTED}, {"address": RELAYLESS, "has_relay": False}]},
        ],
    }


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


def _rows(db_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, args).fetchall()


async def test_drift_is_flagged_synced_and_read_back(
    db_url: str, mqtt: MqttSettings, site: str, tmp_path: Path
) -> None:
    key_id, public = generate_key_pair(tmp_path / "billing.pem")
    assert key_id
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(_fleet())
        collector = Collector(CollectorConfig(
            database_url=db_url, mqtt=mqtt, site=site, client_id=f"col-{uuid.uuid4().hex[:8]}",
            leave_on_stop=True, interval_s=10, validate_every_s=1.0, batch_max_delay_s=0.05,
            commission_unknown_meters=True, validation=ValidationConfig(clock_skew_s=60.0)))
        gateway = Gateway(config_from_dict(_gateway_config(site, fleet, public), source="test"),
                          mqtt=mqtt, state_dir=tmp_path / "gateway")
        engine = BillingEngine(BillingConfig(
            database_url=db_url, mqtt=mqtt, signing_key_path=tmp_path / "billing.pem",
            poll_interval_s=0.2, ack_timeout_s=5.0,
            reconcile_interval_s=1.0, clock_sync_threshold_s=60.0,
            clock_sync_tolerance_s=5.0))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(collector.run(stop))]
        await asyncio.wait_for(collector.ready.wait(), 15)
        tasks.append(asyncio.create_task(gateway.run(stop)))
        tasks.append(asyncio.create_task(engine.run(stop)))
        try:
            # the gateway reads the clock with the first poll: 300 s ahead, stored
            await _wait(lambda: bool(_rows(db_url, "SELECT 1 FROM clock_checks WHERE "
                                                   "meter_id = %s", DRIFTED)), 20, "a clock check")
            [(drift,)] = _rows(db_url, "SELECT drift_s FROM clock_checks WHERE meter_id = %s",
                               DRIFTED)
            assert 298 <= drift <= 301, drift
            # the gateway reports what each meter can do; billing refuses prepaid without a relay
            await _wait(lambda: _rows(db_url, "SELECT relay_capable FROM meter_field_contract "
                                              "WHERE meter_id = %s", RELAYLESS) == [(False,)],
                        20, "the relay-less meter's capability")
            with (psycopg.connect(db_url, autocommit=True) as conn,
                  pytest.raises(RelaylessMeter, match=f"meter {RELAYLESS} .* has no relay")):
                create_account(conn, "no-relay", meters=[RELAYLESS], tariff="residential-flat")
            # validation flags the meter's intervals read while its clock was off (billing
            # leaves meters that are on no account alone, so the drift stays until then)
            await _wait(lambda: bool(_rows(db_url, f"SELECT 1 {SKEW_ANOMALIES}", DRIFTED)),
                        40, "a clock_skew flag")
            [(reason,)] = _rows(db_url, f"SELECT a.reason {SKEW_ANOMALIES} ORDER BY a.at LIMIT 1",
                                DRIFTED)
            assert "ahead of gateway time" in reason and "time-sync the meter" in reason
            with psycopg.connect(db_url, autocommit=True) as conn:
                create_account(conn, "acc-1", meters=[DRIFTED], tariff="residential-flat",
                               opening_balance="100")
            # billing syncs it; the gateway's read-back in the ack verifies the command
            await _wait(lambda: _rows(db_url, "SELECT state FROM billing_commands WHERE "
                                              "action = 'time_sync'") == [("verified",)],
                        30, "the time sync verified")
            [(read_back, purpose)] = _rows(db_url, "SELECT clock_drift_s, purpose FROM "
                                                   "billing_commands WHERE action = 'time_sync'")
            assert purpose == "time_sync" and abs(read_back) <= 2.0, read_back
            synced_at = datetime.now(UTC)
            # the simulated meter obeyed, and the gateway's next scheduled check shows it
            assert abs((fleet.meter(DRIFTED).clock() - datetime.now(UTC)).total_seconds()) < 2
            await _wait(lambda: bool(_rows(db_url, "SELECT 1 FROM clock_checks WHERE meter_id = "
                                                   "%s AND read_at > %s", DRIFTED, synced_at)),
                        20, "a clock check after the sync")
            after = _rows(db_url, "SELECT drift_s FROM clock_checks WHERE meter_id = %s AND "
                                  "read_at > %s", DRIFTED, synced_at)
            assert all(abs(d) <= 2.0 for (d,) in after), after
            assert engine.stats.time_syncs_verified == 1
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    # the signed command went through the gateway's checks, none refused
    assert gateway.stats.commands_refused == 0 and gateway.stats.commands_done == 1
