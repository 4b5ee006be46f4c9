"""Intervals layout v3 (collector migration 0060, billing 0050): a database of layout v2
migrates in place with its rows and billing's progress kept, and billing's change queue
charges every interval exactly once across re-validation, review decisions and a billing
crash and restart."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from collector_helpers import T0, database_before, put_values

from billing import ledger
from billing.charging import charge_all, charge_batch
from billing.money import to_fen
from billing.tariffs import load_tariffs
from collector import read_model
from collector.config import ValidationConfig
from collector.vee import decisions, review, run_pending
from meterhub import db

pytestmark = pytest.mark.integration
D = Decimal
IV = timedelta(minutes=15)
NEW = {("collector", 60), ("billing", 50)}  # what this layout adds


@pytest.fixture
def v2_url(pg_server_url: str) -> Iterator[str]:
    """A database with every migration but intervals v3 (as it was before this change)."""
    with database_before(pg_server_url, lambda m: (m.component, m.version) not in NEW,
                         "v2") as url:
        yield url


def _v2_interval(conn: psycopg.Connection, meter: str, k: int, kwh: str, *,
                 held: bool = False, raw: str | None = None, method: int | None = None,
                 quality: str = "A") -> int:
    """A v2 row as validation wrote it; returns its change id (from the v2 trigger)."""
    row = conn.execute(
        "INSERT INTO intervals (interval_start, change_id, meter, seconds, kwh, raw_kwh, flags,"
        " method, quality, held) SELECT %s, 0, meter_key, 900, %s, %s, 0, %s, %s, %s"
        " FROM meters WHERE meter_id = %s RETURNING change_id",
        (T0 + k * IV, D(kwh), None if raw is None else D(raw), method, quality, held, meter),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_v2_intervals_migrate_in_place_and_billing_charges_only_what_it_had_not(
        v2_url: str) -> None:
    tariffs = load_tariffs()
    with psycopg.connect(v2_url, autocommit=True) as conn:
        conn.execute("INSERT INTO meters (meter_id) VALUES ('m1'), ('m2'), ('m3')")
        for acc, meter in (("A1", "m1"), ("A2", "m2")):
            ledger.create_account(conn, acc, meters=[meter], tariff="residential-flat",
                                  charge_from=T0, opening_balance="100", tariffs=tariffs)
        # m1: four intervals, the old billing charged the first two (cursor, charges, ledger)
        ids = [_v2_interval(conn, "m1", k, "1.2345", raw="1.2345") for k in range(4)]
        conn.execute("UPDATE billing_meters SET cursor = %s WHERE meter_id = 'm1'", (ids[1],))
        for k in range(2):
            exact = D("1.2345") * D("0.56")
            conn.execute(
                "INSERT INTO billing_charges (meter_id, interval_start, interval_end,"
                " account_id, kwh, exact, change_id) VALUES ('m1', %s, %s, 'A1', 1.2345, %s,"
                " %s)", (T0 + k * IV, T0 + (k + 1) * IV, exact, ids[k]))
        # m2: a held interval the old cursor moved past, and a forward estimate (no raw)
        held = _v2_interval(conn, "m2", 0, "9.0000", held=True)
        _v2_interval(conn, "m2", 1, "0.3333", method=14, quality="E")
        conn.execute("UPDATE billing_meters SET cursor = %s WHERE meter_id = 'm2'", (held,))
        # m3: no account yet
        _v2_interval(conn, "m3", 0, "0.0001", raw="0.0001")

    assert db.migrate(v2_url) == ["collector/0060_intervals_v3", "billing/0050_interval_queue"]
    assert db.migrate(v2_url) == []

    with psycopg.connect(v2_url, autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'intervals'::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum")]
        assert cols == ["interval_start", "kwh_e4", "raw_kwh_e4", "meter", "seconds", "flags",
                        "method", "quality", "held"]
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'intervals'"
                            ).fetchone() == (1,)  # the primary key alone
        # the rows, exact, as people and billing read them
        m1 = read_model.intervals(conn, "m1", T0, T0 + 4 * IV, 10)
        assert [(r["kwh"], r["raw_kwh"], r["method"]) for r in m1] == [
            (D("1.2345"), D("1.2345"), None)] * 4
        m2 = read_model.intervals(conn, "m2", T0, T0 + 4 * IV, 10)
        assert [(r["kwh"], r["raw_kwh"], r["method"], r["quality"], r["held"]) for r in m2] == [
            (D("9.0000"), None, None, "A", True), (D("0.3333"), None, 14, "E", False)]
        # only what billing had not consumed is queued
        queued = conn.execute(
            "SELECT m.meter_id, q.lo, q.hi FROM interval_changes q"
            " JOIN meters m ON m.meter_key = q.meter ORDER BY 1").fetchall()
        assert queued == [("m1", T0 + 2 * IV, T0 + 3 * IV), ("m2", T0 + IV, T0 + IV),
                          ("m3", T0, T0)]
        s = charge_all(conn, tariffs)
        assert (s.intervals, s.adjustments, s.unchanged, s.skipped) == (3, 0, 0, 0)
        assert charge_all(conn, tariffs).work == 0
        # the held interval, released after the migration, is charged once
        conn.execute("UPDATE intervals SET held = false WHERE held")
        assert charge_all(conn, tariffs).intervals == 1
        # a change to an interval charged before the migration: an adjustment whose ledger
        # key cannot clash with one of the old billing's (revision past the old change id)
        conn.execute("UPDATE intervals SET kwh_e4 = 20000 WHERE interval_start = %s AND meter ="
                     " (SELECT meter_key FROM meters WHERE meter_id = 'm1')", (T0,))
        assert charge_all(conn, tariffs).adjustments == 1
        key = conn.execute("SELECT idempotency_key FROM billing_ledger"
                           " WHERE kind = 'adjustment' AND meter_id = 'm1'").fetchone()
        assert key == (f"adj:m1:{int(T0.timestamp())}:{ids[0] + 1}",)
        assert conn.execute("SELECT m.meter_id FROM interval_changes q JOIN meters m"
                            " ON m.meter_key = q.meter").fetchall() == [("m3",)]  # no account


# ---------------------------------------------------------------- exactly once, end to end

CFG = ValidationConfig(min_baseline_samples=8, tod_buckets=1, late_after_s=1e9)
DAYS = 9
LAST = T0 + timedelta(days=DAYS - 1)
SURGE_AT = LAST + timedelta(hours=8, minutes=15)
GAP = (LAST + timedelta(hours=14), LAST + timedelta(hours=15, minutes=30))  # reads missing
SHAPE = (0.28, 0.28, 0.25, 0.25, 0.22, 0.22)  # kWh of the gap's quarter hours


def _reads(gap_filled: bool) -> list[tuple[str, str, object, float]]:
    """Nine days at 1 kWh/h read every 5 minutes, one 5 kWh surge interval on the last day
    and 90 minutes without reads that afternoon; the late reads show the gap's 1.5 kWh
    front-loaded (within what validation accepts), so the substitutes were wrong in shape."""
    rows = []
    e = 100.0
    for step in range(DAYS * 24 * 12 + 1):
        ts = T0 + timedelta(minutes=5 * step)
        if step:
            if SURGE_AT < ts <= SURGE_AT + IV:
                e += 20 / 12
            elif GAP[0] < ts <= GAP[1]:
                e += SHAPE[(ts - GAP[0] - timedelta(seconds=1)) // IV] / 3
            else:
                e += 1 / 12
        in_gap = GAP[0] < ts < GAP[1]
        if gap_filled or not in_gap:
            rows.append(("m1", "energy_import_total", ts, round(e, 4)))
            rows.append(("m1", "current_a", ts, 4.0))
    return rows


def _check_charged_once(conn: psycopg.Connection, opening: Decimal) -> None:
    """Every interval billing may charge is charged at its current kWh, by exactly one charge
    entry (plus its adjustments), and the balance is the exact total rounded once."""
    rows = conn.execute(
        "SELECT i.interval_start, i.kwh_e4 * 0.0001, c.kwh FROM intervals i"
        " JOIN meters m ON m.meter_key = i.meter"
        " LEFT JOIN billing_charges c ON c.meter_id = m.meter_id"
        " AND c.interval_start = i.interval_start WHERE NOT i.held").fetchall()
    assert rows and all(kwh == charged for _, kwh, charged in rows), [
        r for r in rows if r[1] != r[2]][:5]
    assert conn.execute("SELECT count(*), count(DISTINCT interval_start) FROM billing_ledger"
                        " WHERE kind = 'charge'").fetchone() == (len(rows), len(rows))
    total = sum(kwh for _, kwh, _ in rows)
    assert ledger.balance(conn, "A1") == opening - D(to_fen(total * D("0.56"))) / 100
    assert ledger.balance(conn, "A1") == ledger.ledger_sum(conn, "A1")


def test_each_interval_is_charged_once_across_revalidation_decisions_and_a_restart(
        db_url: str) -> None:
    tariffs = load_tariffs()
    with psycopg.connect(db_url, autocommit=True) as conn:
        put_values(conn, _reads(gap_filled=False), dirty_from=T0)
    run_pending(db_url, 900, CFG)
    (item,) = review.open_items(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.create_account(conn, "A1", meters=["m1"], tariff="residential-flat",
                              charge_from=T0, opening_balance="500", tariffs=tariffs)
        first = charge_all(conn, tariffs)
        assert first.skipped == 1 and first.intervals == DAYS * 96 - 1  # the surge is held
        subst = conn.execute("SELECT count(*) FROM intervals WHERE quality = 'S'").fetchone()
        assert subst is not None and subst[0] >= 5
        _check_charged_once(conn, D(500))

        # the late reads: re-validation replaces the substitutes (new kWh, same total)
        put_values(conn, _reads(gap_filled=True), dirty_from=GAP[0])
    run_pending(db_url, 900, CFG)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM intervals WHERE quality = 'S'"
                            ).fetchone() == (0,)
        # billing dies in the middle of its batch: nothing of it stays, the queue neither
        # loses nor doubles anything
        with contextlib.suppress(RuntimeError), conn.transaction():
            assert charge_batch(conn, tariffs, max_rows=3).work > 0
            raise RuntimeError("billing killed")
    with psycopg.connect(db_url, autocommit=True) as conn:  # billing restarted
        s = charge_all(conn, tariffs, max_rows=3)  # small batches: spans charged in parts
        assert s.intervals == 0 and s.adjustments >= 2
        _check_charged_once(conn, D(500))

        # a review decision: the surge was a CT fault, the engineer enters the true value
        decisions.correct(conn, int(item["id"]), "eng. Wang", "CT wiring fault",
                          {SURGE_AT: D("0.25")})
        s = charge_all(conn, tariffs)
        assert (s.intervals, s.adjustments) == (1, 0)
        _check_charged_once(conn, D(500))
        entries = conn.execute("SELECT count(*) FROM billing_ledger").fetchone()

    # everything validated again: the decision stands, nothing is charged twice
    with psycopg.connect(db_url, autocommit=True) as conn:
        put_values(conn, _reads(gap_filled=True), dirty_from=T0)
    run_pending(db_url, 900, CFG)
    with psycopg.connect(db_url, autocommit=True) as conn:
        s = charge_all(conn, tariffs)
        assert (s.intervals, s.adjustments) == (0, 0)
        assert conn.execute("SELECT count(*) FROM billing_ledger").fetchone() == entries
        _check_charged_once(conn, D(500))
        assert conn.execute("SELECT count(*) FROM interval_changes").fetchone() == (0,)
