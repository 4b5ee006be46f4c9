"""``meterhub billing payments ...``: the providers' endpoint, direct-debit files, the cash
desk, and the daily reconciliation of a provider's statement."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from billing.ledger import CHANNELS
from billing.money import DEFAULT_MAX_TOPUP, parse_yuan
from billing.payment_channels import cash_notice, debit_notices
from billing.payment_http import PaymentsConfig, serve
from billing.payment_reconcile import open_differences, reconcile_statement, resolve_difference
from billing.payments import PaymentRules, apply_payment
from meterhub import settings
from meterhub.supervise import run_until_signalled


def register(sub: Any) -> None:
    p = sub.add_parser("payments", help="payment providers, debit files, cash desk, reconciliation")
    ps = p.add_subparsers(dest="payments_command", required=True, metavar="ACTION")
    s = ps.add_parser("serve", help="accept signed payment notifications over HTTP")
    s.add_argument("--config", type=Path, required=True, help="payments.toml")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8470)
    s.set_defaults(handler=_serve)
    d = ps.add_parser("import-debits", help="a bank's direct-debit result file (CSV)")
    d.add_argument("file", type=Path)
    d.add_argument("--provider", required=True, help="the bank's provider name")
    d.add_argument("--channel", choices=CHANNELS, default="bank")
    d.set_defaults(handler=_debits)
    c = ps.add_parser("cash", help="money taken at the cash desk")
    c.add_argument("--account", required=True)
    c.add_argument("--amount", required=True, help="yuan, e.g. 50.00")
    c.add_argument("--receipt", required=True, help="the numbered receipt")
    c.set_defaults(handler=_cash)
    r = ps.add_parser("reconcile", help="compare a provider's statement of a day with the ledger")
    r.add_argument("file", type=Path)
    r.add_argument("--provider", required=True)
    r.add_argument("--date", required=True, type=date.fromisoformat, help="YYYY-MM-DD")
    r.add_argument("--by", required=True, help="who runs it")
    r.set_defaults(handler=_reconcile)
    o = ps.add_parser("differences", help="unresolved reconciliation differences")
    o.set_defaults(handler=_differences)
    x = ps.add_parser("resolve", help="close a difference with a note")
    x.add_argument("--id", type=int, required=True)
    x.add_argument("--by", required=True)
    x.add_argument("--note", required=True)
    x.set_defaults(handler=_resolve)


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.require_database_url(args.database_url), autocommit=True)


def _serve(args: argparse.Namespace) -> int:
    config = PaymentsConfig.load(args.config)
    url = settings.require_database_url(args.database_url)

    run_until_signalled(lambda stop: serve(url, config, args.host, args.port, stop))
    return 0


def _debits(args: argparse.Namespace) -> int:
    notices = debit_notices(args.file.read_text("utf-8"), args.provider)
    counts: dict[str, int] = {}
    with _connect(args) as conn:
        for n in notices:
            out = apply_payment(conn, n, channel=args.channel)
            counts[out.status] = counts.get(out.status, 0) + 1
            if out.status == "refused":
                print(f"{n.txn_id}: refused: {out.reason}")
    print(
        f"{args.file}: {len(notices)} collections; "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return 0


def _cash(args: argparse.Namespace) -> int:
    amount = parse_yuan(args.amount, max_yuan=DEFAULT_MAX_TOPUP, field="--amount")
    with _connect(args) as conn:
        out = apply_payment(
            conn,
            cash_notice(args.account, amount, args.receipt, at=datetime.now(UTC)),
            channel="counter",
            rules=PaymentRules(),
        )
    print(
        f"{args.account}: {amount} cash, receipt {args.receipt}: {out.status}"
        + (f" ({out.reason})" if out.reason else "")
        + (f"; balance now {out.balance}" if out.balance is not None else "")
    )
    return 0 if out.status in ("applied", "duplicate") else 1


def _reconcile(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        run = reconcile_statement(
            conn, args.provider, args.date, args.file.read_text("utf-8"), by=args.by
        )
    print(
        f"{args.provider} {args.date}: run {run.run_id}"
        + (" (this file was reconciled before)" if run.repeated else "")
        + f"; {run.statement_rows} statement rows, {run.matched} matched, "
        f"{len(run.differences)} differences"
    )
    for d in run.differences:
        print(f"  {d.txn_id}: {d.kind}: {d.detail}")
    return 0 if not run.differences else 2


def _differences(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        for row in open_differences(conn):
            did, provider, day, txn, kind, _, _, detail = row
            print(f"{did}: {provider} {day} {txn}: {kind}: {detail}")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        resolve_difference(conn, args.id, by=args.by, resolution=args.note)
    print(f"difference {args.id} resolved by {args.by}")
    return 0
