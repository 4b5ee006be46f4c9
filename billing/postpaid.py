"""Postpaid accounts and their monthly bills, on the same ledger as prepaid ones.

A bill is cut under the account's row lock: every writer of an account's ledger entries
(charging, top-ups, adjustments) holds that lock, so the entries up to the bill's
``last_entry_id`` are exactly those committed, and the next bill starts after them. An issued
bill never changes (trigger); a charge corrected later is a later ledger entry and so a line
of the next bill. Penalties accrued on earlier bills are posted when a bill is issued and
appear on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import arrears, notices
from billing.arrears import CLASSES, BillDebt, CollectionSettings, Credit
from billing.errors import BillingError
from billing.ledger import _lock_account, _post, create_account
from billing.money import from_fen
from billing.notice_texts import render
from billing.policy import ProtectedWindows
from billing.tariffs import Tariff, TariffError, load_tariffs


class NotPostpaid(BillingError):
    pass


@dataclass(frozen=True, slots=True)
class Bill:
    bill_id: int
    account_id: str
    period_start: date
    period_end: date
    issued_at: datetime
    due_date: date
    customer_class: str
    tariff_id: str
    opening: Decimal
    charges: Decimal
    corrections: Decimal
    adjustments: Decimal
    penalties: Decimal
    payments: Decimal
    closing: Decimal
    amount_due: Decimal
    kwh: Decimal
    breakdown: list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class BillLine:
    line_no: int
    kind: str
    description: str
    amount: Decimal


def _bill(row: Mapping[str, Any]) -> Bill:
    return Bill(
        bill_id=row["bill_id"],
        account_id=row["account_id"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        issued_at=row["issued_at"],
        due_date=row["due_date"],
        customer_class=row["customer_class"],
        tariff_id=row["tariff_id"],
        opening=from_fen(row["opening_fen"]),
        charges=from_fen(row["charges_fen"]),
        corrections=from_fen(row["corrections_fen"]),
        adjustments=from_fen(row["adjustments_fen"]),
        penalties=from_fen(row["penalties_fen"]),
        payments=from_fen(row["payments_fen"]),
        closing=from_fen(row["closing_fen"]),
        amount_due=from_fen(row["amount_due_fen"]),
        kwh=row["kwh"],
        breakdown=list(row["breakdown"]),
    )


def open_postpaid(
    conn: psycopg.Connection[Any],
    account_id: str,
    *,
    meters: Iterable[str],
    customer_class: str,
    tariff: str | None = None,
    name: str = "",
    group: str | None = None,
    windows: ProtectedWindows | None = None,
    charge_from: datetime | None = None,
    settings: CollectionSettings | None = None,
    tariffs: Mapping[str, Tariff] | None = None,
) -> None:
    """Open a postpaid account of a customer class; the class's tariff unless one is given
    (``CollectionSettings.class_tariffs``)."""
    s = settings or CollectionSettings()
    if customer_class not in CLASSES:
        raise BillingError(f"customer_class: {customer_class!r} is not one of {', '.join(CLASSES)}")
    chosen = tariff or s.class_tariffs.get(customer_class)
    if chosen is None:
        raise BillingError(f"tariff: no tariff for class {customer_class!r}; give one")
    with conn.transaction():
        create_account(
            conn,
            account_id,
            meters=meters,
            tariff=chosen,
            name=name,
            group=group,
            windows=windows,
            charge_from=charge_from,
            tariffs=tariffs,
        )
        conn.execute(
            """UPDATE billing_accounts SET billing_mode = 'postpaid', customer_class = %s
               WHERE account_id = %s""",
            (customer_class, account_id),
        )
        conn.execute(
            "INSERT INTO billing_collection (account_id, updated_at) VALUES (%s, 'epoch')",
            (account_id,),
        )


def _locked_postpaid(conn: psycopg.Connection[Any], account_id: str) -> dict[str, Any]:
    acc = _lock_account(conn, account_id)
    if acc["billing_mode"] != "postpaid":
        raise NotPostpaid(f"account {account_id!r} is prepaid: it gets no bills")
    return acc


def last_bill(conn: psycopg.Connection[Any], account_id: str) -> Bill | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_bills WHERE account_id = %s ORDER BY bill_id DESC LIMIT 1",
            (account_id,),
        ).fetchone()
    return _bill(row) if row else None


def bills_of(conn: psycopg.Connection[Any], account_id: str, limit: int = 24) -> list[Bill]:
    """An account's bills, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM billing_bills WHERE account_id = %s ORDER BY bill_id DESC LIMIT %s",
            (account_id, limit),
        ).fetchall()
    return [_bill(r) for r in rows]


