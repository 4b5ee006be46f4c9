"""Review decisions with consequences: reject, estimate, correct (also after billing), the
queue's assignment, comments, history, bulk decisions and site-visit work orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from collector_helpers import T0, intervals_of, put_values

from billing import ledger
from billing.charging import charge_all
from billing.tariffs import load_tariffs
from collector.config import ValidationConfig
from collector.vee import decisions, revalidate, review, run_pending
from collector.vee.review import ReviewError

pytestmark = pytest.mark.integration
IV_S = 900
D = Decimal
CFG = ValidationConfig(min_baseline_samples=8, tod_buckets=1, late_after_s=1e9)
DAYS = 9
SURGE_AT = T0 + timedelta(days=DAYS - 1, hours=8, minutes=15)


def _history_with_surges(conn: psycopg.Connection, meters: tuple[str, ...] = ("m1",)) -> None:
    """Nine days at 1 kWh/h (0.25 kWh an interval), each meter with one 5 kWh interval on
    the last day: a surge that holds its interval for review."""
    rows = []
    for meter in meters:
        e = 100.0
        for step in range(DAYS * 24 * 12 + 1):
            ts = T0 + timedelta(minutes=5 * step)
            if step:
                e += 20 / 12 if SURGE_AT < ts <= SURGE_AT + timedelta(minutes=15) else 1 / 12
            rows.append((meter, "energy_import_total", ts, round(e, 4)))
            rows.append((meter, "current_a", ts, 4.0))
    put_values(conn, rows, dirty_from=T0)


def _open_item(db_url: str, meters: tuple[str, ...] = ("m1",)) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        _history_with_surges(conn, meters)
    run_pending(db_url, IV_S, CFG)
    items = review.open_items(db_url)
    assert [i["rule"] for i in items] == ["surge"] * len(meters), items
    return [int(i["id"]) for i in items]


def _interval(conn: psycopg.Connection, meter: str, start: datetime) -> tuple:
    return next(r for r in intervals_of(conn, meter) if r[0] == start)


def test_reject_replaces_the_value_by_a_like_day_estimate_that_revalidation_keeps(
        db_url: str) -> None:
    (item,) = _open_item(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert _interval(conn, "m1", SURGE_AT)[1] == pytest.approx(5.0, abs=0.01)
        with pytest.raises(ReviewError, match="method must be one of"):
            decisions.estimate_item(conn, item, "eng. Li", method="guess")  # type: ignore[arg-type]
        out = decisions.estimate_item(conn, item, "eng. Li", "meter swapped CTs",
                                      status="rejected", cfg=CFG)
        assert out.status == "rejected"
        assert [(c.previous_kwh, c.kwh) for c in out.changed] == [(D("5.0000"), D("0.2500"))]
        kwh, quality, method, held = _interval(conn, "m1", SURGE_AT)[1:5]
        # NEM12: S = substitute, 14 = like day (nine days of history hold one same weekday)
        assert (kwh, quality, method, held) == (0.25, "S", 14, False)
    assert revalidate(db_url, IV_S, CFG, T0) >= 0
    with psycopg.connect(db_url) as conn:
        assert _interval(conn, "m1", SURGE_AT)[1:5] == (0.25, "S", 14, False), \
            "a validation pass undid the decision"
        (status,) = conn.execute("SELECT status FROM review_items WHERE id = %s",
                                 (item,)).fetchone()
        assert status == "rejected"
        steps = decisions.history(conn, item)
    assert [s["action"] for s in steps] == ["decided"]
    assert steps[0]["detail"]["decision"] == "rejected" and steps[0]["by"] == "eng. Li"


def test_linear_estimate_interpolates_between_trusted_neighbours(db_url: str) -> None:
    (item,) = _open_item(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        out = decisions.estimate_item(conn, item, "eng. Li", method="linear")
        assert [c.kwh for c in out.changed] == [D("0.2500")]
        assert _interval(conn, "m1", SURGE_AT)[2:4] == ("S", 17)


def test_a_correction_after_billing_posts_the_adjustment(db_url: str) -> None:
    (item,) = _open_item(db_url)
    tariffs = load_tariffs()
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.create_account(conn, "A1", meters=["m1"], tariff="residential-flat",
                              charge_from=T0, opening_balance="500", tariffs=tariffs)
        charge_all(conn, tariffs)
        charged_before = ledger.balance(conn, "A1")
        review.decide_in(conn, item, "confirmed", "eng. Li", "looked plausible")
        assert charge_all(conn, tariffs).intervals == 1  # the 5 kWh interval, now released
        after_confirm = ledger.balance(conn, "A1")
        assert charged_before - after_confirm == D("2.80")  # 5 kWh x 0.56
        # the site visit shows a wiring fault: the engineer enters the true consumption
        with pytest.raises(ReviewError, match="reason"):
            decisions.correct(conn, item, "eng. Wang", " ", {SURGE_AT: D("0.25")})
        with pytest.raises(ReviewError, match="not an interval of review item"):
            decisions.correct(conn, item, "eng. Wang", "wiring", {T0: D("0.25")})
        out = decisions.correct(conn, item, "eng. Wang", "CT wiring fault found on site",
                                {SURGE_AT: decisions.parse_kwh("0.25", "kwh")})
        assert out.status == "corrected"
        assert _interval(conn, "m1", SURGE_AT)[1:4] == (0.25, "F", decisions.METHOD_AGREED)
        s = charge_all(conn, tariffs)
        assert s.adjustments == 1
        # the ledger gives back exactly (5 - 0.25) kWh x 0.56 = 2.66 yuan
        assert ledger.balance(conn, "A1") - after_confirm == D("2.66")
        assert ledger.balance(conn, "A1") == ledger.ledger_sum(conn, "A1")
        steps = decisions.history(conn, item)
    assert [(s["action"], s["detail"].get("decision")) for s in steps] == [
        ("decided", "confirmed"), ("decided", "corrected")]
    assert steps[1]["detail"]["changed"] == [
        {"interval_start": SURGE_AT.isoformat(), "previous_kwh": "5.0000", "kwh": "0.25"}]


def test_parse_kwh_refuses_what_a_person_should_not_enter() -> None:
    assert decisions.parse_kwh("1.2500", "kwh") == D("1.25")
    assert decisions.parse_kwh(3, "kwh") == D(3)
    for bad, why in (("-1", "within"), ("1e9", "within"), ("NaN", "within"),
                     ("0.00001", "4 decimal"), ("abc", "not a number"), (1.5, "as text"),
                     (True, "as text")):
        with pytest.raises(ReviewError, match=why):
            decisions.parse_kwh(bad, "kwh")


def test_assignment_comments_bulk_and_work_orders(db_url: str) -> None:
    items = _open_item(db_url, ("m1", "m2", "m3"))
    due = datetime(2031, 1, 6, 9, tzinfo=UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert decisions.assign(conn, items[:2], "supervisor Zhao", to="eng. Li", team=None,
                                due_at=due) == 2
        with pytest.raises(ReviewError, match="time zone"):
            decisions.assign(conn, items, "supervisor Zhao", to="x", team=None,
                             due_at=datetime(2031, 1, 6))
        with pytest.raises(ReviewError, match="does not exist"):
            decisions.assign(conn, [items[2], 999999], "supervisor Zhao", to="x", team=None,
                             due_at=None)
        # all or nothing: item 3 was not assigned by the refused call
        assert conn.execute("SELECT assigned_to FROM review_items WHERE id = %s",
                            (items[2],)).fetchone() == (None,)
        decisions.comment(conn, items[0], "eng. Li", "customer says a sauna was installed")
        order = decisions.open_work_order(conn, items[2], "eng. Li", "=check CT polarity",
                                          assigned_to="field team 2", due_at=due)
        csv_text = decisions.work_orders_csv(decisions.work_orders(conn))
        assert f"{order.id},{items[2]},m3," in csv_text
        assert "'=check CT polarity" in csv_text  # never a live formula in a spreadsheet
        decisions.close_work_order(conn, order.id, "field team 2", "polarity reversed, fixed")
        with pytest.raises(ReviewError, match="already closed"):
            decisions.close_work_order(conn, order.id, "field team 2", "again")
        # bulk: one refusal (item 3 decided meanwhile) and nothing is decided
        review.decide_in(conn, items[2], "dismissed", "eng. Li")
        with pytest.raises(ReviewError, match=rf"item {items[2]}: .*nothing was decided"):
            decisions.bulk_decide(conn, items, "confirmed", "eng. Li")
        assert [r[0] for r in conn.execute(
            "SELECT status FROM review_items WHERE id = ANY(%s) ORDER BY id",
            (items[:2],))] == ["open", "open"]
        done = decisions.bulk_decide(conn, items[:2], "estimated", "eng. Li", "bulk",
                                     method="linear")
        assert [o.status for o in done] == ["estimated", "estimated"]
        actions = [s["action"] for s in decisions.history(conn, items[0])]
        assert actions == ["assigned", "comment", "decided"]
        actions = [s["action"] for s in decisions.history(conn, items[2])]
        assert actions == ["work_order", "work_order_closed", "decided"]
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM review_history")


def test_review_and_work_order_commands(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from launcher import cli

    (item,) = _open_item(db_url)
    base = ["collector", "review", "--database-url", db_url]
    assert cli.main([*base, str(item), "--assign", "eng. Li", "--due", "2031-01-06T09:00+08:00",
                     "--by", "Zhao"]) == 0
    assert cli.main([*base, str(item), "--note", "customer called", "--by", "Li"]) == 0
    # a time without a zone is refused by the parser, naming the fix
    with pytest.raises(SystemExit):
        cli.main([*base, str(item), "--assign", "x", "--due", "2031-01-06T09:00"])
    assert "needs a time zone" in capsys.readouterr().err
    assert cli.main([*base, str(item), "--correct", f"{SURGE_AT.isoformat()}=abc",
                     "--reason", "r", "--by", "Li"]) == 1
    assert "not a number" in capsys.readouterr().err
    assert cli.main([*base, str(item), "--correct", f"{SURGE_AT.isoformat()}=0.3",
                     "--reason", "meter test on site", "--by", "Li"]) == 0
    assert "corrected" in capsys.readouterr().out
    assert cli.main(["collector", "work-orders", "open", "--database-url", db_url,
                     "--item", str(item), "--instructions", "re-test the meter", "--by", "Li"]) == 0
    assert cli.main(["collector", "work-orders", "export", "--database-url", db_url]) == 0
    exported = capsys.readouterr().out
    assert "re-test the meter" in exported and "m1" in exported
    assert cli.main([*base, str(item), "--history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1].split()[0] for line in lines] == [
        "assigned", "comment", "decided", "work_order"]
