"""Read-only views of postpaid collection for people (CLI, web): the arrears and ageing
report, each account's ladder state with its next step, penalty lines, instalment plans and
the collection rate per month and per compound. Money is returned as decimal strings."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import arrears
from billing.arrears import BUCKETS, CollectionSettings
from billing.collection import bill_states
from billing.money import from_fen
from billing.postpaid import load_debts


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def arrears_report(
    conn: psycopg.Connection[Any], now: datetime, s: CollectionSettings | None = None
) -> dict[str, Any]:
    """Every postpaid account with money owed on its bills: unpaid, overdue by ageing
    bucket, ladder stage and next step, flags; totals per bucket; very large arrears."""
    s = s or CollectionSettings()
    today = now.astimezone(s.zone).date()
    with conn.cursor(row_factory=dict_row) as cur:
        accounts = cur.execute(
            """SELECT a.account_id, a.name, a.group_key, a.customer_class, a.phase,
                      a.escalated_at, a.escalation_reason, a.good_payer_since,
                      a.escalation_cleared_at, a.escalation_cleared_by,
                      a.escalation_cleared_reason,
                      c.stage, c.next_step, c.next_at, c.cut_at, c.hold
               FROM billing_accounts a LEFT JOIN billing_collection c USING (account_id)
               WHERE a.billing_mode = 'postpaid' ORDER BY a.account_id"""
        ).fetchall()
    rows = []
    totals: dict[str, int] = dict.fromkeys(BUCKETS, 0)
    for a in accounts:
        debts, credits = load_debts(conn, a["account_id"], s)
        buckets: dict[str, int] = dict.fromkeys(BUCKETS, 0)
        unpaid = 0
        for bill, u in bill_states(debts, credits, now):
            unpaid += u.total_fen
            bucket = arrears.ageing_bucket(bill.due, today)
            if bucket and u.total_fen:
                buckets[bucket] += u.total_fen
                totals[bucket] += u.total_fen
        rows.append(
            {
                "account_id": a["account_id"],
                "name": a["name"],
                "group": a["group_key"],
                "customer_class": a["customer_class"],
                "phase": a["phase"],
                "unpaid": str(from_fen(unpaid)),
                "overdue": str(from_fen(sum(buckets.values()))),
                "ageing": {k: str(from_fen(v)) for k, v in buckets.items()},
                "stage": a["stage"],
                "next_step": a["next_step"],
                "next_at": _iso(a["next_at"]),
                "cut_at": _iso(a["cut_at"]),
                "hold": a["hold"],
                "escalated": a["escalated_at"] is not None,
                "escalation_reason": a["escalation_reason"],
                "escalation_cleared": (
                    {
                        "at": _iso(a["escalation_cleared_at"]),
                        "by": a["escalation_cleared_by"],
                        "reason": a["escalation_cleared_reason"],
                    }
                    if a["escalation_cleared_at"]
                    else None
                ),
                "good_payer": a["good_payer_since"] is not None,
                "large": sum(buckets.values()) >= s.large_arrears_fen,
            }
        )
    return {
        "accounts": rows,
        "ageing_totals": {k: str(from_fen(v)) for k, v in totals.items()},
        "large": [r["account_id"] for r in rows if r["large"]],
        "escalated": [r["account_id"] for r in rows if r["escalated"]],
    }


def penalty_lines(conn: psycopg.Connection[Any], account_id: str) -> list[dict[str, str]]:
    """Every penalty posting of an account: which bill, through which day, exact accrual."""
    return [
        {
            "bill_id": str(b),
            "through": t.isoformat(),
            "exact": str(e),
            "total": str(from_fen(tf)),
            "posted": str(from_fen(p)),
        }
        for b, t, e, tf, p in conn.execute(
            """SELECT p.bill_id, p.through, p.exact, p.total_fen, p.posted_fen
               FROM billing_penalties p JOIN billing_bills b USING (bill_id)
               WHERE b.account_id = %s ORDER BY p.bill_id, p.through""",
            (account_id,),
        )
    ]


def plans(conn: psycopg.Connection[Any], account_id: str | None = None) -> list[dict[str, Any]]:
    """Instalment plans with their schedule, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT p.*, coalesce(json_agg(json_build_object('seq', i.seq, 'due',
                          i.due_date, 'amount_fen', i.amount_fen) ORDER BY i.seq), '[]')
                          AS items
               FROM billing_instalment_plans p
               LEFT JOIN billing_instalments i USING (plan_id)
               WHERE %(a)s::text IS NULL OR p.account_id = %(a)s
               GROUP BY p.plan_id ORDER BY p.plan_id DESC""",
            {"a": account_id},
        ).fetchall()
    return [
        {
            "plan_id": r["plan_id"],
            "account_id": r["account_id"],
            "state": r["state"],
            "created_at": _iso(r["created_at"]),
            "created_by": r["created_by"],
            "reason": r["reason"],
            "waive_penalty": r["waive_penalty"],
            "covered": str(from_fen(r["covered_fen"])),
            "ended_at": _iso(r["ended_at"]),
            "missed_due": r["missed_due"].isoformat() if r["missed_due"] else None,
            "instalments": [
                {"seq": i["seq"], "due": i["due"], "amount": str(from_fen(i["amount_fen"]))}
                for i in r["items"]
            ],
        }
        for r in rows
    ]


def settlement_schedules(
    conn: psycopg.Connection[Any], account_id: str | None = None
) -> list[dict[str, Any]]:
    """High-voltage in-month settlement schedules, newest month first: each instalment's
    day, share and amount, and the part the month's bill settles."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT p.*, coalesce(json_agg(json_build_object('seq', i.seq, 'due',
                          i.due_date, 'share', i.share::text, 'amount_fen', i.amount_fen)
                          ORDER BY i.seq), '[]') AS items
               FROM billing_settlement_schedules p
               LEFT JOIN billing_settlement_instalments i USING (schedule_id)
               WHERE %(a)s::text IS NULL OR p.account_id = %(a)s
               GROUP BY p.schedule_id ORDER BY p.month DESC, p.schedule_id DESC""",
            {"a": account_id},
        ).fetchall()
    out = []
    for r in rows:
        in_month = sum(i["amount_fen"] for i in r["items"])
        shares = sum((Decimal(i["share"]) for i in r["items"]), Decimal(0))
        out.append(
            {
                "schedule_id": r["schedule_id"],
                "account_id": r["account_id"],
                "month": f"{r['month']:%Y-%m}",
                "expected": str(from_fen(r["expected_fen"])),
                "state": r["state"],
                "created_at": _iso(r["created_at"]),
                "created_by": r["created_by"],
                "reason": r["reason"],
                "ended_at": _iso(r["ended_at"]),
                "missed_due": r["missed_due"].isoformat() if r["missed_due"] else None,
                "missed": str(from_fen(r["missed_fen"])) if r["missed_fen"] else None,
                "instalments": [
                    {
                        "seq": i["seq"],
                        "due": i["due"],
                        "share": str(Decimal(i["share"]).normalize()),
                        "amount": str(from_fen(i["amount_fen"])),
                    }
                    for i in r["items"]
                ],
                "bill_share": str((1 - shares).normalize()),
                "bill_amount": str(from_fen(max(0, r["expected_fen"] - in_month))),
            }
        )
    return out


def collection_rates(
    conn: psycopg.Connection[Any], now: datetime, s: CollectionSettings | None = None
) -> dict[str, list[dict[str, str]]]:
    """Billed and collected per bill month and per compound (group): collected is what was
    billed less what is still unpaid on those bills now."""
    s = s or CollectionSettings()
    billed: dict[tuple[str, str], int] = defaultdict(int)
    unpaid: dict[tuple[str, str], int] = defaultdict(int)
    for account_id, group in conn.execute(
        "SELECT account_id, coalesce(group_key, '') FROM billing_accounts "
        "WHERE billing_mode = 'postpaid' ORDER BY account_id"
    ).fetchall():
        debts, credits = load_debts(conn, account_id, s)
        months = dict(
            conn.execute(
                "SELECT bill_id, to_char(period_start, 'YYYY-MM') FROM billing_bills "
                "WHERE account_id = %s",
                (account_id,),
            ).fetchall()
        )
        for bill, u in bill_states(debts, credits, now):
            new = bill.debits_fen + bill.penalties_fen + bill.opening_debt_fen
            for cell in (("month", str(months[bill.bill_id])), ("group", str(group))):
                billed[cell] += new
                unpaid[cell] += u.total_fen
    out: dict[str, list[dict[str, str]]] = {"month": [], "group": []}
    for (dim, name), fen in sorted(billed.items()):
        collected = fen - unpaid[(dim, name)]
        rate = Decimal(collected) / fen if fen else Decimal(1)
        out[dim].append(
            {
                dim: name,
                "billed": str(from_fen(fen)),
                "collected": str(from_fen(collected)),
                "arrears": str(from_fen(unpaid[(dim, name)])),
                "rate": str(rate.quantize(Decimal("0.0001"))),
            }
        )
    return out