def get_bill(conn: psycopg.Connection[Any], bill_id: int) -> tuple[Bill, list[BillLine]]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM billing_bills WHERE bill_id = %s", (bill_id,)).fetchone()
        if row is None:
            raise BillingError(f"bill {bill_id} does not exist")
        lines = cur.execute(
            "SELECT * FROM billing_bill_lines WHERE bill_id = %s ORDER BY line_no", (bill_id,)
        ).fetchall()
    return _bill(row), [
        BillLine(r["line_no"], r["kind"], r["description"], from_fen(r["amount_fen"]))
        for r in lines
    ]


# ---------------------------------------------------------------------------- debts


def load_debts(
    conn: psycopg.Connection[Any], account_id: str, s: CollectionSettings
) -> tuple[list[BillDebt], list[Credit]]:
    """The account's bills as debts (waivers of kept/ended plans applied) and its credits
    since its first bill (what pays them)."""
    rows = conn.execute(
        """SELECT bill_id, issued_at, due_date, charges_fen + corrections_fen
                  + greatest(0, -adjustments_fen), penalties_fen,
                  greatest(0, -opening_fen), closing_fen, last_entry_id, first_entry_id
           FROM billing_bills WHERE account_id = %s ORDER BY bill_id""",
        (account_id,),
    ).fetchall()
    if not rows:
        return [], []
    waivers = conn.execute(
        """SELECT created_at, ended_at FROM billing_instalment_plans
           WHERE account_id = %s AND waive_penalty AND state <> 'cancelled'
           ORDER BY plan_id""",
        (account_id,),
    ).fetchall()
    debts: list[BillDebt] = []
    for i, (bid, issued, due, debits, pens, opening, closing, _last, _first) in enumerate(rows):
        w_from = w_until = None
        for created, ended in waivers:
            if created > issued:  # a plan waives the penalty of the bills issued before it
                w_from = created.astimezone(s.zone).date()
                w_until = ended.astimezone(s.zone).date() if ended else None
        debts.append(
            BillDebt(
                bid,
                issued,
                due,
                int(debits),
                int(pens),
                int(opening) if i == 0 else 0,
                int(closing),
                w_from,
                w_until,
            )
        )
    credits = [
        Credit(at, int(fen))
        for at, fen in conn.execute(
            """SELECT created_at, amount_fen FROM billing_ledger
               WHERE account_id = %s AND amount_fen > 0 AND entry_id > %s
                 AND kind <> 'discount'  -- posted inside a bill, already in its closing
               ORDER BY created_at, entry_id""",
            (account_id, rows[0][8]),
        )
    ]
    return debts, credits


# ---------------------------------------------------------------------------- issuing


def _post_penalties(
    conn: psycopg.Connection[Any],
    acc: dict[str, Any],
    through: date,
    now: datetime,
    s: CollectionSettings,
) -> None:
    """Post what earlier bills' penalties grew to by ``through`` (cumulative exact accrual,
    rounded, 1-yuan minimum; only the increase is posted)."""
    account_id = acc["account_id"]
    debts, credits = load_debts(conn, account_id, s)
    if not debts:
        return
    exact = arrears.penalty_exact(debts, credits, acc["customer_class"], through, s)
    posted = dict(
        conn.execute(
            """SELECT DISTINCT ON (bill_id) bill_id, total_fen FROM billing_penalties
           WHERE bill_id = ANY(%s) ORDER BY bill_id, through DESC""",
            ([d.bill_id for d in debts],),
        ).fetchall()
    )
    for d in debts:
        total = arrears.penalty_due_fen(exact[d.bill_id], s)
        delta = total - posted.get(d.bill_id, 0)
        if delta <= 0:
            continue
        entry = _post(
            conn,
            account_id,
            "penalty",
            -delta,
            f"penalty:{d.bill_id}:{through}",
            actor="billing",
            at=now,
            detail={
                "bill_id": d.bill_id,
                "through": through.isoformat(),
                "exact": str(exact[d.bill_id]),
            },
        )
        conn.execute(
            """INSERT INTO billing_penalties (bill_id, through, exact, total_fen, posted_fen,
                   entry_id) VALUES (%s, %s, %s, %s, %s, %s)""",
            (d.bill_id, through, exact[d.bill_id], total, delta, entry.entry_id),
        )


