"""A simulated year of postpaid accounts on a real database (hypothesis picks the accounts'
classes, protected windows and payment habits): money is conserved to the fen, penalties
stay within their class's rate, the ladder never skips or reorders a notice, cut-offs keep
the notice periods, protected windows and mass-cut rules, instalment plans protect while
kept, and paying restores."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import psycopg
import pytest
from billing_helpers import put_intervals
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import ledger
from billing.arrears import CollectionSettings
from billing.charging import charge_all
from billing.collection import create_plan, run_collection
from billing.disconnect import PolicyKnobs, evaluate_accounts
from billing.notices import record_evidence
from billing.policy import ProtectedWindows
from billing.postpaid import issue_due_bills, open_postpaid
from billing.tariffs import load_tariffs

TARIFFS = load_tariffs()
S = CollectionSettings(mass_households=2)  # every number is configurable: small compounds
KNOBS = PolicyKnobs(max_group_cutoffs=3)
Z = S.zone
START = date(2026, 1, 1)
STEPS = (time(9, 0), time(9, 40), time(20, 0))  # notices at 9, the cut 30 min on, night
_runs = itertools.count()

habit = st.fixed_dictionaries(
    {
        "cls": st.sampled_from(["residential", "low_voltage", "high_voltage"]),
        "kwh": st.integers(1, 400),  # per day
        "delay": st.one_of(st.none(), st.integers(0, 75)),  # days after the bill; None: never
        "part": st.sampled_from([Decimal(1), Decimal("0.5")]),
        "windows": st.booleans(),
        "plan_month": st.one_of(st.none(), st.integers(3, 9)),
        "plan_kept": st.booleans(),
    }
)


def _local(day: date, t: time) -> datetime:
    return datetime.combine(day, t, Z).astimezone(UTC)


@pytest.mark.timeout(900)
@settings(
    max_examples=int(os.environ.get("POSTPAID_YEAR_EXAMPLES", "1")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(habits=st.lists(habit, min_size=3, max_size=4))
def test_a_year_of_postpaid_accounts(conn: psycopg.Connection, habits: list[dict]) -> None:
    _check_year(conn, habits, _simulate(conn, habits))


@pytest.mark.timeout(900)
def test_a_year_with_every_kind_of_payer(conn: psycopg.Connection) -> None:
    """Fixed habits so every rule is exercised: a never-payer in a protected-window account,
    a late payer (cut, then restored), a kept and a missed instalment plan, a prompt payer."""
    base = {"kwh": 60, "part": Decimal(1), "plan_month": None, "plan_kept": False}
    habits = [
        {**base, "cls": "residential", "delay": None, "windows": True},
        {**base, "cls": "low_voltage", "delay": 55, "windows": False},
        {**base, "cls": "high_voltage", "delay": 50, "windows": True},
        {
            **base,
            "cls": "residential",
            "delay": None,
            "windows": False,
            "plan_month": 4,
            "plan_kept": True,
        },
        {**base, "cls": "low_voltage", "delay": None, "windows": False, "plan_month": 3},
        {**base, "cls": "residential", "delay": 2, "windows": False, "kwh": 10},
    ]
    accs = _simulate(conn, habits)
    _check_year(conn, habits, accs)
    cuts = dict(
        conn.execute(
            """SELECT account_id, count(*) FROM billing_notices WHERE kind = 'cutoff'
           AND account_id = ANY(%s) GROUP BY account_id""",
            (accs,),
        ).fetchall()
    )
    restores = dict(
        conn.execute(
            """SELECT account_id, count(*) FROM billing_notices WHERE kind = 'restore'
           AND account_id = ANY(%s) GROUP BY account_id""",
            (accs,),
        ).fetchall()
    )
    assert cuts.get(accs[0], 0) == 1 and accs[0] not in restores  # cut once, stays cut
    # the first cut-off's relay command was queued (no gateway here: it stays in flight)
    assert conn.execute(
        "SELECT count(*) FROM billing_commands WHERE account_id = %s AND purpose = 'cutoff'",
        (accs[0],),
    ).fetchone() == (1,)
    assert cuts.get(accs[1], 0) >= 1 and restores.get(accs[1], 0) == cuts[accs[1]]
    assert cuts.get(accs[5], 0) == 0
    plans = dict(
        conn.execute(
            "SELECT account_id, state FROM billing_instalment_plans WHERE account_id = ANY(%s)",
            (accs,),
        ).fetchall()
    )
    assert plans == {accs[3]: "completed", accs[4]: "missed"}
    assert cuts.get(accs[4], 0) >= 1  # back on the ladder after the missed instalment
    escalated = dict(
        conn.execute(
            "SELECT account_id, escalated_at IS NOT NULL FROM billing_accounts "
            "WHERE account_id = ANY(%s)",
            (accs,),
        ).fetchall()
    )
    assert escalated[accs[0]] and not escalated[accs[5]]
    good = conn.execute(
        "SELECT good_payer_since IS NOT NULL FROM billing_accounts WHERE account_id = %s",
        (accs[5],),
    ).fetchone()
    assert good == (True,)


def _simulate(conn: psycopg.Connection, habits: list[dict]) -> list[str]:
    run = next(_runs)
    accs = [f"Y{run}-{i}" for i in range(len(habits))]
    windows = ProtectedWindows(nightly=(time(18), time(8)), weekends=True)
    for acc, h in zip(accs, habits, strict=True):
        open_postpaid(
            conn,
            acc,
            meters=[f"{acc}-m"],
            customer_class=h["cls"],
            tariff="residential-flat",
            group=f"G{run}",
            windows=windows if h["windows"] else None,
            charge_from=_local(START, time(0)),
            tariffs=TARIFFS,
        )
    payments: dict[str, list[tuple[datetime, Decimal]]] = {a: [] for a in accs}
    plans: dict[str, tuple[datetime, list[tuple[date, Decimal]]]] = {}
    day = START
    while day < date(2027, 1, 12):
        if day.day == 1 and day > START:  # last month's readings arrive, bills go out
            first = (day - timedelta(days=1)).replace(day=1)
            n = (day - first).days
            for acc, h in zip(accs, habits, strict=True):
                put_intervals(
                    conn,
                    f"{acc}-m",
                    [str(h["kwh"])] * n,
                    start=_local(first, time(0)),
                    step=timedelta(days=1),
                )
            charge_all(conn, TARIFFS)
            for bill in issue_due_bills(conn, _local(day, time(10)), S):
                h = habits[accs.index(bill.account_id)]
                if h["delay"] is not None and bill.amount_due > 0:
                    amount = (bill.amount_due * h["part"]).quantize(Decimal("0.01"))
                    if amount > 0:
                        pay_day = day + timedelta(days=h["delay"])
                        payments[bill.account_id].append((_local(pay_day, time(12, 0)), amount))
                if (
                    h["plan_month"] == day.month
                    and bill.amount_due > 0
                    and (bill.account_id not in plans)
                ):
                    half = (bill.amount_due / 2).quantize(Decimal("0.01"))
                    items = [
                        (day + timedelta(days=20), half),
                        (day + timedelta(days=50), bill.amount_due - half),
                    ]
                    plans[bill.account_id] = (_local(day, time(11)), items)
                    create_plan(
                        conn,
                        bill.account_id,
                        items,
                        by="staff",
                        reason="hardship",
                        waive_penalty=True,
                        now=_local(day, time(11)),
                        s=S,
                    )
                    if h["plan_kept"]:
                        for d, amt in items:
                            payments[bill.account_id].append((_local(d, time(12)), amt))
        if not _busy(conn, accs, day, payments):
            day += timedelta(days=1)
            continue
        for t in STEPS:
            now = _local(day, t)
            for acc in accs:
                due = [p for p in payments[acc] if p[0] <= now]
                for at, amount in due:
                    ledger.topup(conn, acc, amount, "bank", f"{acc}:{at.isoformat()}", at=at)
                    payments[acc].remove((at, amount))
            run_collection(conn, now, S)
            _deliver(conn, now)
            evaluate_accounts(conn, now, KNOBS, "sim")
            conn.execute(
                "UPDATE billing_cutoff_approvals SET approved_at = %s, "
                "approved_by = 'sim', valid_until = %s + interval '4 hours'",
                (now, now),
            )
        day += timedelta(days=1)
    return accs


def _check_year(conn: psycopg.Connection, habits: list[dict], accs: list[str]) -> None:
    windows = ProtectedWindows(nightly=(time(18), time(8)), weekends=True)
    for acc, h in zip(accs, habits, strict=True):
        _money_conserved(conn, acc)
        _penalties_within_rates(conn, acc, h["cls"])
        _ladder_in_order(conn, acc)
        _cuts_keep_the_rules(conn, acc, h["windows"], windows)
        _plans_protect(conn, acc)
        _paid_means_restored(conn, acc)


def _busy(
    conn: psycopg.Connection,
    accs: list[str],
    day: date,
    payments: dict[str, list[tuple[datetime, Decimal]]],
) -> bool:
    """Whether anything can happen on ``day`` (the engine would find nothing to do
    otherwise): bills, payments, a ladder step or cut due, a policy timer running, an
    instalment date just passed. Skipping idle days keeps the year fast."""
    end = _local(day + timedelta(days=1), time(0))
    if day.day == 1 or any(p[0] < end for ps in payments.values() for p in ps):
        return True
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM billing_collection WHERE account_id = ANY(%(a)s)
                         AND (recheck OR wake_at < %(end)s))
               OR EXISTS (SELECT 1 FROM billing_accounts WHERE account_id = ANY(%(a)s)
                          AND (dirty OR phase IN ('warned', 'final')))""",
        {"a": accs, "end": end},
    ).fetchone()
    return bool(row and row[0])


