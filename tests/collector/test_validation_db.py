"""Validation against the real database: from MQTT readings to intervals billing can consume."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from collector_helpers import (
    T0,
    batch_payload,
    billing_took_all,
    config,
    intervals_of,
    put_values,
    reading,
    running,
    subscribed,
    wait_until,
)

from collector.config import ValidationConfig
from collector.vee import revalidate, review, run_pending
from launcher import cli
from meterhub import wire

pytestmark = pytest.mark.integration
IV_S = 900


def _reads(meter: str, start_min: int, end_min: int, step_min: int = 5, rate=lambda m: 1.0,
           base: float = 100.0):
    """Register reads every step minutes; rate(minute) in kWh/h."""
    e = base
    out = []
    for m in range(0, end_min + 1, step_min):
        if m > 0:
            e += rate(m) * step_min / 60
        if m >= start_min:
            out.append(reading(meter, T0 + timedelta(minutes=m), round(e, 6),
                               voltage_a=230.0, current_a=4.0))
    return out


def _intervals(db_url: str, meter: str = "m1"):
    with psycopg.connect(db_url) as conn:
        return intervals_of(conn, meter)


async def test_intervals_flow_from_mqtt_and_estimates_are_replaced_by_late_actuals(
    db_url, mqtt, site, pub
):
    topic = wire.topic(site, "gw1", "readings")
    allreads = _reads("m1", 0, 240)
    early = [r for r in allreads if r.taken_at < T0 + timedelta(minutes=60)
             or r.taken_at > T0 + timedelta(minutes=100)]
    missing = [r for r in allreads if r not in early]
    async with running(config(db_url, mqtt, site, validate_every_s=0.2)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, early))
        await wait_until(lambda: len(_intervals(db_url)) == 16, what="16 intervals")
        first = {r[0]: r for r in _intervals(db_url)}
        assert all(r[5] for r in first.values())  # queued for billing
        billing_took_all(db_url)
        subst = [r for r in first.values() if r[2] == "S"]
        assert [r[0] - T0 for r in subst] == [timedelta(minutes=m) for m in (45, 60, 75, 90)]
        assert all(r[3] == 17 and "missing reads" in r[7] for r in subst)
        assert sum(r[1] for r in first.values()) == pytest.approx(4.0)
        # the gateway's store-and-forward replays the missing reads, late
        pub.publish(topic, batch_payload(site, "gw1", 2, missing))
        await wait_until(lambda: all(r[2] == "A" for r in _intervals(db_url)), what="actuals")
    after = {r[0]: r for r in _intervals(db_url)}
    for start, row in first.items():
        if row[2] == "S":
            assert after[start][5]  # queued again: billing re-charges the difference
    assert col.stats.intervals_written >= 20


async def test_surge_opens_review_item_held_until_decided(db_url, mqtt, site, pub):
    cfg = ValidationConfig(min_baseline_samples=8, tod_buckets=1, late_after_s=1e9)
    topic = wire.topic(site, "gw1", "readings")
    reads = _reads("m1", 0, 600, rate=lambda m: 20.0 if 495 < m <= 510 else 1.0)
    async with running(config(db_url, mqtt, site, validate_every_s=0.2, validation=cfg)) as col:
        await subscribed(col)
        pub.publish(topic, batch_payload(site, "gw1", 1, reads))
        await wait_until(lambda: len(_intervals(db_url)) == 40, what="40 intervals")
    rows = _intervals(db_url)
    held = [r for r in rows if r[4]]
    assert [r[0] - T0 for r in held] == [timedelta(minutes=495)]  # 08:15-08:30
    assert held[0][6] == ["surge"] and "held for review" in held[0][7]
    items = review.open_items(db_url)
    assert len(items) == 1 and items[0]["rule"] == "surge"
    billing_took_all(db_url)
    with pytest.raises(review.ReviewError):
        review.decide(db_url, items[0]["id"], "confirmed", "  ")
    decided = review.decide(db_url, items[0]["id"], "confirmed", "eng. Li", "kettle party")
    assert decided.released == 1
    row = next(r for r in _intervals(db_url) if r[0] == held[0][0])
    assert row[4] is False and row[5]  # released: queued for billing again
    with pytest.raises(review.ReviewError, match="already confirmed"):
        review.decide(db_url, items[0]["id"], "dismissed", "someone")
    # revalidation does not hold a decided interval again, and writes nothing new
    assert revalidate(db_url, IV_S, cfg, T0) == 0
    assert not any(r[4] for r in _intervals(db_url))


def test_reading_rules_and_register_reset_through_the_database(db_url):
    """Readings written straight to the tables (as a tool would), then one validation pass."""
    rows = []
    e = 50.0
    for m in range(0, 181, 5):
        ts = T0 + timedelta(minutes=m)
        e = 0.02 if m == 95 else e + 1 / 12  # reset at 01:35
        rows.append(("m2", "energy_import_total", ts, e))
        rows.append(("m2", "voltage_a", ts, 190.0 if m == 20 else 231.0))
        rows.append(("m2", "current_a", ts, 5.0))
    # the gateway's clock checks (collector/migrations/0020): hourly, one of them 130 s ahead;
    # a check speaks for the intervals after it until the next one
    checks = [(T0 + timedelta(minutes=m, seconds=20), 130.0 if m == 125 else 1.0)
              for m in (0, 60, 125, 135)]
    with psycopg.connect(db_url) as conn:
        put_values(conn, rows, dirty_from=T0)
        for read_at, drift in checks:
            conn.execute("INSERT INTO clock_checks (meter_id, read_at, meter_clock, drift_s, "
                         "gateway) VALUES ('m2', %s, %s, %s, 'g')",
                         (read_at, read_at + timedelta(seconds=drift), drift))
    assert run_pending(db_url, IV_S, ValidationConfig()) == 12
    with psycopg.connect(db_url) as conn:
        fired = conn.execute("SELECT v.name, extract(epoch FROM at - %s)::int / 60, a.holds "
                             "FROM anomalies a JOIN vee_rules v ON v.code = a.rule "
                             "ORDER BY at, v.name", (T0,)).fetchall()
        items = conn.execute("SELECT rule, status FROM review_items").fetchall()
    assert fired == [
        ("voltage_out_of_band", 15, False),
        ("register_reset", 90, True),
        ("clock_skew", 120, False),
    ]
    assert items == [("register_reset", "open")]
    assert [r[0] - T0 for r in _intervals(db_url, "m2") if r[4]] == [timedelta(minutes=90)]


def test_revalidate_command(db_url, capsys):
    with psycopg.connect(db_url) as conn:
        put_values(conn, [("m3", "energy_import_total", T0 + timedelta(minutes=m), m / 60)
                          for m in range(0, 61, 5)])
    assert cli.main(["collector", "revalidate", "--database-url", db_url,
                     "--since", T0.isoformat()]) == 0
    printed = capsys.readouterr()
    assert "4 intervals written" in printed.out
    assert "revalidate [" in printed.err and "] 1/1" in printed.err  # the progress bar
    with pytest.raises(SystemExit):  # argparse refuses it with a message
        cli.main(["collector", "revalidate", "--database-url", db_url, "--since", "yesterday"])
    assert "neither an ISO date/time nor a span" in capsys.readouterr().err
    assert len(_intervals(db_url, "m3")) == 4


def test_retention_drops_old_months_and_keeps_recent(db_url):
    from datetime import UTC, datetime

    from collector.vee import drop_old_readings

    old = datetime(2020, 1, 15, tzinfo=UTC)
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        for ts in (old, now):  # two months, nothing between
            put_values(conn, [("m", "energy_import_total", ts, 1.0),
                              ("m", "power_active_a", ts, 0.5)])
    assert drop_old_readings(db_url, 400) == 1
    with psycopg.connect(db_url) as conn:
        left = [r[0] for r in conn.execute("SELECT ts FROM readings")]
        extras = [r[0] for r in conn.execute("SELECT ts FROM reading_extras")]
    assert left == [now] and extras == [now]  # the side table's month went too


def _copy_reads(db_url, meter, reads):
    with psycopg.connect(db_url) as conn:
        put_values(conn, [(meter, "energy_import_total", ts, kwh) for ts, kwh in reads],
                   dirty_from=reads[0][0])


def test_forward_estimates_for_a_silent_meter_are_replaced_when_reads_arrive(db_url):
    from collector.vee import estimate_forward

    cfg = ValidationConfig(forward_estimate_after_s=3600, late_after_s=1e9)
    # 8 days at 0.25 kWh per 15 min, then silence from day 8 02:00
    silent_from = T0 + timedelta(days=7, hours=2)
    reads, e, ts = [], 100.0, T0
    while ts <= silent_from:
        reads.append((ts, e))
        ts += timedelta(minutes=15)
        e += 0.25
    _copy_reads(db_url, "m5", reads)
    run_pending(db_url, IV_S, cfg)
    now = silent_from + timedelta(hours=3, minutes=5)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert estimate_forward(conn, IV_S, cfg, now=now) == 12
        assert estimate_forward(conn, IV_S, cfg, now=now) == 0  # nothing changed
    est = [r for r in _intervals(db_url, "m5") if r[0] >= silent_from]
    assert [(r[2], r[3], r[1]) for r in est] == [("E", 14, 0.25)] * 12
    assert "no reads since" in est[0][7]
    # the gateway comes back with the missing reads: one hour of them
    late, e2, ts = [], e, silent_from + timedelta(minutes=15)
    while ts <= silent_from + timedelta(hours=1):
        late.append((ts, e2 + 0.1))  # a little more than estimated
        e2 += 0.35
        ts += timedelta(minutes=15)
    billing_took_all(db_url)
    _copy_reads(db_url, "m5", late)
    run_pending(db_url, IV_S, cfg)
    after = {r[0]: r for r in _intervals(db_url, "m5") if r[0] >= silent_from}
    first_hour = [after[silent_from + timedelta(minutes=15 * k)] for k in range(4)]
    assert [r[2] for r in first_hour] == ["A"] * 4
    assert all(r[5] for r in first_hour)  # queued again: billing re-charges
    rest = [r for t, r in after.items() if t >= silent_from + timedelta(hours=1)]
    assert {r[2] for r in rest} == {"E"}  # still forward of the last read


def test_migrate_and_review_commands(db_url, capsys):
    assert cli.main(["collector", "migrate", "--database-url", db_url]) == 0
    assert "up to date" in capsys.readouterr().out
    with psycopg.connect(db_url) as conn:
        item = conn.execute(
            "INSERT INTO review_items (meter_id, rule, period_start, period_end, reason) "
            "VALUES ('m9', 'surge', %s, %s, 'test surge') RETURNING id",
            (T0, T0 + timedelta(minutes=15))).fetchone()[0]
    assert cli.main(["collector", "review", "--database-url", db_url]) == 0
    assert f"#{item} m9 surge" in capsys.readouterr().out
    assert cli.main(["collector", "review", "--database-url", db_url, str(item),
                     "--dismiss"]) == 1  # who decides is required
    assert "name of the person" in capsys.readouterr().err
    assert cli.main(["collector", "review", "--database-url", db_url, str(item), "--dismiss",
                     "--by", "eng. Wu", "--comment", "sensor test"]) == 0
    assert "dismissed" in capsys.readouterr().out