_LINE_KINDS = {
    "charge": "charge",
    "topup": "payment",
    "refund": "adjustment",
    "penalty": "penalty",
    "arrears_recovery": "adjustment",
    "discount": "discount",
}


def issue_bill(
    conn: psycopg.Connection[Any],
    account_id: str,
    period_start: date,
    period_end: date,
    *,
    now: datetime,
    settings: CollectionSettings | None = None,
) -> Bill:
    """Issue the bill of a period (local dates, inclusive) at ``now``; the same period again
    returns the bill already issued. Records the bill notice."""
    s = settings or CollectionSettings()
    if period_end < period_start:
        raise BillingError(f"period: end {period_end} is before start {period_start}")
    if period_end >= now.astimezone(s.zone).date():
        raise BillingError(f"period: {period_end} has not ended yet")
    with conn.transaction():
        acc = _locked_postpaid(conn, account_id)
        prev = last_bill(conn, account_id)
        if prev is not None:
            if prev.period_start == period_start and prev.period_end == period_end:
                return prev
            if period_start <= prev.period_end:
                raise BillingError(
                    f"period: {period_start} overlaps the bill of "
                    f"{prev.period_start}..{prev.period_end}"
                )
        _post_penalties(conn, acc, period_end, now, s)
        bill = _cut(conn, account_id, prev, period_start, period_end, now, s)
        amount = str(bill.amount_due)
        params = {
            "account": account_id,
            "period": f"{period_start}..{period_end}",
            "amount_due": amount,
            "due_date": bill.due_date.isoformat(),
            "bill_id": str(bill.bill_id),
        }
        notices.record_notice(
            conn,
            account_id=account_id,
            kind="bill",
            required=False,
            not_before=now,
            params=params,
            texts=render("bill", params),
            dedupe_key=f"bill:{bill.bill_id}",
        )
        conn.execute(
            "UPDATE billing_accounts SET dirty = true WHERE account_id = %s", (account_id,)
        )
        conn.execute(
            "UPDATE billing_collection SET recheck = true WHERE account_id = %s", (account_id,)
        )
    return bill


