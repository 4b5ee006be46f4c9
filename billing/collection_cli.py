"""``meterhub billing`` subcommands of postpaid accounts: open one, bills and e-bills, the
arrears/ageing report, the ladder state, penalty lines, instalment plans, clearing the
escalation flag, high-voltage in-month settlement schedules, collection rates.
Registered by ``billing.cli``; same ``--database-url`` and ``--json`` conventions."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from billing import collection, collection_reports, ebill, notices, postpaid
from billing.arrears import CLASSES, CollectionSettings
from billing.errors import BillingError
from billing.money import DEFAULT_MAX_TOPUP, parse_yuan
from billing.tariffs import load_tariffs
from meterhub import settings

T = TypeVar("T")


def register(sub: Any) -> None:
    """Add the postpaid subcommands to ``meterhub billing``."""
    new = sub.add_parser("create-postpaid", help="open a postpaid account of a customer class")
    new.add_argument("--account", required=True)
    new.add_argument("--meter", action="append", required=True, help="repeat for more meters")
    new.add_argument("--class", dest="customer_class", required=True, choices=CLASSES)
    new.add_argument("--tariff", default=None, help="default: the class's tariff")
    new.add_argument("--name", default="")
    new.add_argument("--group", default=None, help="compound / building (mass cut-off rules)")
    new.set_defaults(handler=_create)

    bills = sub.add_parser("bills", help="an account's bills, newest first")
    bills.add_argument("--account", required=True)
    bills.add_argument("--json", action="store_true")
    bills.set_defaults(handler=_bills)

    one = sub.add_parser("bill", help="one bill with its lines; write its e-bill")
    one.add_argument("--id", type=int, required=True)
    one.add_argument("--html", type=Path, default=None, help="write the HTML e-bill here")
    one.add_argument("--pdf", type=Path, default=None, help="write the PDF e-bill here")
    one.add_argument("--json", action="store_true")
    one.set_defaults(handler=_bill)

    issue = sub.add_parser(
        "issue-bills",
        help="issue last month's bills that are missing (the engine does this on its own)",
    )
    issue.add_argument(
        "--at",
        type=datetime.fromisoformat,
        default=None,
        help="as if now were this ISO time (with offset)",
    )
    issue.set_defaults(handler=_issue)

    ar = sub.add_parser("arrears", help="arrears and ageing report, ladder state, flags")
    ar.add_argument("--json", action="store_true")
    ar.set_defaults(handler=_arrears)

    lad = sub.add_parser(
        "ladder",
        help="an account's collection ladder: state, next step, notices with delivery evidence",
    )
    lad.add_argument("--account", required=True)
    lad.add_argument("--json", action="store_true")
    lad.set_defaults(handler=_ladder)

    pen = sub.add_parser("penalties", help="an account's late-payment penalty lines")
    pen.add_argument("--account", required=True)
    pen.add_argument("--json", action="store_true")
    pen.set_defaults(handler=_penalties)

    pc = sub.add_parser("plan-create", help="agree a hardship instalment plan")
    pc.add_argument("--account", required=True)
    pc.add_argument(
        "--instalment",
        action="append",
        required=True,
        metavar="DATE:AMOUNT",
        help="e.g. 2026-05-01:150.00; repeat in date order",
    )
    pc.add_argument("--by", required=True, help="the staff member agreeing it")
    pc.add_argument("--reason", required=True)
    pc.add_argument("--waive-penalty", action="store_true")
    pc.set_defaults(handler=_plan_create)

    pl = sub.add_parser("plans", help="instalment plans and their state")
    pl.add_argument("--account", default=None)
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(handler=_plans)

    esc = sub.add_parser(
        "escalation-clear",
        help="clear an account's escalation flag (audited); only new arrears set it again",
    )
    esc.add_argument("--account", required=True)
    esc.add_argument("--by", required=True, help="the staff member clearing it")
    esc.add_argument("--reason", required=True)
    esc.set_defaults(handler=_escalation_clear)

    sc = sub.add_parser(
        "settlement-create",
        help="agree a high-voltage account's in-month settlement schedule for a month",
    )
    sc.add_argument("--account", required=True)
    sc.add_argument("--month", required=True, metavar="YYYY-MM")
    sc.add_argument(
        "--expected", default=None, help="expected monthly amount in yuan (default: last bill)"
    )
    sc.add_argument(
        "--instalment",
        action="append",
        default=None,
        metavar="DAY:SHARE",
        help="e.g. 10:0.3; repeat in day order (default: the configured hv_instalments); "
        "the month's bill settles what the shares leave",
    )
    sc.add_argument("--by", required=True, help="the staff member agreeing it")
    sc.add_argument("--reason", required=True)
    sc.set_defaults(handler=_settlement_create)

    sl = sub.add_parser("settlements", help="in-month settlement schedules and their state")
    sl.add_argument("--account", default=None)
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(handler=_settlements)

    rep = sub.add_parser(
        "collection-report", help="billed, collected, arrears and rate per month and per compound"
    )
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(handler=_report)


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.require_database_url(args.database_url), autocommit=True)


def _print(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str))


def _listing(args: argparse.Namespace, fetch: Callable[[psycopg.Connection[Any]], T],
             lines: Callable[[T], Iterable[str]],
             as_json: Callable[[T], Any] = lambda data: data) -> int:
    """Read, then print: one JSON document with --json, else lines for a person."""
    with _connect(args) as conn:
        data = fetch(conn)
    if args.json:
        _print(as_json(data))
    else:
        for line in lines(data):
            print(line)
    return 0


def _create(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        postpaid.open_postpaid(
            conn,
            args.account,
            meters=args.meter,
            customer_class=args.customer_class,
            tariff=args.tariff,
            name=args.name,
            group=args.group,
            tariffs=load_tariffs(args.tariffs),
        )
    print(
        f"postpaid account {args.account} ({args.customer_class}) opened for "
        f"{', '.join(args.meter)}"
    )
    return 0


def _bills(args: argparse.Namespace) -> int:
    def lines(rows: list[postpaid.Bill]) -> Iterator[str]:
        yield (f"{'bill':>6} {'period':23} {'issued':10} {'due':10} {'kWh':>10} {'charges':>10} "
               f"{'penalty':>8} {'paid':>10} {'due now':>10}")
        for b in rows:
            yield (f"{b.bill_id:>6} {b.period_start}..{b.period_end} {b.issued_at:%Y-%m-%d} "
                   f"{b.due_date} {b.kwh:>10} {b.charges + b.corrections:>10} {b.penalties:>8} "
                   f"{b.payments:>10} {b.amount_due:>10}")

    return _listing(args, lambda conn: postpaid.bills_of(conn, args.account), lines,
                    lambda rows: [asdict(b) for b in rows])


def _bill(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        bill, lines = postpaid.get_bill(conn, args.id)
        row = conn.execute(
            "SELECT name FROM billing_accounts WHERE account_id = %s", (bill.account_id,)
        ).fetchone()
    name = row[0] if row else ""
    if args.html:
        args.html.write_text(ebill.render_html(bill, lines, name), "utf-8")
    if args.pdf:
        args.pdf.write_bytes(ebill.render_pdf(bill, lines, name))
    if args.json:
        _print(
            {
                "bill": asdict(bill),
                "lines": [
                    {
                        "no": ln.line_no,
                        "kind": ln.kind,
                        "description": ln.description,
                        "amount": ln.amount,
                    }
                    for ln in lines
                ],
            }
        )
        return 0
    print(
        f"bill {bill.bill_id} of {bill.account_id}, {bill.period_start}..{bill.period_end}, "
        f"due {bill.due_date}: {bill.amount_due} yuan"
    )
    for ln in lines:
        print(f"  {ln.line_no:>3} {ln.kind:11} {ln.amount:>12}  {ln.description}")
    for path in (args.html, args.pdf):
        if path:
            print(f"written {path}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    now = args.at or datetime.now(UTC)
    if now.tzinfo is None:
        raise BillingError("--at: give the time with its offset, e.g. 2026-04-01T10:00+08:00")
    with _connect(args) as conn:
        issued = postpaid.issue_due_bills(conn, now)
    for b in issued:
        print(
            f"bill {b.bill_id}: {b.account_id} {b.period_start}..{b.period_end} "
            f"due {b.due_date}: {b.amount_due} yuan"
        )
    print(f"{len(issued)} bills issued")
    return 0


def _arrears(args: argparse.Namespace) -> int:
    def lines(rep: dict[str, Any]) -> Iterator[str]:
        yield (f"{'account':14} {'unpaid':>10} {'0-30':>9} {'31-60':>9} {'61-90':>9} "
               f"{'>90':>9} {'stage':12} next step")
        for r in rep["accounts"]:
            a = r["ageing"]
            flags = " ".join(f for f, on in (("ESCALATED", r["escalated"]), ("LARGE", r["large"]),
                                             ("good-payer", r["good_payer"])) if on)
            nxt = f"{r['next_step'] or '-'} {r['next_at'] or ''}".strip()
            yield (f"{r['account_id']:14} {r['unpaid']:>10} {a['0-30']:>9} {a['31-60']:>9} "
                   f"{a['61-90']:>9} {a['>90']:>9} {r['stage'] or '-':12} {nxt} "
                   f"{r['hold'] or ''} {flags}")
        t = rep["ageing_totals"]
        yield (f"{'total':14} {'':>10} {t['0-30']:>9} {t['31-60']:>9} {t['61-90']:>9} "
               f"{t['>90']:>9}")

    return _listing(args, lambda conn: collection_reports.arrears_report(conn, datetime.now(UTC)),
                    lines)


def _ladder(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rep = collection_reports.arrears_report(conn, datetime.now(UTC))
        mine = [r for r in rep["accounts"] if r["account_id"] == args.account]
        if not mine:
            raise BillingError(f"account {args.account!r} is not a postpaid account")
        sent = notices.notices_of(conn, args.account)
    out = {
        **mine[0],
        "notices": [
            {
                "notice_id": n.notice_id,
                "kind": n.kind,
                "not_before": n.not_before.isoformat(),
                "required": n.required,
                "last_outcome": n.last_outcome,
                "attempts": n.attempts,
                "subject": n.texts["zh-CN"]["subject"],
            }
            for n in sent
        ],
    }
    if args.json:
        _print(out)
        return 0
    print(
        f"{args.account}: stage {out['stage']}, unpaid {out['unpaid']} "
        f"(overdue {out['overdue']}), next {out['next_step'] or '-'} "
        f"{out['next_at'] or ''} {out['hold'] or ''}"
    )
    for n in out["notices"]:
        print(f"  {n['not_before']} {n['kind']:22} {n['last_outcome'] or 'not delivered yet'}")
    return 0


def _penalties(args: argparse.Namespace) -> int:
    return _listing(args, lambda conn: collection_reports.penalty_lines(conn, args.account),
                    lambda rows: (f"bill {r['bill_id']:>6} through {r['through']}: exact "
                                  f"{r['exact']} -> {r['total']} (posted {r['posted']})"
                                  for r in rows))


def _instalments(raw: list[str]) -> list[tuple[date, Decimal]]:
    out = []
    for item in raw:
        day, _, amount = item.partition(":")
        try:
            out.append(
                (
                    date.fromisoformat(day),
                    parse_yuan(amount, max_yuan=DEFAULT_MAX_TOPUP, field="--instalment"),
                )
            )
        except (ValueError, InvalidOperation):
            raise BillingError(
                f"--instalment: {item!r} is not DATE:AMOUNT like 2026-05-01:150.00"
            ) from None
    return out


def _plan_create(args: argparse.Namespace) -> int:
    items = _instalments(args.instalment)
    with _connect(args) as conn:
        plan_id = collection.create_plan(
            conn,
            args.account,
            items,
            by=args.by,
            reason=args.reason,
            waive_penalty=args.waive_penalty,
            now=datetime.now(UTC),
            s=CollectionSettings(),
        )
    print(f"plan {plan_id} agreed for {args.account}: {len(items)} instalments")
    return 0


def _plans(args: argparse.Namespace) -> int:
    return _listing(args, lambda conn: collection_reports.plans(conn, args.account),
                    lambda rows: (f"plan {p['plan_id']} {p['account_id']} {p['state']:9} "
                                  f"{p['covered']:>10} by {p['created_by']}: "
                                  f"{_schedule(p['instalments'])}" for p in rows))


def _schedule(instalments: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i['due']} {i['amount']}" for i in instalments)


def _escalation_clear(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        collection.clear_escalation(
            conn, args.account, by=args.by, reason=args.reason, now=datetime.now(UTC)
        )
    print(f"escalation of {args.account} cleared by {args.by}: {args.reason}")
    return 0


def _month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise BillingError(f"--month: {text!r} is not YYYY-MM like 2026-05") from None


def _shares(raw: list[str] | None) -> list[tuple[int, Decimal]] | None:
    if raw is None:
        return None
    out = []
    for item in raw:
        day, _, share = item.partition(":")
        try:
            out.append((int(day), Decimal(share)))
        except (ValueError, InvalidOperation):
            raise BillingError(f"--instalment: {item!r} is not DAY:SHARE like 10:0.3") from None
    return out


def _settlement_create(args: argparse.Namespace) -> int:
    month = _month(args.month)
    items = _shares(args.instalment)
    expected = (
        None
        if args.expected is None
        else parse_yuan(args.expected, max_yuan=Decimal(10_000_000), field="--expected")
    )
    with _connect(args) as conn:
        schedule_id = collection.create_settlement_schedule(
            conn,
            args.account,
            month,
            by=args.by,
            reason=args.reason,
            now=datetime.now(UTC),
            expected=expected,
            instalments=items,
        )
        (sched,) = [
            r
            for r in collection_reports.settlement_schedules(conn, args.account)
            if r["schedule_id"] == schedule_id
        ]
    print(
        f"schedule {schedule_id} for {args.account} {sched['month']} "
        f"(expected {sched['expected']}): {_schedule(sched['instalments'])}; "
        f"the bill settles {sched['bill_amount']}"
    )
    return 0


def _settlements(args: argparse.Namespace) -> int:
    def line(r: dict[str, Any]) -> str:
        missed = f" missed {r['missed_due']} short {r['missed']}" if r["missed_due"] else ""
        return (f"schedule {r['schedule_id']} {r['account_id']} {r['month']} {r['state']:8} "
                f"expected {r['expected']}: {_schedule(r['instalments'])}; "
                f"bill {r['bill_amount']}{missed}")

    return _listing(
        args, lambda conn: collection_reports.settlement_schedules(conn, args.account),
        lambda rows: map(line, rows))


def _report(args: argparse.Namespace) -> int:
    def lines(rep: dict[str, Any]) -> Iterator[str]:
        for dim in ("month", "group"):
            yield f"{dim:10} {'billed':>12} {'collected':>12} {'arrears':>12} {'rate':>7}"
            for r in rep[dim]:
                yield (f"{r[dim] or '-':10} {r['billed']:>12} {r['collected']:>12} "
                       f"{r['arrears']:>12} {r['rate']:>7}")

    return _listing(
        args, lambda conn: collection_reports.collection_rates(conn, datetime.now(UTC)), lines)
