"""Ledger, top-ups and charging against a real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from billing_helpers import T0, put_intervals, set_held
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import ledger
from billing.charging import charge_all, charge_batch
from billing.ledger import BillingError, TopupConflict, UnknownAccount
from billing.money import to_fen
from billing.tariffs import load_tariffs

TARIFFS = load_tariffs()
D = Decimal


def open_account(conn: psycopg.Connection, acc: str, meters: list[str], tariff: str = \
                 "residential-flat", **kw: object) -> None:
    ledger.create_account(conn, acc, meters=meters, tariff=tariff, charge_from=T0,
                          tariffs=TARIFFS, **kw)  # type: ignore[arg-type]


def test_topup_is_idempotent_by_reference(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"], opening_balance="10.00")
    e1 = ledger.topup(conn, "A1", D("50.00"), "wechat", "WX-1")
    e2 = ledger.topup(conn, "A1", "50", "wechat", "WX-1")
    assert e1 == e2
    assert ledger.balance(conn, "A1") == D("60.00")
    ledger.topup(conn, "A1", "5", "bank", "WX-1")  # another channel, another payment
    assert ledger.balance(conn, "A1") == D("65.00") == ledger.ledger_sum(conn, "A1")
    with pytest.raises(TopupConflict):
        ledger.topup(conn, "A1", "49", "wechat", "WX-1")
    with pytest.raises(UnknownAccount):
        ledger.topup(conn, "nope", "1", "wechat", "x")
    with pytest.raises(BillingError, match="channel"):
        ledger.topup(conn, "A1", "1", "paypal", "x")
    with pytest.raises(BillingError, match="float"):
        ledger.topup(conn, "A1", 1.5, "wechat", "y")  # type: ignore[arg-type]


def test_account_validation(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"])
    with pytest.raises(ledger.AccountExists):
        open_account(conn, "A1", ["m9"])
    with pytest.raises(BillingError, match="already belong"):
        open_account(conn, "A2", ["m1"])
    with pytest.raises(BillingError, match="tariff"):
        open_account(conn, "A3", ["m3"], tariff="nope")


def test_ledger_is_append_only(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"])
    ledger.topup(conn, "A1", "5", "counter", "c1")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE billing_ledger SET amount_fen = 1")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM billing_ledger")


def test_arrears_recovery_share_of_topup(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"], arrears="30.00", arrears_share="0.25")
    ledger.topup(conn, "A1", "100", "alipay", "p1")
    assert ledger.balance(conn, "A1") == D("75.00")
    ledger.topup(conn, "A1", "100", "alipay", "p2")
    ledger.topup(conn, "A1", "100", "alipay", "p3")  # only 5.00 of debt was left
    assert ledger.balance(conn, "A1") == D("270.00")
    kinds = [e.kind for e in ledger.entries(conn, "A1")]
    assert kinds.count("arrears_recovery") == 2


def test_charges_once_and_resumes_from_the_queue(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1", "m2"], opening_balance="100")
    put_intervals(conn, "m1", ["0.1234"] * 8)
    put_intervals(conn, "m2", ["0.5"] * 4)
    s = charge_all(conn, TARIFFS)
    assert (s.intervals, s.adjustments) == (12, 0)
    assert charge_all(conn, TARIFFS).work == 0  # nothing twice
    # exact total: (8 * 0.1234 + 4 * 0.5) kWh x 0.56 yuan, rounded once
    exact = (8 * D("0.1234") + 2) * D("0.56")
    assert ledger.balance(conn, "A1") == D(100) - D(to_fen(exact)) / 100
    assert ledger.balance(conn, "A1") == ledger.ledger_sum(conn, "A1")
    put_intervals(conn, "m1", ["0.2"] * 2, start=T0 + timedelta(hours=2))  # new data only
    assert charge_all(conn, TARIFFS).intervals == 2
    n = conn.execute("SELECT count(*) FROM billing_ledger WHERE kind = 'charge'").fetchone()
    assert n == (14,)


def test_held_interval_waits_for_release(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"])
    put_intervals(conn, "m1", ["1", "9"])
    set_held(conn, "m1", T0 + timedelta(minutes=15), True)
    s = charge_all(conn, TARIFFS)
    assert (s.intervals, s.skipped) == (1, 1)
    assert ledger.balance(conn, "A1") == D("-0.56")
    set_held(conn, "m1", T0 + timedelta(minutes=15), False)  # released: queued again
    assert charge_all(conn, TARIFFS).intervals == 1
    assert ledger.balance(conn, "A1") == D("-5.60")


def test_actual_replacing_estimate_posts_the_difference(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"])
    put_intervals(conn, "m1", ["2.0000"], quality="E")
    charge_all(conn, TARIFFS)
    put_intervals(conn, "m1", ["2.0000"], quality="E")  # same value re-delivered
    assert charge_all(conn, TARIFFS).unchanged == 1
    put_intervals(conn, "m1", ["1.5000"], quality="A")  # the actual arrives
    s = charge_all(conn, TARIFFS)
    assert s.adjustments == 1
    assert ledger.balance(conn, "A1") == D("-0.84")  # 1.5 x 0.56
    rows = conn.execute(
        "SELECT kind, amount_fen FROM billing_ledger ORDER BY entry_id").fetchall()
    assert rows == [("charge", -112), ("adjustment", 28)]


def test_consumption_before_account_start_is_not_charged(conn: psycopg.Connection) -> None:
    ledger.create_account(conn, "A1", meters=["m1"], tariff="residential-flat",
                          charge_from=T0 + timedelta(hours=1), tariffs=TARIFFS)
    put_intervals(conn, "m1", ["1"] * 8)
    s = charge_all(conn, TARIFFS)
    assert (s.intervals, s.skipped) == (4, 4)


def test_tiers_accumulate_per_account_across_meters(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1", "m2"], tariff="residential-tiered")
    conn.execute(
        "INSERT INTO billing_tier_usage VALUES ('A1', '2026-01-01', 2759)")
    put_intervals(conn, "m1", ["1"])
    put_intervals(conn, "m2", ["1"])
    charge_all(conn, TARIFFS)
    # 1 kWh at tier 1 (0.5283) and 1 kWh at tier 2 (0.5783)
    assert ledger.balance(conn, "A1") == D("-1.11")
    assert conn.execute("SELECT kwh FROM billing_tier_usage").fetchone() == (D("2761"),)


def test_an_open_writer_is_charged_after_its_commit(conn: psycopg.Connection,
                                                   db_url: str) -> None:
    """Intervals of a transaction still open are not on the queue yet: billing skips the
    queue row the writer holds (that meter waits, other meters are charged); once committed
    they are charged, once."""
    open_account(conn, "A1", ["m1"])
    open_account(conn, "A2", ["m2"])
    put_intervals(conn, "m1", ["1"], start=T0 + timedelta(hours=1))  # committed
    with psycopg.connect(db_url) as writer:  # a transaction left open
        put_intervals(writer, "m1", ["1", "2"])
        put_intervals(conn, "m2", ["1"])  # committed, another meter
        assert charge_all(conn, TARIFFS).intervals == 1  # m2's
        assert charge_all(conn, TARIFFS).work == 0
        writer.commit()
    assert charge_all(conn, TARIFFS).intervals == 3  # m1's, the committed one with them
    assert charge_all(conn, TARIFFS).work == 0
    assert conn.execute("SELECT count(*) FROM interval_changes").fetchone() == (0,)


def test_a_writer_waits_for_billing_and_its_change_is_charged_next(
        conn: psycopg.Connection, db_url: str) -> None:
    """A writer that comes to a queue row while billing holds it waits for billing's commit
    and then queues its span again: its new value is charged as an adjustment, never lost."""
    open_account(conn, "A1", ["m1"])
    put_intervals(conn, "m1", ["1", "1"])
    done = threading.Event()

    def rewrite() -> None:
        with psycopg.connect(db_url, autocommit=True) as w:
            put_intervals(w, "m1", ["3"], start=T0 + timedelta(minutes=15))
        done.set()

    with conn.transaction():  # billing's batch, its commit held back
        assert charge_batch(conn, TARIFFS).intervals == 2
        writer = threading.Thread(target=rewrite)
        writer.start()
        assert not done.wait(0.5)  # waits on billing's lock of the queue row
    writer.join(10)
    assert done.is_set()
    s = charge_all(conn, TARIFFS)
    assert (s.adjustments, s.unchanged) == (1, 0)
    assert conn.execute("SELECT kwh FROM billing_charges ORDER BY interval_start"
                        ).fetchall() == [(D("1.0000"),), (D("3.0000"),)]
    assert ledger.balance(conn, "A1") == D("-2.24")  # 4 kWh x 0.56


def test_a_span_longer_than_a_batch_is_charged_in_parts_once(conn: psycopg.Connection) -> None:
    open_account(conn, "A1", ["m1"])
    put_intervals(conn, "m1", ["0.5"] * 25)
    counts = []
    for _ in range(5):
        counts.append(charge_batch(conn, TARIFFS, max_rows=10).intervals)
    assert counts == [10, 10, 5, 0, 0]
    assert conn.execute("SELECT count(*) FROM interval_changes").fetchone() == (0,)
    assert conn.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM billing_ledger"
                        " WHERE kind = 'charge'").fetchone() == (25, 25)


def test_a_crashed_batch_leaves_the_queue_as_it_was(conn: psycopg.Connection) -> None:
    """Billing dies mid-batch (its transaction rolls back): the queue rows are still there
    and the restarted billing charges everything once."""
    open_account(conn, "A1", ["m1"])
    put_intervals(conn, "m1", ["1"] * 4)
    with pytest.raises(RuntimeError), conn.transaction():
        charge_batch(conn, TARIFFS)
        raise RuntimeError("billing killed")
    assert conn.execute("SELECT count(*) FROM billing_ledger").fetchone() == (0,)
    assert charge_all(conn, TARIFFS).intervals == 4
    assert charge_all(conn, TARIFFS).work == 0


def test_two_chargers_on_one_backlog_charge_each_interval_once(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as c:
        for a in range(40):
            open_account(c, f"A{a}", [f"m{a}"], opening_balance="100")
            put_intervals(c, f"m{a}", ["0.0333"] * 50)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                for _ in range(30):
                    charge_all(c, TARIFFS, max_accounts=3, max_rows=40)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with psycopg.connect(db_url, autocommit=True) as c:
        assert charge_all(c, TARIFFS).work == 0
        assert c.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM billing_ledger "
                         "WHERE kind = 'charge'").fetchone() == (2000, 2000)
        for a in range(40):
            assert ledger.balance(c, f"A{a}") == ledger.ledger_sum(c, f"A{a}")
            # 50 x 0.0333 kWh x 0.56, rounded once thanks to the carry
            assert ledger.balance(c, f"A{a}") == D(100) - D(to_fen(50 * D("0.0333") *
                                                                   D("0.56"))) / 100


ops = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(1, 5), st.just(0)),
        st.tuples(st.just("interval"), st.integers(0, 20),
                  st.decimals(min_value=0, max_value=3, places=4)),
        st.tuples(st.just("charge"), st.just(0), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_balance_equals_ledger_after_any_interleaving(conn: psycopg.Connection,
                                                      plan: list[tuple[str, int, object]]) -> None:
    conn.execute("TRUNCATE billing_accounts, billing_meters, billing_ledger, billing_charges, "
                 "billing_tier_usage, intervals CASCADE")
    open_account(conn, "A", ["m"], tariff="residential-tou-tiered")
    latest: dict[int, Decimal] = {}
    for op, a, b in plan:
        if op == "topup":
            # a replayed payment: same reference, same amount
            ledger.topup(conn, "A", D(a * 137) / 100, "counter", f"r{a}")
        elif op == "interval":
            put_intervals(conn, "m", [b], start=T0 + a * timedelta(minutes=15))  # type: ignore[list-item]
            latest[a] = b  # type: ignore[assignment]
        else:
            charge_all(conn, TARIFFS)
    charge_all(conn, TARIFFS)
    assert ledger.balance(conn, "A") == ledger.ledger_sum(conn, "A")
    charged = conn.execute("SELECT interval_start, kwh FROM billing_charges").fetchall()
    assert {(s - T0) // timedelta(minutes=15): k for s, k in charged} == latest
    topups = conn.execute("SELECT count(*) FROM billing_ledger WHERE kind = 'topup'").fetchone()
    assert topups == (len({a for op, a, _ in plan if op == "topup"}),)


def test_unpriceable_interval_is_kept_aside_not_blocking(conn: psycopg.Connection) -> None:
    from datetime import UTC, datetime

    open_account(conn, "A1", ["m1"])
    conn.execute("UPDATE billing_meters SET charge_from = '2000-01-01'")
    put_intervals(conn, "m1", ["1"], start=datetime(2020, 1, 1, tzinfo=UTC))  # before v1
    put_intervals(conn, "m1", ["1"])
    s = charge_all(conn, TARIFFS)
    assert (s.intervals, s.unbilled) == (1, 1)
    row = conn.execute("SELECT reason FROM billing_unbilled").fetchone()
    assert row is not None and "no version in force" in row[0]
    assert conn.execute("SELECT kind FROM billing_alerts WHERE kind = 'billing_error'"
                        ).fetchall() == [("billing_error",)]
    assert charge_all(conn, TARIFFS).work == 0


@pytest.mark.parametrize("odd", ["plain", 'quo"te', "back\\slash", "and,comma {x} NULL",
                                 "中文 户号"])
def test_ids_of_any_text_are_charged_across_batches(conn: psycopg.Connection, odd: str) -> None:
    """Account ids go out as COPY text and array literals: any printable character must
    survive (meter ids are wire ids: ledger.create_account); and with small batches (each
    starting after the previous one's last account, wrapping once) every account is charged
    exactly once."""
    accounts = [f"{odd}-{i}" for i in range(7)]
    for i, a in enumerate(accounts):
        open_account(conn, a, [f"m:{i}"], tariff="residential-tiered")
        put_intervals(conn, f"m:{i}", ["0.25"] * 3)
    s = charge_all(conn, TARIFFS, max_accounts=2, max_rows=4)
    assert (s.intervals, s.adjustments) == (21, 0)
    got = conn.execute("SELECT account_id, balance_fen, (SELECT sum(amount_fen) FROM "
                       "billing_ledger l WHERE l.account_id = a.account_id), "
                       "NOT EXISTS (SELECT 1 FROM interval_changes q "
                       "JOIN meters m ON m.meter_key = q.meter "
                       "WHERE m.meter_id = billing_meters.meter_id), "
                       "(SELECT kwh FROM billing_tier_usage t WHERE t.account_id = a.account_id) "
                       "FROM billing_accounts a JOIN billing_meters USING (account_id) "
                       "ORDER BY account_id").fetchall()
    assert [r[0] for r in got] == sorted(accounts)
    assert all(r[1] == r[2] == -40 and r[3] and r[4] == D("0.75") for r in got), got
    assert charge_all(conn, TARIFFS, max_accounts=2).work == 0


def test_charge_parallel_charges_each_interval_once(db_url: str) -> None:
    from billing.charging import charge_parallel

    with psycopg.connect(db_url, autocommit=True) as c:
        for i in range(12):
            open_account(c, f"A{i}", [f"m{i}"], tariff="residential-tiered")
            put_intervals(c, f"m{i}", ["0.25"] * 8)
    conns = [psycopg.connect(db_url, autocommit=True) for _ in range(3)]
    try:
        s = charge_parallel(conns, TARIFFS, max_accounts=2, max_rows=5)
    finally:
        for c in conns:
            c.close()
    assert (s.intervals, s.adjustments) == (96, 0)
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM billing_ledger"
                         ).fetchone() == (96, 96)
        assert c.execute("SELECT count(*) FROM billing_accounts a WHERE balance_fen <> "
                         "(SELECT sum(amount_fen) FROM billing_ledger l "
                         "WHERE l.account_id = a.account_id)").fetchone() == (0,)
        assert charge_all(c, TARIFFS).work == 0
