"""The simulator records the physics faults it injects as labels (issue 17.3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from firmware_sim.cli import apply_fault
from firmware_sim.fleet import Fleet
from firmware_sim.meter import SimMeter
from firmware_sim.recording import SimClock

DAY = 1772928000.0  # 2026-03-08 00:00 UTC


def test_labels_record_what_the_simulator_injected():
    clock = SimClock(DAY)
    m = SimMeter(address="000000000001", base_load_kw=2.0, energy_kwh=999_999.9, now=clock)
    clock.now += 600
    m.value("energy_import_total")  # wraps: 0.33 kWh in 10 min on a 0.1 kWh margin
    m.surge(4.0)
    clock.now += 900
    m.surge(0.0)  # the surge ends where the drop begins
    clock.now += 900
    m.surge(1.0)
    m.stick_register()
    clock.now += 300
    e = m.value("energy_import_total")
    clock.now += 300
    assert m.value("energy_import_total") == e and m.value("current_a") > 1
    m.stick_register(False)
    m.step_back(100.0)
    m.voltage_fault(0.8)
    assert m.value("voltage_a") < 180
    m.drift_clock(3600.0)
    m.silence()
    got = [
        (lb.kind, lb.start - DAY, None if lb.end is None else lb.end - DAY)
        for lb in m.labels.snapshot()
    ]
    assert got == [
        ("rollover", 600.0, 600.0),
        ("surge", 600.0, 1500.0),
        ("drop", 1500.0, 2400.0),
        ("zero_with_current", 2400.0, 3000.0),
        ("backwards", 3000.0, 3000.0),
        ("voltage", 3000.0, None),
        ("clock_drift", 3000.0, None),
        ("no_reply", 3000.0, None),
    ]
    clock.now += 86400 / 24
    assert (m.clock() - datetime.fromtimestamp(clock.now, UTC)).total_seconds() == pytest.approx(
        150.0
    )
    with pytest.raises(ValueError, match="unknown fault kind"):
        m.labels.begin("gremlins", clock.now)


def test_every_physics_fault_of_the_command_line_is_labelled():
    fleet = Fleet.from_dict(
        {
            "bus": [
                {
                    "name": "b",
                    "protocol": "dlt645-2007",
                    "meter": [{"address": f"{n:012d}"} for n in range(1, 12)],
                }
            ]
        }
    )
    kinds = [
        "surge",
        "drop",
        "reset",
        "replace",
        "stuck",
        "sag",
        "swell",
        "backwards",
        "drift",
        "no_reply",
    ]
    for n, kind in enumerate(kinds, start=1):
        apply_fault(fleet, f"{n:012d}:{kind}")
    got = [[lb.kind for lb in m.labels.snapshot()] for m in fleet.meters()]
    assert got == [
        ["surge"],
        ["drop"],
        ["reset"],
        ["reset"],
        ["zero_with_current"],
        ["voltage"],
        ["voltage"],
        ["backwards"],
        ["clock_drift"],
        ["no_reply"],
        [],
    ]
    assert fleet.meters()[9].faults.no_reply
    with pytest.raises(ValueError, match="unknown kind"):
        apply_fault(fleet, "000000000011:gremlins")
