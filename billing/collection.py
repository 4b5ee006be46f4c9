"""The collection ladder applied to postpaid accounts, one pass at a time.

Each pass, per postpaid account (its ``billing_collection`` row locked, ``SKIP LOCKED``):
instalment plans are checked (kept / missed / completed); the oldest unpaid bill drives the
ladder, whose notices are recorded one at a time in order (``billing.arrears.ladder``), each
as a ``billing_notices`` record with its text; after the planned-disconnection notice has
been delivered (and, for a mass cut, the posted notice posted) for long enough, the account
becomes ``cut_due`` and the existing disconnect policy takes over: the final notice 30
minutes before, protected windows, approval above the group limit, then the cut-off; restore
once the bills that led to it are paid. Escalation and good-payer flags are kept on the way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import arrears, notices
from billing.arrears import BillDebt, CollectionSettings, Credit, Instalment, Step, Unpaid
from billing.errors import BillingError
from billing.money import from_fen
from billing.notice_texts import render
from billing.policy import Action, CreditSettings, PolicyError, ProtectedWindows
from billing.postpaid import NotPostpaid, load_debts

log = logging.getLogger(__name__)
LADDER_KINDS = [s.value for s in Step]
LATE_GRACE = timedelta(hours=1)
IDLE_WAKE = timedelta(days=7)  # a step recorded later than this goes out now, not back-dated


def postpaid_credit(s: CollectionSettings) -> CreditSettings:
    """The disconnect policy's view of a postpaid account: cut when anything is due for
    cutting (policy balance < 0), restore once nothing is (0 > -0.01); the final notice
    ``final_notice_s`` (30 minutes) before the cut; no low-balance alerts."""
    return CreditSettings(
        alert_thresholds=(),
        cutoff_threshold=Decimal(0),
        emergency_credit=Decimal(0),
        restore_threshold=Decimal("-0.01"),
        warning_to_final_s=0.0,
        final_to_cutoff_s=float(s.final_notice_s),
    )


@dataclass(slots=True)
class CollectionStats:
    accounts: int = 0
    notices: int = 0
    cut_due: int = 0
    plans_missed: int = 0
    plans_completed: int = 0
    settlements_missed: int = 0


def _penalty_rule(customer_class: str, s: CollectionSettings) -> dict[str, str]:
    if customer_class == "residential":
        return {"penalty_rule": f"{s.residential_rate * 1000}‰ of the unpaid amount per day"}
    return {
        "penalty_rule": f"{s.current_year_rate * 1000}‰ per day of this year's arrears, "
        f"{s.earlier_year_rate * 1000}‰ of arrears carried across years"
    }


def _record(
    conn: psycopg.Connection[Any],
    account_id: str,
    kind: str,
    at: datetime,
    params: dict[str, str],
    key: str,
    *,
    required: bool = False,
) -> int:
    params = {"account": account_id, **params}
    return notices.record_notice(
        conn,
        account_id=account_id,
        kind=kind,
        required=required,
        not_before=at,
        params=params,
        texts=render(kind, params),
        dedupe_key=key,
        created_at=at,
    )


def bill_states(
    debts: list[BillDebt], credits: list[Credit], now: datetime
) -> list[tuple[BillDebt, Unpaid]]:
    """Each bill issued by ``now`` with what is still unpaid on it (credits up to ``now``)."""
    live = [b for b in debts if b.issued_at <= now]
    unpaid = arrears.unpaid_by_bill(
        live, arrears.billed_debt(live, credits, now + timedelta(microseconds=1))
    )
    return list(zip(live, unpaid, strict=True))


def run_collection(
    conn: psycopg.Connection[Any],
    now: datetime,
    s: CollectionSettings | None = None,
    limit: int = 500,
) -> CollectionStats:
    """One ladder pass over the postpaid accounts (several billing engines split them)."""
    s = s or CollectionSettings()
    stats = CollectionStats()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT c.*, a.customer_class, a.group_key, a.windows, a.escalated_at,
                      a.escalation_cleared_at, a.good_payer_since
               FROM billing_collection c JOIN billing_accounts a USING (account_id)
               WHERE c.updated_at < %s AND (c.recheck OR c.wake_at IS NULL OR c.wake_at <= %s)
               ORDER BY c.updated_at LIMIT %s FOR UPDATE OF c SKIP LOCKED""",
            (now, now, limit),
        ).fetchall()
        for row in rows:
            stats.accounts += 1
            try:
                with conn.transaction():  # a savepoint: one bad account spoils no other
                    _one(conn, row, now, s, stats)
            except (BillingError, PolicyError) as exc:
                log.warning(
                    "collection of an account failed",
                    extra={"account": row["account_id"], "why": str(exc)},
                )
                conn.execute(
                    """INSERT INTO billing_alerts (account_id, kind, balance_fen, message)
                       SELECT account_id, 'billing_error', balance_fen, %s
                       FROM billing_accounts WHERE account_id = %s""",
                    (f"collection ladder: {exc}", row["account_id"]),
                )
                conn.execute(
                    "UPDATE billing_collection SET updated_at = %s WHERE account_id = %s",
                    (now, row["account_id"]),
                )
    return stats


