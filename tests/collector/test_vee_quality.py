"""Precision and recall of the rules on labelled runs, and the healthy demo fleet through the
real pipeline (broker, collector, PostgreSQL) opening no review item (issue 17.3)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from collector_helpers import (
    T0,
    actual_intervals,
    batch_payload,
    config,
    put_values,
    reading,
    running,
    subscribed,
    wait_until,
)

from collector.config import ValidationConfig
from collector.vee import quality, revalidate, rules, run_pending
from firmware_sim.meter import SimMeter
from firmware_sim.recording import Injection, SimClock, labelled_fleet, record
from launcher import cli
from meterhub import wire

DAY = 1772928000.0  # 2026-03-08 00:00 UTC


def test_every_rule_keeps_its_precision_and_recall_on_a_labelled_run():
    """45 faults, 5 of each kind, among 60 households over 4 healthy days and a labelled one.
    Deterministic (seeded): a rule that starts crying wolf or missing faults fails here."""
    clock = SimClock(DAY - 4 * 86400.0)
    fleet, plan = labelled_fleet(60, clock, DAY, 4, share=0.75, seed=5)
    rec = record(fleet, clock, clock.now, DAY + 86400.0, 900, plan, jitter_s=5.0, seed=5)
    verdict, labels = quality.judge_recording(rec, 900, ValidationConfig())
    assert verdict is not None
    scores = quality.score(verdict.iv, labels, 900, 900.0, (DAY, DAY + 86400.0))
    expected = {primary for primary, _ in quality.FAULT_RULES.values()}
    assert set(scores) == expected  # every rule had faults to find, and no other rule fired
    for rule, s in scores.items():
        assert s.faults == 5, rule
        assert s.recall is not None and s.recall >= 0.95, (rule, s)
        assert s.precision is not None and s.precision >= 0.95, (rule, s)


def test_scoring_counts_true_and_false_flags_and_found_faults():
    iv = actual_intervals(
        [0, 0, 0, 1, 1, 2],
        [0, 900, 5400, 0, 900, 0],
        [0.0] * 6,
        flags=[
            rules.SURGE,
            rules.SURGE,
            rules.SURGE,
            rules.ZERO_WITH_CURRENT,
            rules.DROP | rules.ZERO_WITH_CURRENT,
            rules.VOLTAGE,
        ],
    )
    labels = [
        quality.Label(0, "surge", 100.0, 1700.0),  # flags at 0 and 900 are true
        quality.Label(1, "zero_with_current", 0.0, 1800.0),  # drop allowed beside it
        quality.Label(2, "drop", 0.0, 900.0),  # the voltage flag is not its rule: missed
        quality.Label(3, "reset", 50_000.0, 50_000.0),
    ]  # outside the window
    s = quality.score(iv, labels, 900, 0.0, (0.0, 10_000.0))
    assert (s["surge"].flags, s["surge"].true_flags, s["surge"].precision) == (3, 2, 2 / 3)
    assert (s["surge"].faults, s["surge"].found) == (1, 1)
    assert s["zero_with_current"].precision == 1.0 and s["zero_with_current"].recall == 1.0
    assert s["drop"].precision == 1.0 and s["drop"].recall == 0.0
    assert s["voltage_out_of_band"].precision == 0.0 and s["voltage_out_of_band"].recall is None
    assert "register_reset" not in s
    assert quality.review_items(iv, 900) == {"surge": 2, "drop": 1, "zero_with_current": 1}


# ---------------------------------------------------------------- through the real pipeline


def _review_items(db_url: str) -> list[tuple[str, str, datetime, datetime]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT meter_id, rule, period_start, period_end FROM review_items"
            " ORDER BY meter_id, period_start"
        ).fetchall()


def _pending(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM vee_dirty").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.integration
async def test_healthy_demo_meters_open_no_review_item_and_a_stuck_one_still_does(
    db_url, mqtt, site, pub
):
    """The demo's setting: reads every 2 s into 5-second intervals, registers to 0.01 kWh,
    validated as batches arrive (each pass sees a few seconds). Three healthy meters (1.2, 0.8,
    0.8 kW) run 4 minutes without a review item; a fourth, whose register sticks after a
    minute while 5.7 A flows, gets its zero_with_current work order once the current should
    have moved the register (about 2 minutes), spanning the whole stuck run."""
    start = float(int(time.time() - 900) // 5 * 5)
    clock = SimClock(start)
    loads = {"healthy-1": 1.2, "healthy-2": 0.8, "healthy-3": 0.8, "stuck-1": 1.2}
    fleet = [  # a flat profile: the load is the same whatever the hour the test runs at
        SimMeter(
            address=name, base_load_kw=kw, energy_kwh=1000.0 + 250 * i, now=clock, profile=(1.0,)
        )
        for i, (name, kw) in enumerate(loads.items())
    ]
    rec = record(
        fleet,
        clock,
        start,
        start + 240.0,
        2.0,
        [Injection(3, "zero_with_current", start + 60.0, 600.0)],
        jitter_s=0.5,
    )
    label = next(lb for lb in rec.labels if lb.kind == "zero_with_current")
    reads = [
        reading(
            rec.meter_ids[int(m)],
            datetime.fromtimestamp(float(t), UTC),
            float(e),
            voltage_a=float(v),
            current_a=float(c),
        )
        for m, t, e, v, c in zip(
            rec.meter, rec.t, rec.energy, rec.voltage, rec.current, strict=True
        )
    ]
    reads.sort(key=lambda r: r.taken_at)
    topic = wire.topic(site, "gw1", "readings")
    cfg = ValidationConfig(late_after_s=1e9)
    async with running(
        config(db_url, mqtt, site, validate_every_s=0.1, interval_s=5, validation=cfg)
    ) as col:
        await subscribed(col)
        per_batch = 4 * 5  # 5 poll cycles of the 4 meters: 10 seconds a batch
        for seq, lo in enumerate(range(0, len(reads), per_batch), start=1):
            pub.publish(topic, batch_payload(site, "gw1", seq, reads[lo : lo + per_batch]))
            await wait_until(
                lambda lo=lo: col.stats.readings_stored >= min(len(reads), lo + per_batch),
                what="batch stored",
            )
            await wait_until(lambda: _pending(db_url) == 0, what="validation pass")
    items = _review_items(db_url)
    assert [(i[0], i[1]) for i in items] == [("stuck-1", "zero_with_current")]
    _, _, lo, hi = items[0]
    # the work order covers the stuck run from the register's last step before it (one step
    # of 0.01 kWh is 30 s at 1.2 kW), not the healthy minute before
    assert label.start - 35 <= lo.timestamp() <= label.start + 5
    assert hi.timestamp() >= start + 230
    with psycopg.connect(db_url) as conn:
        held = conn.execute(
            "SELECT m.meter_id, count(*) FROM intervals i JOIN meters m"
            " ON m.meter_key = i.meter WHERE i.held GROUP BY m.meter_id"
        ).fetchall()
        healthy = conn.execute(
            "SELECT count(*) FROM intervals i JOIN meters m ON m.meter_key = i.meter"
            " WHERE m.meter_id LIKE 'healthy%' AND i.kwh_e4 = 0"
        ).fetchone()
    assert [h[0] for h in held] == ["stuck-1"]
    assert healthy is not None and healthy[0] > 50  # zero-kWh intervals were there to judge


@pytest.mark.integration
def test_declared_ct_ratio_makes_a_coarse_register_no_fault(db_url, capsys):
    """A CT meter (ratio 40 on a 0.01 kWh register: 0.4 kWh a step) under 0.44 kW moves its
    register once an hour. Judged as a 0.01 kWh register its flat hours look stuck; declared
    (`meterhub collector meters resolution ... --ct-ratio 40`), revalidation closes them."""
    rows = []
    for m in range(0, 4 * 60 + 1):
        ts = T0 + timedelta(minutes=m)
        kwh = 2000.0 + 0.4 * math.floor(0.44 * m / 60 / 0.4 + 1e-9)
        rows += [
            ("ct1", "energy_import_total", ts, round(kwh, 2)),
            ("ct1", "current_a", ts, 2.0),
            ("ct1", "voltage_a", ts, 231.0),
        ]
    with psycopg.connect(db_url) as conn:
        put_values(conn, rows, dirty_from=T0)
    run_pending(db_url, 900, ValidationConfig())
    assert {r[1] for r in _review_items(db_url)} == {"zero_with_current"}
    assert (
        cli.main(
            [
                "collector",
                "meters",
                "resolution",
                "ct1",
                "--ct-ratio",
                "40",
                "--database-url",
                db_url,
            ]
        )
        == 0
    )
    assert "one register step is 0.4 kWh" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "collector",
                "meters",
                "resolution",
                "nosuch",
                "--ct-ratio",
                "0.5",
                "--database-url",
                db_url,
            ]
        )
        == 1
    )
    assert "CT ratio 0.5" in capsys.readouterr().err
    revalidate(db_url, 900, ValidationConfig(), T0)
    with psycopg.connect(db_url) as conn:
        statuses = conn.execute("SELECT DISTINCT status, decided_by FROM review_items").fetchall()
        held = conn.execute("SELECT count(*) FROM intervals WHERE held").fetchone()
    assert statuses == [("dismissed", "collector")] and held == (0,)