def _deliver(conn: psycopg.Connection, now: datetime) -> None:
    """The notify part's job, done at once: every due notice delivered (posted on site)."""
    for nid, kind in conn.execute(
        "SELECT notice_id, kind FROM billing_notices WHERE closed_at IS NULL "
        "AND withdrawn_at IS NULL AND not_before <= %s",
        (now,),
    ).fetchall():
        record_evidence(
            conn,
            nid,
            at=now,
            channel="board" if kind == "posted_notice" else "sms",
            outcome="posted" if kind == "posted_notice" else "delivered",
        )


def _money_conserved(conn: psycopg.Connection, acc: str) -> None:
    bills = conn.execute(
        """SELECT opening_fen, charges_fen + corrections_fen, adjustments_fen, penalties_fen,
                  payments_fen, closing_fen, first_entry_id, last_entry_id
           FROM billing_bills WHERE account_id = %s ORDER BY bill_id""",
        (acc,),
    ).fetchall()
    assert len(bills) == 12
    prev_closing, prev_last = 0, 0
    for opening, charges, adjustments, penalties, payments, closing, first, last in bills:
        assert opening == prev_closing and first == prev_last
        in_range = conn.execute(
            "SELECT coalesce(sum(amount_fen), 0) FROM billing_ledger WHERE account_id = %s "
            "AND entry_id > %s AND entry_id <= %s",
            (acc, first, last),
        ).fetchone()
        assert in_range is not None and closing - opening == in_range[0]
        assert closing == opening - charges + adjustments - penalties + payments
        prev_closing, prev_last = closing, last
    after = conn.execute(
        "SELECT coalesce(sum(amount_fen), 0) FROM billing_ledger "
        "WHERE account_id = %s AND entry_id > %s",
        (acc, prev_last),
    ).fetchone()
    assert after is not None
    # bills + penalties - payments = outstanding, to the fen
    assert ledger.balance(conn, acc) == ledger.ledger_sum(conn, acc)
    assert ledger.balance(conn, acc) * 100 == prev_closing + after[0]