def _one(
    conn: psycopg.Connection[Any],
    row: dict[str, Any],
    now: datetime,
    s: CollectionSettings,
    stats: CollectionStats,
) -> None:
    account_id = row["account_id"]
    debts, credits = load_debts(conn, account_id, s)
    today = now.astimezone(s.zone).date()
    if _check_plan(conn, account_id, credits, now, today, s, stats) is not None:
        # the plan just ended: its waiver's days differ, load again
        debts, credits = load_debts(conn, account_id, s)
    state = bill_states(debts, credits, now)
    unpaid_total = sum(u.total_fen for _, u in state)
    overdue = sum(u.total_fen for b, u in state if b.due < today)
    _flags(conn, row, debts, credits, now, s)
    upd: dict[str, Any] = {
        "unpaid_fen": unpaid_total,
        "overdue_fen": overdue,
        "updated_at": now,
        "hold": None,
        "cut_at": None,
        "next_step": None,
        "next_at": None,
        "bill_id": None,
        "schedule_id": None,
    }
    missed = _check_settlement(conn, account_id, debts, credits, now, today, s, stats)
    driving = next(((b, u) for b, u in state if u.total_fen > 0), None)
    protected = _plan_live(conn, account_id)
    if (driving is None and missed is None) or protected:
        notices.withdraw(conn, account_id, LADDER_KINDS, at=now)
        upd |= {
            "stage": "protected" if protected and (driving or missed) else "clear",
            "bill_id": driving[0].bill_id if driving else None,
        }
        if protected and (driving or missed):
            upd["hold"] = "instalment plan kept"
        _save(conn, account_id, row, upd, s)
        return
    if driving is not None:  # the oldest unpaid bill drives the ladder
        bill, unpaid = driving
        key, due = str(bill.bill_id), bill.due
        steps = arrears.ladder(bill.due, bill.issued_at, s)
        amounts = (unpaid.total_fen, overdue)
        upd["bill_id"] = bill.bill_id
    else:  # else a missed in-month instalment of a high-voltage account
        assert missed is not None
        key, due = f"s{missed.schedule_id}", missed.due
        steps = arrears.settlement_ladder(missed.due, missed.at, s)
        amounts = (missed.short_fen, missed.short_fen)
        upd["schedule_id"] = missed.schedule_id
        upd["unpaid_fen"] += missed.short_fen
        upd["overdue_fen"] += missed.short_fen
    if _driving_key(row) != key:  # an older debt was paid: its pending steps are moot
        notices.withdraw(conn, account_id, LADDER_KINDS, at=now)
    stage = _climb(
        conn, account_id, row["customer_class"], key, due, steps, amounts, now, s, stats
    )
    upd["stage"] = stage[0]
    upd["next_step"], upd["next_at"] = stage[1], stage[2]
    if stage[0] == "cut_planned":
        cut_at, hold = _plan_cut(conn, row, key, now, s)
        upd["cut_at"], upd["hold"] = cut_at, hold
        if cut_at is not None and cut_at <= now:
            upd["stage"] = "cut_due"
            stats.cut_due += 1
            if row["stage"] != "cut_due":
                conn.execute(
                    "UPDATE billing_accounts SET dirty = true WHERE account_id = %s", (account_id,)
                )
        else:
            upd["next_step"], upd["next_at"] = "cut", cut_at
    _save(conn, account_id, row, upd, s)


