"""Postpaid accounts in a real database: bills, the collection ladder's notices, the cut-off
through the disconnect policy, payment and restore; instalment plans; immutability."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from billing_helpers import put_intervals

from billing import ledger
from billing.arrears import CollectionSettings
from billing.charging import charge_all
from billing.collection import create_plan, run_collection
from billing.disconnect import PolicyKnobs, evaluate_accounts
from billing.notices import notices_of, record_evidence
from billing.postpaid import BillingError, get_bill, issue_bill, open_postpaid
from billing.tariffs import load_tariffs

TARIFFS = load_tariffs()
S = CollectionSettings()
KNOBS = PolicyKnobs(max_group_cutoffs=50)
MAR = datetime(2026, 3, 1, tzinfo=S.zone).astimezone(UTC)
APR1 = datetime(2026, 4, 1, 10, tzinfo=S.zone)  # bills go out 10:00 on the 1st


def _open(
    conn: psycopg.Connection, acc: str = "P1", cls: str = "residential", **kw: object
) -> None:
    open_postpaid(
        conn,
        acc,
        meters=[f"{acc}-m"],
        customer_class=cls,
        tariff="residential-flat",
        charge_from=MAR,
        tariffs=TARIFFS,
        **kw,
    )  # type: ignore[arg-type]
    put_intervals(conn, f"{acc}-m", ["100"] * 31, start=MAR, step=timedelta(days=1))
    charge_all(conn, TARIFFS)


def _kinds(conn: psycopg.Connection, acc: str) -> list[str]:
    return [n.kind for n in reversed(notices_of(conn, acc))]


def _deliver_all(conn: psycopg.Connection, acc: str, at: datetime) -> None:
    for n in notices_of(conn, acc):
        if n.last_outcome != "delivered":
            record_evidence(
                conn, n.notice_id, at=max(at, n.not_before), channel="sms", outcome="delivered"
            )


def _walk(conn: psycopg.Connection, acc: str, start: datetime, days: int) -> None:
    """Run the ladder and the policy every hour, delivering every notice at once."""
    t = start
    for _ in range(days * 24):
        run_collection(conn, t, S)
        _deliver_all(conn, acc, t)
        evaluate_accounts(conn, t, KNOBS, "test")
        t += timedelta(hours=1)


def test_bill_adds_up_and_is_immutable(conn: psycopg.Connection) -> None:
    _open(conn)
    bill = issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    assert bill.kwh == Decimal(3100) and bill.charges > 0 and bill.opening == 0
    assert bill.closing == -bill.charges == -bill.amount_due
    assert bill.closing == ledger.balance(conn, "P1")
    assert bill.due_date == date(2026, 4, 8)
    assert (
        issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S) == bill
    )  # idempotent
    _, lines = get_bill(conn, bill.bill_id)
    assert lines[0].kind == "opening" and lines[-1].amount == bill.closing
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("UPDATE billing_bills SET amount_due_fen = 0")
    with pytest.raises(BillingError, match="overlaps"):
        issue_bill(
            conn,
            "P1",
            date(2026, 3, 15),
            date(2026, 4, 10),
            now=APR1 + timedelta(days=30),
            settings=S,
        )
    assert _kinds(conn, "P1") == ["bill"]


def test_correction_lands_on_the_next_bill(conn: psycopg.Connection) -> None:
    _open(conn)
    first = issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    put_intervals(conn, "P1-m", ["110"], start=MAR, step=timedelta(days=1))  # +10 kWh late
    charge_all(conn, TARIFFS)
    second = issue_bill(
        conn, "P1", date(2026, 4, 1), date(2026, 4, 30), now=APR1 + timedelta(days=30), settings=S
    )
    assert get_bill(conn, first.bill_id)[0] == first
    assert second.corrections > 0 and second.charges == 0
    assert second.opening == first.closing
    assert second.closing == ledger.balance(conn, "P1")


def test_ladder_to_cutoff_payment_and_restore(conn: psycopg.Connection) -> None:
    _open(conn)
    bill = issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    _walk(conn, "P1", APR1, 45)
    kinds = _kinds(conn, "P1")
    assert kinds[:6] == [
        "bill",
        "reminder",
        "due_today",
        "collection",
        "planned_disconnection",
        "final_notice",
    ]
    assert kinds[6] == "cutoff"
    assert conn.execute("SELECT phase FROM billing_accounts").fetchone() == ("cut",)
    cut_at = conn.execute(
        "SELECT created_at FROM billing_commands WHERE action = 'relay_open'"
    ).fetchone()
    # not before the delivered planned notice + 3 days
    (planned,) = [n for n in notices_of(conn, "P1") if n.kind == "planned_disconnection"]
    assert cut_at is not None and planned.not_before + timedelta(days=3) <= cut_at[0]
    assert planned.not_before.astimezone(S.zone).date() > bill.due_date + timedelta(days=30)
    paid_at = APR1 + timedelta(days=46)
    ledger.topup(conn, "P1", bill.amount_due, "bank", "pay-1", at=paid_at)
    evaluate_accounts(conn, paid_at, KNOBS, "test")
    assert conn.execute("SELECT phase FROM billing_accounts").fetchone() == ("normal",)
    assert _kinds(conn, "P1")[-1] == "restore"


def test_undelivered_planned_notice_allows_no_cut(conn: psycopg.Connection) -> None:
    _open(conn)
    issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    t = APR1
    for _ in range(50):
        run_collection(conn, t, S)
        evaluate_accounts(conn, t, KNOBS, "test")
        t += timedelta(days=1)
    row = conn.execute("SELECT stage, hold FROM billing_collection").fetchone()
    assert row is not None and row[0] == "cut_planned" and "delivery" in row[1]
    assert conn.execute("SELECT count(*) FROM billing_commands").fetchone() == (0,)


def test_instalment_plan_protects_until_missed(conn: psycopg.Connection) -> None:
    _open(conn)
    bill = issue_bill(conn, "P1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    half = (bill.amount_due / 2).quantize(Decimal("0.01"))
    start = APR1 + timedelta(days=20)
    _walk(conn, "P1", APR1, 20)
    create_plan(
        conn,
        "P1",
        [(date(2026, 5, 1), half), (date(2026, 6, 1), bill.amount_due - half)],
        by="staff",
        reason="hardship",
        waive_penalty=True,
        now=start,
    )
    ledger.topup(conn, "P1", half, "counter", "inst-1", at=start + timedelta(days=5))
    _walk(conn, "P1", start, 44)  # to 2026-06-04: the second instalment was missed
    assert conn.execute("SELECT state, missed_due FROM billing_instalment_plans").fetchone() == (
        "missed",
        date(2026, 6, 1),
    )
    kinds = _kinds(conn, "P1")
    # protected while kept; the missed instalment puts it back on the ladder at once
    assert kinds[kinds.index("instalment") :] == [
        "instalment",
        "instalment_missed",
        "planned_disconnection",
    ]


def test_bill_shows_time_of_use_and_tier_breakdown(conn: psycopg.Connection) -> None:
    open_postpaid(
        conn,
        "T1",
        meters=["T1-m"],
        customer_class="residential",
        tariff="residential-tou-tiered",
        charge_from=MAR,
        tariffs=TARIFFS,
    )
    put_intervals(conn, "T1-m", ["100"] * 31, start=MAR, step=timedelta(days=1))
    charge_all(conn, TARIFFS)
    bill = issue_bill(conn, "T1", date(2026, 3, 1), date(2026, 3, 31), now=APR1, settings=S)
    total = [r for r in bill.breakdown if r["band"] == "total"]
    parts = [r for r in bill.breakdown if r["band"] != "total"]
    assert total == [
        {
            "meter": "T1-m",
            "band": "total",
            "tier": "",
            "price": "",
            "kwh": "3100.0000",
            "amount": str(bill.charges),
        }
    ]
    assert len({r["band"] for r in parts}) >= 2  # peak / valley ... split
    assert sum(Decimal(r["kwh"]) for r in parts) == Decimal(3100)
    # re-priced exactly: within a fen per part of what the ledger charged
    priced = sum(Decimal(r["amount"]) for r in parts)
    assert abs(priced - bill.charges) <= Decimal("0.01") * len(parts)