def _penalties_within_rates(conn: psycopg.Connection, acc: str, cls: str) -> None:
    top = Decimal("0.001") if cls == "residential" else Decimal("0.003")
    for debits, due, through, total, exact in conn.execute(
        """SELECT b.charges_fen + b.corrections_fen, b.due_date, p.through, p.total_fen,
                      p.exact
               FROM billing_penalties p JOIN billing_bills b USING (bill_id)
               WHERE b.account_id = %s""",
        (acc,),
    ):
        days = (through - due).days
        assert days > 0 and total >= 100  # never before the due date; at least 1 yuan
        assert exact <= Decimal(debits) / 100 * top * days
        if cls != "residential" and through.year == (due + timedelta(days=1)).year:
            assert exact <= Decimal(debits) / 100 * Decimal("0.002") * days


def _ladder_in_order(conn: psycopg.Connection, acc: str) -> None:
    order = ["reminder:3", "due_today", "collection", "planned_disconnection"]
    for bill_id, due in conn.execute(
        "SELECT bill_id, due_date FROM billing_bills WHERE account_id = %s", (acc,)
    ):
        rows = conn.execute(
            "SELECT dedupe_key, not_before FROM billing_notices WHERE dedupe_key LIKE %s "
            "ORDER BY notice_id",
            (f"ladder:{bill_id}:%",),
        ).fetchall()
        keys = [k.split(":", 2)[2] for k, _ in rows]
        assert keys == order[: len(keys)]  # a prefix of the ladder: nothing skipped
        times = [t for _, t in rows]
        assert times == sorted(times)
        if len(keys) == 4:
            assert times[3] >= times[2] + timedelta(days=1)
            assert times[3].astimezone(Z).date() > due + timedelta(days=S.stop_after_days)