def _driving_key(row: dict[str, Any]) -> str | None:
    """The ladder key of what drove the account's ladder at the last pass."""
    if row["bill_id"] is not None:
        return str(row["bill_id"])
    return f"s{row['schedule_id']}" if row["schedule_id"] is not None else None


def _save(
    conn: psycopg.Connection[Any],
    account_id: str,
    row: dict[str, Any],
    upd: dict[str, Any],
    s: CollectionSettings,
) -> None:
    if row["stage"] == "cut_due" and upd["stage"] != "cut_due":
        # nothing due for cutting any more: let the policy restore (or clear) at once
        conn.execute(
            "UPDATE billing_accounts SET dirty = true WHERE account_id = %s", (account_id,)
        )
    # when to look again without news (money, evidence and bills set recheck): the next
    # step, the cut, the next instalment's day, or a week on (flags)
    now = upd["updated_at"]
    wake = [
        now + IDLE_WAKE,
        upd["next_at"],
        upd["cut_at"] if upd["cut_at"] and (upd["cut_at"] > now) else None,
        _next_instalment_check(conn, account_id, now, s),
    ]
    upd |= {"recheck": False, "wake_at": min(w for w in wake if w is not None)}
    sets = ", ".join(f"{k} = %({k})s" for k in upd)
    conn.execute(
        f"UPDATE billing_collection SET {sets} WHERE account_id = %(id)s", {**upd, "id": account_id}
    )


def _climb(
    conn: psycopg.Connection[Any],
    account_id: str,
    customer_class: str,
    key: str,
    due: date,
    steps: list[arrears.LadderStep],
    amounts: tuple[int, int],
    now: datetime,
    s: CollectionSettings,
    stats: CollectionStats,
) -> tuple[str, str | None, datetime | None]:
    """Record every ladder step of the debt ``key`` (a bill id, or ``s<schedule id>``)
    whose time has come, in order; ``amounts``: (unpaid on it, overdue on the account).
    Returns (stage, next step, its time)."""
    prefix = f"ladder:{key}:"
    done = {
        k.removeprefix(prefix): at
        for k, at in conn.execute(
            "SELECT dedupe_key, not_before FROM billing_notices WHERE dedupe_key LIKE %s",
            (prefix + "%",),
        )
    }
    first_overdue = due + timedelta(days=1)
    deadline = due + timedelta(days=s.stop_after_days)
    while (nxt := arrears.next_step(steps, done)) is not None:
        step, at = nxt
        if at > now:
            return _stage(done), step.step.value, at
        when = at if now - at <= LATE_GRACE else now
        amount = amounts[0] if step.step in (Step.REMINDER, Step.DUE_TODAY) else amounts[1]
        params = {
            "amount": str(from_fen(amount)),
            "due_date": due.isoformat(),
            "deadline": deadline.isoformat(),
            "first_overdue": first_overdue.isoformat(),
            "stop_after_days": str(s.stop_after_days),
            "cut_notice_days": str(s.cut_notice_days),
            "earliest_cut": (when + timedelta(days=s.cut_notice_days))
            .astimezone(s.zone)
            .strftime("%Y-%m-%d %H:%M"),
            "bill_id": key,
            **_penalty_rule(customer_class, s),
        }
        _record(
            conn,
            account_id,
            step.step.value,
            when,
            params,
            prefix + step.key,
            required=step.step
            in (Step.COLLECTION, Step.PLANNED_DISCONNECTION, Step.SETTLEMENT_MISSED),
        )
        stats.notices += 1
        done[step.key] = when
    return _stage(done), None, None


def _stage(done: dict[str, datetime]) -> str:
    if "planned_disconnection" in done:
        return "cut_planned"
    if "collection" in done or "settlement_missed" in done:
        return "collecting"
    return "reminding" if done else "billed"