def _cut(
    conn: psycopg.Connection[Any],
    account_id: str,
    prev: Bill | None,
    period_start: date,
    period_end: date,
    now: datetime,
    s: CollectionSettings,
) -> Bill:
    after = opening = 0  # the first bill covers the account's whole ledger so far
    if prev is not None:
        row = conn.execute(
            "SELECT last_entry_id, closing_fen FROM billing_bills WHERE bill_id = %s",
            (prev.bill_id,),
        ).fetchone()
        assert row is not None
        after, opening = int(row[0]), int(row[1])
    period_from = datetime.combine(period_start, datetime.min.time(), s.zone)
    with conn.cursor(row_factory=dict_row) as cur:
        entries = cur.execute(
            """SELECT entry_id, kind, amount_fen, meter_id, interval_start, reference, detail
               FROM billing_ledger WHERE account_id = %s AND entry_id > %s
               ORDER BY entry_id""",
            (account_id, after),
        ).fetchall()
    totals = dict.fromkeys(("charges", "corrections", "adjustments", "penalties", "payments"), 0)
    lines: list[tuple[str, str, int, int | None]] = []
    charge_sum = correction_sum = 0
    for e in entries:
        fen, kind = e["amount_fen"], e["kind"]
        if kind in ("charge", "adjustment") and e["meter_id"] is not None:
            if kind == "charge" and e["interval_start"] >= period_from:
                totals["charges"] -= fen
                charge_sum -= fen
            else:  # a correction of an interval billed before, or charged late
                totals["corrections"] -= fen
                correction_sum -= fen
            continue
        if kind == "topup":
            totals["payments"] += fen
        elif kind == "penalty":
            totals["penalties"] -= fen
        else:
            totals["adjustments"] += fen
        desc = _describe(e)
        lines.append((_LINE_KINDS.get(kind, "adjustment"), desc, fen, e["entry_id"]))
    closing = opening + sum(e["amount_fen"] for e in entries)
    last_entry = entries[-1]["entry_id"] if entries else after
    discount = _good_payer_discount(conn, account_id, charge_sum, period_start, now, s)
    if discount is not None:
        entry_id, fen, desc = discount
        totals["adjustments"] += fen
        closing += fen
        last_entry = entry_id
        lines.append(("discount", desc, fen, entry_id))
    tariff_id = conn.execute(
        "SELECT tariff_id FROM billing_accounts WHERE account_id = %s", (account_id,)
    ).fetchone()
    breakdown, kwh = _breakdown(
        conn, account_id, after, last_entry, load_tariffs().get(tariff_id[0]) if tariff_id else None
    )
    summary = [("charge", f"electricity {period_start}..{period_end}", -charge_sum, None)]
    if correction_sum:
        summary.append(("correction", "corrections of earlier periods", -correction_sum, None))
    acc = conn.execute(
        "SELECT customer_class, tariff_id FROM billing_accounts WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    assert acc is not None
    due = s.due_date(now)
    row = conn.execute(
        """INSERT INTO billing_bills (account_id, period_start, period_end, issued_at, due_date,
               customer_class, tariff_id, first_entry_id, last_entry_id, opening_fen,
               charges_fen, corrections_fen, adjustments_fen, penalties_fen, payments_fen,
               closing_fen, amount_due_fen, kwh, breakdown)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           RETURNING bill_id""",
        (
            account_id,
            period_start,
            period_end,
            now,
            due,
            acc[0],
            acc[1],
            after,
            last_entry,
            opening,
            totals["charges"],
            totals["corrections"],
            totals["adjustments"],
            totals["penalties"],
            totals["payments"],
            closing,
            max(0, -closing),
            kwh,
            json.dumps(breakdown),
        ),
    ).fetchone()
    assert row is not None
    bill_id = int(row[0])
    all_lines = [
        ("opening", "previous balance", opening, None),
        *summary,
        *lines,
        ("closing", "balance after this bill", closing, None),
    ]
    conn.cursor().executemany(
        """INSERT INTO billing_bill_lines (bill_id, line_no, kind, description, amount_fen,
               entry_id) VALUES (%s, %s, %s, %s, %s, %s)""",
        [(bill_id, n, k, d, f, e) for n, (k, d, f, e) in enumerate(all_lines, start=1)],
    )
    bill, _ = get_bill(conn, bill_id)
    return bill


def _good_payer_discount(
    conn: psycopg.Connection[Any],
    account_id: str,
    charges_fen: int,
    period_start: date,
    now: datetime,
    s: CollectionSettings,
) -> tuple[int, int, str] | None:
    """A good payer's discount off this bill's energy charges (``CollectionSettings``
    ``good_payer_discount_rate`` / ``_fen``), posted as a ledger entry of kind ``discount``
    just before the cut; returns (entry id, fen, line text) or None (not a good payer, the
    discount off, or nothing charged)."""
    row = conn.execute(
        "SELECT good_payer_since FROM billing_accounts WHERE account_id = %s", (account_id,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    exact, fen = arrears.good_payer_discount(charges_fen, s)
    if fen <= 0:
        return None
    rate = s.good_payer_discount_rate
    desc = (
        f"good-payer discount {rate * 100:f}% of {from_fen(charges_fen)}"
        + (f" + {from_fen(s.good_payer_discount_fen)}" if s.good_payer_discount_fen else "")
        + f" (exact {exact})"
    )
    entry = _post(
        conn,
        account_id,
        "discount",
        fen,
        f"discount:{account_id}:{period_start}",
        actor="billing",
        at=now,
        detail={"reason": desc, "exact": str(exact), "good_payer_since": row[0].isoformat()},
    )
    return entry.entry_id, fen, desc


def _describe(e: Mapping[str, Any]) -> str:
    kind = e["kind"]
    if kind == "topup":
        return f"payment {e['reference'] or ''}".strip()
    if kind == "penalty":
        d = e["detail"] or {}
        return f"late-payment penalty, bill {d.get('bill_id')} through {d.get('through')}"
    reason = (e["detail"] or {}).get("reason") or (e["detail"] or {}).get("why") or ""
    return f"{kind} {e['reference'] or ''} {reason}".strip()


def _breakdown(
    conn: psycopg.Connection[Any], account_id: str, after: int, last: int, tariff: Tariff | None
) -> tuple[list[dict[str, str]], Decimal]:
    """Per meter the kWh and money of the charges on this bill (the ledger's whole fen, band
    "total"), and per meter, time-of-use band, tier and price the kWh and exact money of the
    intervals first charged on it (re-priced from the tier position before them; shown for
    reading the bill, the ledger's lines are the money)."""
    rows = conn.execute(
        """SELECT l.meter_id, l.kind, l.amount_fen, c.interval_start, c.interval_end, c.kwh
           FROM billing_ledger l
           LEFT JOIN billing_charges c ON c.meter_id = l.meter_id
                AND c.interval_start = l.interval_start
           WHERE l.account_id = %s AND l.entry_id > %s AND l.entry_id <= %s
             AND l.meter_id IS NOT NULL
           ORDER BY c.interval_start, l.entry_id""",
        (account_id, after, last),
    ).fetchall()
    totals: dict[str, list[Any]] = {}
    charged = []
    for meter, kind, fen, start, end, kwh in rows:
        t = totals.setdefault(meter, [Decimal(0), 0])
        t[1] -= fen
        if kind == "charge" and kwh is not None:
            t[0] += kwh
            charged.append((meter, start, end, kwh))
    out = [
        {
            "meter": m,
            "band": "total",
            "tier": "",
            "price": "",
            "kwh": str(k),
            "amount": str(from_fen(f)),
        }
        for m, (k, f) in sorted(totals.items())
    ]
    out += _bands(conn, account_id, charged, tariff)
    return out, sum((k for k, _ in totals.values()), Decimal(0))


def _bands(
    conn: psycopg.Connection[Any],
    account_id: str,
    charged: list[tuple[Any, ...]],
    tariff: Tariff | None,
) -> list[dict[str, str]]:
    if tariff is None or not charged:
        return []
    usage: dict[date, Decimal] = {
        y: Decimal(k)
        for y, k in conn.execute(
            "SELECT tier_year, kwh FROM billing_tier_usage WHERE account_id = %s", (account_id,)
        )
    }
    groups: dict[tuple[str, str, int, Decimal], list[Decimal]] = {}
    try:
        for _, start, _, kwh in charged:  # the tier position before this bill's intervals
            year = tariff.tier_year(tariff.local_date(start))
            usage[year] = usage.get(year, Decimal(0)) - kwh
        for meter, start, end, kwh in charged:
            for piece in tariff.price(start, end, kwh, usage):
                g = groups.setdefault(
                    (meter, piece.band, piece.tier, piece.price), [Decimal(0), Decimal(0)]
                )
                g[0] += piece.kwh
                g[1] += piece.amount
    except TariffError:
        return []  # an interval no version prices: it is on billing_unbilled, not here
    return [
        {
            "meter": m,
            "band": band,
            "tier": str(tier) if tier else "",
            "price": str(price),
            "kwh": str(k),
            "amount": str(a.quantize(Decimal("0.01"))),
        }
        for (m, band, tier, price), (k, a) in sorted(groups.items())
    ]


def month_period(now: datetime, s: CollectionSettings) -> tuple[date, date]:
    """The previous local calendar month of ``now``."""
    first = now.astimezone(s.zone).date().replace(day=1)
    end = first - timedelta(days=1)
    return end.replace(day=1), end


def issue_due_bills(
    conn: psycopg.Connection[Any], now: datetime, s: CollectionSettings | None = None
) -> list[Bill]:
    """Monthly run: every postpaid account supplied before the end of last month and without
    its bill gets one (from the day after its previous bill, or its first day of supply)."""
    s = s or CollectionSettings()
    start, end = month_period(now, s)
    period_to = datetime.combine(end + timedelta(days=1), datetime.min.time(), s.zone)
    rows = conn.execute(
        """SELECT a.account_id, (SELECT max(b.period_end) FROM billing_bills b
                                  WHERE b.account_id = a.account_id),
                  (SELECT min(m.charge_from) FROM billing_meters m
                   WHERE m.account_id = a.account_id)
           FROM billing_accounts a WHERE a.billing_mode = 'postpaid'
           ORDER BY a.account_id"""
    ).fetchall()
    out = []
    for account_id, billed_to, supplied_from in rows:
        if (
            (billed_to is not None and billed_to >= end)
            or supplied_from is None
            or (supplied_from >= period_to)
        ):
            continue
        first = supplied_from.astimezone(s.zone).date()
        period_start = max(first, start) if billed_to is None else billed_to + timedelta(days=1)
        out.append(issue_bill(conn, account_id, period_start, end, now=now, settings=s))
    return out