def _cuts_keep_the_rules(
    conn: psycopg.Connection, acc: str, protected: bool, windows: ProtectedWindows
) -> None:
    for (cut,) in conn.execute(
        "SELECT not_before FROM billing_notices WHERE account_id = %s AND kind = 'cutoff'", (acc,)
    ).fetchall():
        if protected:
            assert not windows.contains(cut)
        final = conn.execute(
            "SELECT max(not_before) FROM billing_notices WHERE account_id = %s "
            "AND kind = 'final_notice' AND not_before <= %s",
            (acc, cut),
        ).fetchone()
        assert final is not None and final[0] is not None
        assert cut - final[0] >= timedelta(minutes=30)
        planned = conn.execute(
            "SELECT max(closed_at) FROM billing_notices WHERE account_id = %s "
            "AND kind = 'planned_disconnection' AND closed_at <= %s",
            (acc, cut),
        ).fetchone()
        assert planned is not None and planned[0] is not None
        assert cut - planned[0] >= timedelta(days=S.cut_notice_days)
        group_cuts = conn.execute(
            """SELECT count(DISTINCT n.account_id) FROM billing_notices n
               JOIN billing_accounts a USING (account_id)
               WHERE a.group_key = (SELECT group_key FROM billing_accounts
                                    WHERE account_id = %s)
                 AND n.kind = 'cutoff' AND n.not_before BETWEEN %s AND %s""",
            (acc, cut - timedelta(hours=12), cut + timedelta(hours=12)),
        ).fetchone()
        assert group_cuts is not None
        if group_cuts[0] > S.mass_households:
            posted = conn.execute(
                "SELECT min(closed_at) FROM billing_notices WHERE account_id = %s AND "
                "kind = 'posted_notice' AND closed_at <= %s",
                (acc, cut),
            ).fetchone()
            assert posted is not None and posted[0] is not None
            assert cut - posted[0] >= timedelta(days=S.posted_notice_days)


def _plans_protect(conn: psycopg.Connection, acc: str) -> None:
    for created, ended, state in conn.execute(
        "SELECT created_at, ended_at, state FROM billing_instalment_plans WHERE account_id = %s",
        (acc,),
    ).fetchall():
        cuts = conn.execute(
            "SELECT count(*) FROM billing_notices WHERE account_id = %s AND kind = 'cutoff' "
            "AND not_before > %s AND not_before < %s",
            (acc, created, ended or datetime.max.replace(tzinfo=UTC)),
        ).fetchone()
        assert cuts == (0,), f"cut while plan {state} protected"


def _paid_means_restored(conn: psycopg.Connection, acc: str) -> None:
    stage = conn.execute(
        "SELECT stage FROM billing_collection WHERE account_id = %s", (acc,)
    ).fetchone()
    phase = conn.execute(
        "SELECT phase FROM billing_accounts WHERE account_id = %s", (acc,)
    ).fetchone()
    assert stage is not None and phase is not None
    if stage[0] != "cut_due":
        assert phase[0] != "cut"
