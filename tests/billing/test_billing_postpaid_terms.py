"""Postpaid terms beyond the ladder, on a real database: the good-payer discount on the bill
(exact to the fen), good payers' restores sent first, staff clearing the escalation flag,
and high-voltage accounts' in-month settlement schedules (kept, missed, cut and restored)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from billing_helpers import put_intervals, put_meter
from hypothesis import given
from hypothesis import strategies as st

from billing import arrears, ledger, lifecycle
from billing.arrears import CollectionSettings, CollectionSettingsError, Instalment
from billing.charging import charge_all
from billing.collection import (
    NotEscalated,
    NotHighVoltage,
    clear_escalation,
    create_settlement_schedule,
    run_collection,
)
from billing.disconnect import PolicyKnobs, evaluate_accounts
from billing.errors import BillingError
from billing.money import to_fen
from billing.notices import notices_of, record_evidence
from billing.postpaid import NotPostpaid, get_bill, issue_bill, open_postpaid
from billing.tariffs import load_tariffs

TARIFFS = load_tariffs()
S = CollectionSettings()
Z = S.zone
KNOBS = PolicyKnobs(max_group_cutoffs=50)
MAR = datetime(2026, 3, 1, tzinfo=Z).astimezone(UTC)


def _at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=Z)


def _open(conn: psycopg.Connection, acc: str, cls: str = "residential") -> None:
    open_postpaid(
        conn,
        acc,
        meters=[f"{acc}-m"],
        customer_class=cls,
        tariff="residential-flat",
        charge_from=MAR,
        tariffs=TARIFFS,
    )


def _use(conn: psycopg.Connection, acc: str, month: date, kwh: str = "100") -> None:
    """A month of daily readings, charged."""
    end = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    days = (end - month).days
    start = datetime(month.year, month.month, 1, tzinfo=Z).astimezone(UTC)
    put_intervals(conn, f"{acc}-m", [kwh] * days, start=start, step=timedelta(days=1))
    charge_all(conn, TARIFFS)


def _bill(conn: psycopg.Connection, acc: str, month: date, s: CollectionSettings = S):
    end = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    return issue_bill(conn, acc, month, end - timedelta(days=1), now=_at(end), settings=s)


def _kinds(conn: psycopg.Connection, acc: str) -> list[str]:
    return [n.kind for n in reversed(notices_of(conn, acc))]


# ---------------------------------------------------------------------------- discount


@given(
    charges=st.integers(0, 10**9),
    rate=st.decimals(0, Decimal("0.5"), places=4),
    fixed=st.integers(0, 10_000),
)
def test_good_payer_discount_is_exact_and_never_above_the_charges(
    charges: int, rate: Decimal, fixed: int
) -> None:
    s = CollectionSettings(good_payer_discount_rate=rate, good_payer_discount_fen=fixed)
    exact, fen = arrears.good_payer_discount(charges, s)
    if charges == 0:
        assert (exact, fen) == (0, 0)
        return
    assert exact == Decimal(charges) / 100 * rate + Decimal(fixed) / 100
    assert 0 <= fen <= charges
    assert fen == min(charges, to_fen(Decimal(charges) / 100 * rate) + fixed)
    if fen < charges:  # not capped: within half a fen of the exact discount
        assert abs(Decimal(fen) / 100 - exact) <= Decimal("0.005")


def test_discount_and_instalment_settings_are_checked() -> None:
    with pytest.raises(CollectionSettingsError, match="good_payer_discount"):
        CollectionSettings(good_payer_discount_rate=Decimal(1))
    with pytest.raises(CollectionSettingsError, match="hv_instalments"):
        CollectionSettings(hv_instalments=((10, Decimal("0.6")), (20, Decimal("0.4"))))
    with pytest.raises(CollectionSettingsError, match="hv_instalments"):
        CollectionSettings(hv_instalments=((20, Decimal("0.3")), (10, Decimal("0.3"))))


def test_a_good_payers_bill_carries_the_discount_line(conn: psycopg.Connection) -> None:
    s = CollectionSettings(good_payer_discount_rate=Decimal("0.025"))
    for acc in ("GOOD", "PLAIN"):
        _open(conn, acc)
    _use(conn, "GOOD", date(2026, 3, 1), "33.3")
    _use(conn, "PLAIN", date(2026, 3, 1), "33.3")
    # the flag comes from a clean year on the ladder (tests/billing/test_billing_postpaid_year)
    conn.execute("UPDATE billing_accounts SET good_payer_since = %s WHERE account_id = 'GOOD'",
                 (MAR,))
    good = _bill(conn, "GOOD", date(2026, 3, 1), s)
    plain = _bill(conn, "PLAIN", date(2026, 3, 1), s)
    assert plain.adjustments == 0 and good.charges == plain.charges
    expected = Decimal(to_fen(good.charges * Decimal("0.025"))) / 100
    assert good.adjustments == expected > 0
    assert good.closing == -(good.charges - expected) == ledger.balance(conn, "GOOD")
    _, lines = get_bill(conn, good.bill_id)
    (line,) = [ln for ln in lines if ln.kind == "discount"]
    assert line.amount == expected and "good-payer discount 2.5" in line.description
    # the discount is not a payment: paying the amount due leaves nothing unpaid, no more
    ledger.topup(conn, "GOOD", good.amount_due, "bank", "g-1", at=_at(date(2026, 4, 5)))
    run_collection(conn, _at(date(2026, 4, 12)), s)
    assert conn.execute(
        "SELECT unpaid_fen, stage FROM billing_collection WHERE account_id = 'GOOD'"
    ).fetchone() == (0, "clear")


def test_good_payers_restores_are_sent_first(conn: psycopg.Connection) -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    for i, acc in enumerate(("R1", "R2", "R3", "R4")):
        _open(conn, acc)
        put_meter(conn, f"{acc}-m", "s1", "gw1")
        action = "relay_open" if acc == "R4" else "relay_close"
        lifecycle.issue(
            conn, account_id=acc, meter_id=f"{acc}-m", action=action,
            purpose="cutoff" if acc == "R4" else "restore",
            now=now + timedelta(seconds=i), retry=KNOBS.retry, actor="test",
        )
    conn.execute("UPDATE billing_accounts SET good_payer_since = %s "
                 "WHERE account_id IN ('R2', 'R3')", (MAR,))
    later = now + timedelta(minutes=1)
    first = lifecycle.claim_due(conn, later, KNOBS.retry, "test", limit=2)
    assert [o.command.meter for o in first] == ["R2-m", "R3-m"]
    rest = lifecycle.claim_due(conn, later, KNOBS.retry, "test")
    assert [o.command.meter for o in rest] == ["R1-m", "R4-m"]  # then by when they fell due


# ---------------------------------------------------------------------------- escalation


def test_staff_clear_escalation_and_only_new_arrears_set_it_again(
    conn: psycopg.Connection,
) -> None:
    _open(conn, "E1")
    for month in (date(2026, 3, 1), date(2026, 4, 1)):
        _use(conn, "E1", month)
        _bill(conn, "E1", month)
    run_collection(conn, _at(date(2026, 5, 10)), S)  # both bills in arrears

    def flag() -> tuple:
        row = conn.execute("SELECT escalated_at IS NOT NULL, escalation_cleared_by "
                           "FROM billing_accounts WHERE account_id = 'E1'").fetchone()
        assert row is not None
        return row

    assert flag() == (True, None)
    with pytest.raises(BillingError, match="reason"):
        clear_escalation(conn, "E1", by="li.wei", reason=" ", now=_at(date(2026, 5, 11)))
    clear_escalation(conn, "E1", by="li.wei", reason="demand letter settled by phone",
                     now=_at(date(2026, 5, 11)))
    with pytest.raises(NotEscalated):
        clear_escalation(conn, "E1", by="li.wei", reason="again", now=_at(date(2026, 5, 11)))
    run_collection(conn, _at(date(2026, 5, 12)), S)  # the same two arrears: stays cleared
    assert flag() == (False, "li.wei")
    _use(conn, "E1", date(2026, 5, 1))
    _bill(conn, "E1", date(2026, 5, 1))
    run_collection(conn, _at(date(2026, 6, 7)), S)  # not overdue yet
    assert flag() == (False, "li.wei")
    # a new bill in arrears after clearing (flags are kept when the pass looks: within a week)
    run_collection(conn, _at(date(2026, 6, 15)), S)
    assert flag() == (True, "li.wei")
    audit = conn.execute("SELECT action, by_whom FROM billing_escalation_audit "
                         "WHERE account_id = 'E1' ORDER BY audit_id").fetchall()
    assert audit == [("set", "billing"), ("cleared", "li.wei"), ("set", "billing")]
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM billing_escalation_audit")
    ledger.create_account(conn, "PRE", meters=["PRE-m"], tariff="residential-flat",
                          tariffs=TARIFFS)
    with pytest.raises(NotPostpaid):
        clear_escalation(conn, "PRE", by="x", reason="y", now=_at(date(2026, 6, 15)))


# ---------------------------------------------------------------------------- settlement


@given(
    expected=st.integers(1, 10**10),
    shares=st.lists(st.integers(1, 300), min_size=1, max_size=5).filter(
        lambda xs: sum(xs) < 1000
    ),
)
def test_instalment_amounts_add_up_to_the_fen(expected: int, shares: list[int]) -> None:
    parts = [Decimal(x) / 1000 for x in shares]
    fens = arrears.settlement_amounts(expected, parts)
    assert all(f >= 0 for f in fens)
    assert sum(fens) == to_fen(Decimal(expected) / 100 * sum(parts))
    for f, sh in zip(fens, parts, strict=True):
        assert abs(Decimal(f) - Decimal(expected) * sh) <= 1  # within a fen of its share


def test_settlement_status_table() -> None:
    items = [Instalment(date(2026, 4, 10), 300), Instalment(date(2026, 4, 20), 300)]
    d10, d20 = date(2026, 4, 10), date(2026, 4, 20)
    assert arrears.settlement_status(items, {}, d10) == ("kept", None, 0)  # paid on the day
    assert arrears.settlement_status(items, {d10: 299}, d10 + timedelta(days=1)) == (
        "missed", d10, 1)
    assert arrears.settlement_status(items, {d10: 300, d20: 550}, date(2026, 4, 21)) == (
        "missed", d20, 50)
    assert arrears.settlement_status(items, {d10: 600, d20: 600}, date(2026, 4, 21)) == (
        "settled", None, 0)


def _hv(conn: psycopg.Connection, acc: str) -> int:
    """A high-voltage account with March billed and paid, then an April schedule (10th and
    20th, 30 % each of March's charges); returns March's charges in fen."""
    _open(conn, acc, "high_voltage")
    _use(conn, acc, date(2026, 3, 1))
    march = _bill(conn, acc, date(2026, 3, 1))
    ledger.topup(conn, acc, march.amount_due, "bank", f"{acc}-mar", at=_at(date(2026, 4, 3)))
    create_settlement_schedule(conn, acc, date(2026, 4, 1), by="zhang", reason="HV contract",
                               now=_at(date(2026, 4, 2)))
    _use(conn, acc, date(2026, 4, 1))
    return int(march.charges * 100)


def test_a_kept_schedule_settles_without_arrears_or_penalty(conn: psycopg.Connection) -> None:
    charges = _hv(conn, "HV1")
    (sched,) = conn.execute("SELECT expected_fen FROM billing_settlement_schedules").fetchall()
    assert sched == (charges,)
    amounts = [f for (f,) in conn.execute(
        "SELECT amount_fen FROM billing_settlement_instalments ORDER BY seq")]
    assert sum(amounts) == to_fen(Decimal(charges) / 100 * Decimal("0.6"))
    for i, day in enumerate((date(2026, 4, 10), date(2026, 4, 20))):
        ledger.topup(conn, "HV1", Decimal(amounts[i]) / 100, "bank", f"in-{i}", at=_at(day, 16))
        run_collection(conn, _at(day + timedelta(days=1)), S)
    assert conn.execute("SELECT state FROM billing_settlement_schedules").fetchone() == (
        "settled",)
    april = _bill(conn, "HV1", date(2026, 4, 1))
    in_month = Decimal(sum(amounts)) / 100
    # one ledger: March's payment and the in-month ones are the April bill's payments
    assert april.payments == Decimal(charges) / 100 + in_month
    assert april.amount_due == april.charges - in_month
    ledger.topup(conn, "HV1", april.amount_due, "bank", "apr", at=_at(date(2026, 5, 8)))
    run_collection(conn, _at(date(2026, 5, 10)), S)
    _use(conn, "HV1", date(2026, 5, 1))
    may = _bill(conn, "HV1", date(2026, 5, 1))
    assert may.penalties == 0 and may.payments == april.amount_due == -may.opening
    kinds = _kinds(conn, "HV1")
    assert "settlement_schedule" in kinds
    assert not {"collection", "settlement_missed", "planned_disconnection"} & set(kinds)


def test_a_missed_instalment_climbs_the_ladder_to_the_cut_and_payment_restores(
    conn: psycopg.Connection,
) -> None:
    s = CollectionSettings(stop_after_days=5)  # a short deadline: the cut comes in April
    _hv(conn, "HV2")
    (first,) = conn.execute("SELECT amount_fen FROM billing_settlement_instalments "
                            "WHERE seq = 1").fetchone()
    ledger.topup(conn, "HV2", Decimal(first - 100) / 100, "bank", "short",
                 at=_at(date(2026, 4, 10)))  # one yuan short
    run_collection(conn, _at(date(2026, 4, 10), 20), s)
    assert conn.execute("SELECT state FROM billing_settlement_schedules").fetchone() == (
        "kept",)  # paid on the day would still count
    t = _at(date(2026, 4, 11), 0)
    while t < _at(date(2026, 4, 21)):
        run_collection(conn, t, s)
        for n in notices_of(conn, "HV2"):
            if n.last_outcome != "delivered" and n.not_before <= t:
                record_evidence(conn, n.notice_id, at=t, channel="sms", outcome="delivered")
        evaluate_accounts(conn, t, PolicyKnobs(collection=s), "test")
        t += timedelta(hours=2)
    row = conn.execute("SELECT state, missed_due, missed_fen FROM billing_settlement_schedules"
                       ).fetchone()
    assert row == ("missed", date(2026, 4, 10), 100)
    kinds = _kinds(conn, "HV2")
    assert kinds[kinds.index("settlement_missed"):][:4] == [
        "settlement_missed", "planned_disconnection", "final_notice", "cutoff"]
    missed = next(n for n in notices_of(conn, "HV2") if n.kind == "settlement_missed")
    assert missed.required and "1.00" in missed.texts["zh-CN"]["body"]
    assert conn.execute("SELECT phase FROM billing_accounts WHERE account_id = 'HV2'"
                        ).fetchone() == ("cut",)
    # what is short now: the first instalment's yuan and the whole second instalment
    (second,) = conn.execute("SELECT amount_fen FROM billing_settlement_instalments "
                             "WHERE seq = 2").fetchone()
    paid_at = _at(date(2026, 4, 21))
    ledger.topup(conn, "HV2", Decimal(100 + second) / 100, "bank", "rest", at=paid_at)
    evaluate_accounts(conn, paid_at, PolicyKnobs(collection=s), "test")
    assert conn.execute("SELECT phase FROM billing_accounts WHERE account_id = 'HV2'"
                        ).fetchone() == ("normal",)
    assert _kinds(conn, "HV2")[-1] == "restore"


def test_only_high_voltage_accounts_get_a_schedule(conn: psycopg.Connection) -> None:
    _open(conn, "LV", "low_voltage")
    now = _at(date(2026, 4, 2))
    with pytest.raises(NotHighVoltage, match="high-voltage"):
        create_settlement_schedule(conn, "LV", date(2026, 4, 1), by="z", reason="r", now=now,
                                   expected=Decimal("100"))
    _open(conn, "HV", "high_voltage")
    with pytest.raises(BillingError, match="no bill"):
        create_settlement_schedule(conn, "HV", date(2026, 4, 1), by="z", reason="r", now=now)
    with pytest.raises(BillingError, match="first day"):
        create_settlement_schedule(conn, "HV", date(2026, 4, 2), by="z", reason="r", now=now,
                                   expected=Decimal("100"))
    with pytest.raises(BillingError, match="past"):
        create_settlement_schedule(conn, "HV", date(2026, 3, 1), by="z", reason="r", now=now,
                                   expected=Decimal("100"))
    with pytest.raises(BillingError, match="instalments"):
        create_settlement_schedule(conn, "HV", date(2026, 4, 1), by="z", reason="r", now=now,
                                   expected=Decimal("100"),
                                   instalments=[(10, Decimal("0.7")), (20, Decimal("0.3"))])
    # a day past the month's end is its last day; staff's own days and shares
    sid = create_settlement_schedule(
        conn, "HV", date(2026, 4, 1), by="z", reason="r", now=now, expected=Decimal("1000.01"),
        instalments=[(15, Decimal("0.25")), (31, Decimal("0.5"))])
    rows = conn.execute("SELECT due_date, amount_fen FROM billing_settlement_instalments "
                        "WHERE schedule_id = %s ORDER BY seq", (sid,)).fetchall()
    assert rows == [(date(2026, 4, 15), 25000), (date(2026, 4, 30), 50001)]
    with pytest.raises(BillingError, match="already"):
        create_settlement_schedule(conn, "HV", date(2026, 4, 1), by="z", reason="r", now=now,
                                   expected=Decimal("100"))