def _notice_times(conn: psycopg.Connection[Any], key: str) -> tuple[datetime, datetime | None]:
    row = conn.execute(
        "SELECT not_before, closed_at FROM billing_notices WHERE dedupe_key = %s", (key,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _plan_cut(
    conn: psycopg.Connection[Any],
    row: dict[str, Any],
    key: str,
    now: datetime,
    s: CollectionSettings,
) -> tuple[datetime | None, str | None]:
    """When the cut may come: after delivery evidence of the planned-disconnection notice,
    and for a mass cut (more than ``mass_households`` of one compound) after a posted notice
    at least ``posted_notice_days`` old. Returns (cut time, why not yet)."""
    account_id = row["account_id"]
    notice_at, delivered = _notice_times(conn, f"ladder:{key}:planned_disconnection")
    mass = False
    posted_at: datetime | None = None
    group = row["group_key"]
    if group:
        r = conn.execute(
            """SELECT count(*) FROM billing_collection c JOIN billing_accounts a
                   USING (account_id)
               WHERE a.group_key = %s AND c.stage IN ('cut_planned', 'cut_due')
                 AND c.account_id <> %s""",
            (group, account_id),
        ).fetchone()
        assert r is not None
        mass = int(r[0]) + 1 > s.mass_households
    if mass:
        posted_key = f"posted:{key}"
        earliest = (now + timedelta(days=s.posted_notice_days)).astimezone(s.zone)
        _record(
            conn,
            account_id,
            "posted_notice",
            now,
            {
                "group": group,
                "earliest_cut": earliest.strftime("%Y-%m-%d %H:%M"),
                "posted_notice_days": str(s.posted_notice_days),
            },
            posted_key,
            required=True,
        )
        _, posted_at = _notice_times(conn, posted_key)
    cut_at = arrears.cut_date(notice_at, delivered, posted_at, mass, s)
    if cut_at is None:
        what = (
            "the planned-disconnection notice's delivery"
            if delivered is None
            else "the posted notice of the compound"
        )
        return None, f"waiting for evidence of {what}"
    windows = ProtectedWindows.from_json(row["windows"])
    return windows.next_open(cut_at), None


# ---------------------------------------------------------------------------- plans


def _next_instalment_check(
    conn: psycopg.Connection[Any], account_id: str, now: datetime, s: CollectionSettings
) -> datetime | None:
    """The start of the day after the next instalment of a kept plan or in-month
    settlement schedule (when a miss shows)."""
    row = conn.execute(
        """SELECT min(d) FROM (
               SELECT i.due_date AS d FROM billing_instalments i
               JOIN billing_instalment_plans p USING (plan_id)
               WHERE p.account_id = %(a)s AND p.state = 'kept'
               UNION ALL
               SELECT i.due_date FROM billing_settlement_instalments i
               JOIN billing_settlement_schedules p USING (schedule_id)
               WHERE p.account_id = %(a)s AND p.state = 'kept') x
           WHERE d >= %(from)s""",
        {"a": account_id, "from": now.astimezone(s.zone).date() - timedelta(days=1)},
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return s.local_at(row[0] + timedelta(days=1), 0)


def _plan_live(conn: psycopg.Connection[Any], account_id: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM billing_instalment_plans WHERE account_id = %s AND state = 'kept'",
            (account_id,),
        ).fetchone()
        is not None
    )


def _check_plan(
    conn: psycopg.Connection[Any],
    account_id: str,
    credits: list[Credit],
    now: datetime,
    today: date,
    s: CollectionSettings,
    stats: CollectionStats,
) -> str | None:
    """Move a kept plan to missed or completed when due; returns the new state if it moved."""
    plan = conn.execute(
        """SELECT plan_id, created_at FROM billing_instalment_plans
           WHERE account_id = %s AND state = 'kept'""",
        (account_id,),
    ).fetchone()
    if plan is None:
        return None
    plan_id, created = plan
    items = [
        Instalment(d, f)
        for d, f in conn.execute(
            "SELECT due_date, amount_fen FROM billing_instalments WHERE plan_id = %s ORDER BY seq",
            (plan_id,),
        )
    ]
    status, missed = arrears.plan_status(items, [c for c in credits if c.at >= created], today, s)
    if status == "kept":
        return None
    conn.execute(
        """UPDATE billing_instalment_plans SET state = %s, ended_at = %s, missed_due = %s
           WHERE plan_id = %s""",
        (status, now, missed, plan_id),
    )
    if status == "missed":
        stats.plans_missed += 1
        _record(
            conn,
            account_id,
            "instalment_missed",
            now,
            {"missed_due": missed.isoformat() if missed else ""},
            f"plan:{plan_id}:missed",
            required=True,
        )
    else:
        stats.plans_completed += 1
    return status


def create_plan(
    conn: psycopg.Connection[Any],
    account_id: str,
    instalments: list[tuple[date, Decimal]],
    *,
    by: str,
    reason: str,
    waive_penalty: bool,
    now: datetime,
    s: CollectionSettings | None = None,
) -> int:
    """Staff agree a hardship plan: amounts and dates; the account is protected from
    disconnection while it is kept. Replaces nothing: one kept plan per account."""
    if not instalments:
        raise BillingError("instalments: a plan needs at least one instalment")
    if not by or not reason:
        raise BillingError("by/reason: a plan records who agreed it and why")
    dates = [d for d, _ in instalments]
    if dates != sorted(dates) or len(set(dates)) != len(dates):
        raise BillingError("instalments: dates must be distinct and in order")
    if dates[0] < now.astimezone((s or CollectionSettings()).zone).date():
        raise BillingError(f"instalments: first date {dates[0]} is in the past")
    fens = []
    for d, amount in instalments:
        if (
            not isinstance(amount, Decimal)
            or amount <= 0
            or amount != amount.quantize(Decimal("0.01"))
        ):
            raise BillingError(
                f"instalments[{d}]: amount {amount!r} must be positive yuan "
                "with at most two decimals"
            )
        fens.append(int(amount * 100))
    with conn.transaction():
        acc = conn.execute(
            "SELECT billing_mode FROM billing_accounts WHERE account_id = %s FOR UPDATE",
            (account_id,),
        ).fetchone()
        if acc is None or acc[0] != "postpaid":
            raise BillingError(f"account {account_id!r}: not a postpaid account")
        if _plan_live(conn, account_id):
            raise BillingError(f"account {account_id!r} already has a kept instalment plan")
        r = conn.execute(
            """INSERT INTO billing_instalment_plans (account_id, created_at, created_by, reason,
                   waive_penalty, covered_fen) VALUES (%s, %s, %s, %s, %s, %s)
               RETURNING plan_id""",
            (account_id, now, by, reason, waive_penalty, sum(fens)),
        ).fetchone()
        assert r is not None
        plan_id = int(r[0])
        conn.cursor().executemany(
            "INSERT INTO billing_instalments (plan_id, seq, due_date, amount_fen) "
            "VALUES (%s, %s, %s, %s)",
            [
                (plan_id, i, d, f)
                for i, ((d, _), f) in enumerate(zip(instalments, fens, strict=True), 1)
            ],
        )
        _record(
            conn,
            account_id,
            "instalment",
            now,
            {
                "count": str(len(fens)),
                "total": str(from_fen(sum(fens))),
                "first_due": dates[0].isoformat(),
                "waiver_zh": "，违约金减免" if waive_penalty else "",
                "waiver_en": "; the penalty is waived" if waive_penalty else "",
            },
            f"plan:{plan_id}",
            required=True,
        )
        conn.execute(
            "UPDATE billing_accounts SET dirty = true WHERE account_id = %s", (account_id,)
        )
        conn.execute(
            "UPDATE billing_collection SET recheck = true WHERE account_id = %s", (account_id,)
        )
    return plan_id


# ---------------------------------------------------------------------------- settlement


class NotHighVoltage(BillingError):
    pass


@dataclass(frozen=True, slots=True)
class MissedSettlement:
    """A missed in-month instalment still short: it drives the account's ladder."""

    schedule_id: int
    due: date
    at: datetime  # when the miss was found
    short_fen: int


def _month_end(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _credits_of(conn: psycopg.Connection[Any], account_id: str) -> list[Credit]:
    """Every credit of an account (its payments; discounts are inside bills)."""
    return [
        Credit(at, int(fen))
        for at, fen in conn.execute(
            """SELECT created_at, amount_fen FROM billing_ledger
               WHERE account_id = %s AND amount_fen > 0 AND kind <> 'discount'
               ORDER BY created_at, entry_id""",
            (account_id,),
        )
    ]


def _settlement_items(conn: psycopg.Connection[Any], schedule_id: int) -> list[Instalment]:
    return [
        Instalment(d, int(f))
        for d, f in conn.execute(
            """SELECT due_date, amount_fen FROM billing_settlement_instalments
               WHERE schedule_id = %s ORDER BY seq""",
            (schedule_id,),
        )
    ]


def _settlement_short(
    conn: psycopg.Connection[Any],
    account_id: str,
    schedule_id: int,
    debts: list[BillDebt],
    credits: list[Credit],
    now: datetime,
    s: CollectionSettings,
) -> int:
    """Fen still short on a schedule's instalments whose day has passed (paid towards the
    month now counted); 0 once the month's bill is issued: the bill settles it."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM billing_bills b WHERE b.account_id = %s
                          AND b.period_end >= (p.month + interval '1 month' - interval '1 day'))
           FROM billing_settlement_schedules p WHERE p.schedule_id = %s""",
        (account_id, schedule_id),
    ).fetchone()
    if row is None or row[0]:
        return 0
    today = now.astimezone(s.zone).date()
    owed = sum(i.fen for i in _settlement_items(conn, schedule_id) if i.due < today)
    paid = arrears.surplus(  # a payment at this very moment counts (as in bill_states)
        debts, credits or _credits_of(conn, account_id), now + timedelta(microseconds=1)
    )
    return max(0, owed - paid)


def _check_settlement(
    conn: psycopg.Connection[Any],
    account_id: str,
    debts: list[BillDebt],
    credits: list[Credit],
    now: datetime,
    today: date,
    s: CollectionSettings,
    stats: CollectionStats,
) -> MissedSettlement | None:
    """Move kept in-month schedules to missed or settled when due; return the oldest missed
    one still short (its ladder runs until it is paid or the month's bill takes over)."""
    rows = conn.execute(
        """SELECT schedule_id, state, ended_at, missed_due FROM billing_settlement_schedules
           WHERE account_id = %s AND state IN ('kept', 'missed') ORDER BY month""",
        (account_id,),
    ).fetchall()
    if not rows:
        return None
    credits = credits or _credits_of(conn, account_id)
    out: MissedSettlement | None = None
    for schedule_id, state, ended_at, missed_due in rows:
        if state == "kept":
            items = _settlement_items(conn, schedule_id)
            paid_by = {
                i.due: arrears.surplus(debts, credits, s.local_at(i.due + timedelta(days=1), 0))
                for i in items
            }
            status, missed_due, short = arrears.settlement_status(items, paid_by, today)
            if status == "kept":
                continue
            ended_at = now
            conn.execute(
                """UPDATE billing_settlement_schedules SET state = %s, ended_at = %s,
                       missed_due = %s, missed_fen = %s WHERE schedule_id = %s""",
                (status, now, missed_due, short or None, schedule_id),
            )
            if status == "settled":
                continue
            stats.settlements_missed += 1
        if out is None:
            short = _settlement_short(conn, account_id, schedule_id, debts, credits, now, s)
            if short > 0:
                out = MissedSettlement(schedule_id, missed_due, ended_at, short)
    return out


def create_settlement_schedule(
    conn: psycopg.Connection[Any],
    account_id: str,
    month: date,
    *,
    by: str,
    reason: str,
    now: datetime,
    expected: Decimal | None = None,
    instalments: list[tuple[int, Decimal]] | None = None,
    s: CollectionSettings | None = None,
) -> int:
    """Agree a high-voltage account's in-month settlement for ``month`` (its first day):
    instalments on days of the month, each a share of the expected monthly amount (staff's,
    or the last bill's energy charges); the month's bill settles the rest. The days default
    to ``CollectionSettings.hv_instalments``; a day past the month's end is its last day."""
    s = s or CollectionSettings()
    if not by or not reason:
        raise BillingError("by/reason: a schedule records who agreed it and why")
    if month.day != 1:
        raise BillingError(f"month: {month} is not the first day of a month")
    items = list(instalments if instalments is not None else s.hv_instalments)
    try:
        arrears.check_instalments(items)
    except BillingError as exc:
        raise BillingError(str(exc).replace("hv_instalments", "instalments")) from None
    end = _month_end(month)
    dates = [min(month.replace(day=1) + timedelta(days=d - 1), end) for d, _ in items]
    if len(set(dates)) != len(dates):
        raise BillingError(f"instalments: two fall on the same day of {month:%Y-%m}")
    today = now.astimezone(s.zone).date()
    if dates[0] < today:
        raise BillingError(f"instalments: {dates[0]} is already past")
    if expected is not None and (
        not isinstance(expected, Decimal)
        or expected <= 0
        or expected != expected.quantize(Decimal("0.01"))
    ):
        raise BillingError(f"expected: {expected!r} must be positive yuan, two decimals at most")
    with conn.transaction():
        acc = conn.execute(
            """SELECT billing_mode, customer_class FROM billing_accounts
               WHERE account_id = %s FOR UPDATE""",
            (account_id,),
        ).fetchone()
        if acc is None or acc[0] != "postpaid":
            raise NotPostpaid(f"account {account_id!r}: not a postpaid account")
        if acc[1] != "high_voltage":
            raise NotHighVoltage(
                f"account {account_id!r} is {acc[1]}: only high-voltage accounts settle "
                "in instalments within the month"
            )
        if expected is None:
            last = conn.execute(
                """SELECT charges_fen + corrections_fen FROM billing_bills WHERE account_id = %s
                   ORDER BY bill_id DESC LIMIT 1""",
                (account_id,),
            ).fetchone()
            if last is None or last[0] <= 0:
                raise BillingError("expected: no bill to take the monthly amount from; give it")
            expected_fen = int(last[0])
        else:
            expected_fen = int(expected * 100)
        if conn.execute(
            """SELECT 1 FROM billing_settlement_schedules WHERE account_id = %s AND month = %s""",
            (account_id, month),
        ).fetchone():
            raise BillingError(f"account {account_id!r} already has a schedule for {month:%Y-%m}")
        r = conn.execute(
            """INSERT INTO billing_settlement_schedules (account_id, month, expected_fen,
                   created_at, created_by, reason) VALUES (%s, %s, %s, %s, %s, %s)
               RETURNING schedule_id""",
            (account_id, month, expected_fen, now, by, reason),
        ).fetchone()
        assert r is not None
        schedule_id = int(r[0])
        fens = arrears.settlement_amounts(expected_fen, [sh for _, sh in items])
        conn.cursor().executemany(
            """INSERT INTO billing_settlement_instalments (schedule_id, seq, due_date, share,
                   amount_fen) VALUES (%s, %s, %s, %s, %s)""",
            [
                (schedule_id, n, d, sh, f)
                for n, (d, (_, sh), f) in enumerate(zip(dates, items, fens, strict=True), 1)
            ],
        )
        _record(
            conn,
            account_id,
            "settlement_schedule",
            now,
            {
                "month": f"{month:%Y-%m}",
                "expected": str(from_fen(expected_fen)),
                "schedule": ", ".join(
                    f"{d.isoformat()} {from_fen(f)}" for d, f in zip(dates, fens, strict=True)
                ),
            },
            f"settlement:{schedule_id}",
        )
        conn.execute(
            "UPDATE billing_collection SET recheck = true WHERE account_id = %s", (account_id,)
        )
    return schedule_id


# ---------------------------------------------------------------------------- flags


def _in_arrears(
    debts: list[BillDebt], credits: list[Credit], b: BillDebt, s: CollectionSettings
) -> bool:
    """Was this bill still unpaid at the start of its first overdue day (in arrears)?"""
    at = s.local_at(b.due + timedelta(days=1), 0)
    live = [d for d in debts if d.issued_at < at]
    unpaid = arrears.unpaid_by_bill(live, arrears.billed_debt(live, credits, at))
    return any(u.bill_id == b.bill_id and u.debits_fen > 0 for u in unpaid)


def _flags(
    conn: psycopg.Connection[Any],
    row: dict[str, Any],
    debts: list[BillDebt],
    credits: list[Credit],
    now: datetime,
    s: CollectionSettings,
) -> None:
    today = now.astimezone(s.zone).date()
    year_ago = now - timedelta(days=365)
    judged = [b for b in debts if b.due < today]
    late = [b for b in judged if b.issued_at >= year_ago and _in_arrears(debts, credits, b, s)]
    cleared = row["escalation_cleared_at"]
    # after staff cleared the flag only a bill falling into arrears after it sets it again
    fresh = [
        b for b in late if cleared is None or s.local_at(b.due + timedelta(days=1), 0) > cleared
    ]
    if len(late) >= s.escalate_periods and fresh and row["escalated_at"] is None:
        why = f"{len(late)} bills in arrears within a year: formal demand letter"
        conn.execute(
            """UPDATE billing_accounts SET escalated_at = %s, escalation_reason = %s
               WHERE account_id = %s""",
            (now, why, row["account_id"]),
        )
        _escalation_audit(conn, row["account_id"], now, "set", "billing", why)
    window = now - timedelta(days=30 * s.good_payer_months)
    recent = [b for b in judged if b.issued_at >= window]
    clean = (
        bool(debts)
        and debts[0].issued_at <= window + timedelta(days=31)
        and not any(_in_arrears(debts, credits, b, s) for b in recent)
    )
    if clean != (row["good_payer_since"] is not None):
        conn.execute(
            "UPDATE billing_accounts SET good_payer_since = %s WHERE account_id = %s",
            (now if clean else None, row["account_id"]),
        )


class NotEscalated(BillingError):
    pass


def _escalation_audit(
    conn: psycopg.Connection[Any], account_id: str, at: datetime, action: str, by: str, why: str
) -> None:
    conn.execute(
        """INSERT INTO billing_escalation_audit (account_id, at, action, by_whom, reason)
           VALUES (%s, %s, %s, %s, %s)""",
        (account_id, at, action, by, why),
    )


def clear_escalation(
    conn: psycopg.Connection[Any], account_id: str, *, by: str, reason: str, now: datetime
) -> None:
    """Staff clear the escalation flag (the demand letter is settled otherwise), with the
    reason and who, audited; the ladder sets it again only for a bill that falls into
    arrears after now."""
    if not by or not reason or not reason.strip():
        raise BillingError("by/reason: clearing the escalation records who and why")
    with conn.transaction():
        row = conn.execute(
            """SELECT billing_mode, escalated_at FROM billing_accounts WHERE account_id = %s
               FOR UPDATE""",
            (account_id,),
        ).fetchone()
        if row is None or row[0] != "postpaid":
            raise NotPostpaid(f"account {account_id!r}: not a postpaid account")
        if row[1] is None:
            raise NotEscalated(f"account {account_id!r} is not escalated: nothing to clear")
        conn.execute(
            """UPDATE billing_accounts SET escalated_at = NULL, escalation_reason = NULL,
                   escalation_cleared_at = %s, escalation_cleared_by = %s,
                   escalation_cleared_reason = %s WHERE account_id = %s""",
            (now, by, reason, account_id),
        )
        _escalation_audit(conn, account_id, now, "cleared", by, reason)
        conn.execute(
            "UPDATE billing_collection SET recheck = true WHERE account_id = %s", (account_id,)
        )


# ---------------------------------------------------------------------------- the policy


def policy_balance(
    conn: psycopg.Connection[Any],
    account_id: str,
    now: datetime,
    s: CollectionSettings | None = None,
) -> Decimal:
    """What the disconnect policy sees for a postpaid account: minus what is due for
    cutting (unpaid on bills up to the one whose cut date passed), else zero. Computed live,
    so a payment restores at the next evaluation, before the next ladder pass."""
    s = s or CollectionSettings()
    row = conn.execute(
        "SELECT stage, bill_id, schedule_id FROM billing_collection WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    if row is None or row[0] != "cut_due" or _plan_live(conn, account_id):
        return Decimal(0)
    debts, credits = load_debts(conn, account_id, s)
    if row[2] is not None:  # cut for a missed in-month instalment: until it is paid
        return -from_fen(_settlement_short(conn, account_id, row[2], debts, credits, now, s))
    due = sum(u.total_fen for b, u in bill_states(debts, credits, now) if b.bill_id <= row[1])
    return -from_fen(due)


def on_policy_action(
    conn: psycopg.Connection[Any], account_id: str, action: Action, balance: Decimal, now: datetime
) -> None:
    """The notices of the policy's steps on a postpaid account: the renewed notice before
    the cut, the cut-off, the restore (all legally required: quiet hours do not apply)."""
    kinds = {
        Action.FINAL_WARNING: "final_notice",
        Action.CUTOFF: "cutoff",
        Action.RESTORE: "restore",
    }
    kind = kinds.get(action)
    if kind is None:
        return
    _record(
        conn,
        account_id,
        kind,
        now,
        {"amount": str(-balance) if balance < 0 else "0.00"},
        f"{kind}:{account_id}:{now.isoformat()}",
        required=True,
    )
