"""``meterhub billing ...``: run the engine, top up, look at balances, accounts, commands.

Every subcommand reads the database from ``--database-url`` or ``METERHUB_DATABASE_URL``;
``--json`` prints machine-readable output for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from billing import alerts as alerts_mod
from billing import (
    cli_customers,
    cli_payments,
    collection_cli,
    ledger,
    lifecycle,
    manual,
    read_model,
    reports,
)
from billing.engine import SIGNING_KEY_ENV, BillingConfig, BillingEngine
from billing.errors import BillingError
from billing.metrics import BillingMetrics
from billing.money import DEFAULT_MAX_TOPUP, parse_yuan
from billing.policy import CreditSettings, ProtectedWindows
from billing.tariffs import load_tariffs
from meterhub import db, settings
from meterhub.i18n import _, yuan
from meterhub.metrics import add_metrics_option, metrics_endpoint


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "billing", help="billing: prepaid balances and cut-offs; postpaid bills and collection")
    parser.add_argument("--database-url", default=None,
                        help=f"PostgreSQL conninfo (default ${settings.DATABASE_URL_ENV})")
    parser.add_argument("--tariffs", type=Path, default=None,
                        help="folder of tariff TOML files (default configs/tariffs)")
    sub = parser.add_subparsers(dest="billing_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="charge intervals and drive cut-offs until interrupted")
    run.add_argument("--mqtt-url", default=None, help=f"broker (default ${settings.MQTT_URL_ENV})")
    run.add_argument("--poll", type=float, default=5.0,
                     help="fallback seconds between passes (notifications wake them at once)")
    run.add_argument("--max-group-cutoffs", type=int, default=50,
                     help="more cut-offs at once in one building/transformer need approval")
    run.add_argument("--charge-connections", type=int, default=2,
                     help="database connections charging at once (threads: one prices while "
                          "the other waits for the database; bench/RESULTS.md: 53,000 "
                          "intervals/s with 2 against 44,000 with 1 on two cores)")
    run.add_argument("--signing-key", type=Path, default=None,
                     help="Ed25519 private key (PEM, mode 0600) that signs every relay "
                          f"command (default ${SIGNING_KEY_ENV}; required)")
    run.add_argument("--migrate", action="store_true", help="apply migrations first")
    add_metrics_option(run)
    run.set_defaults(handler=_run)

    top = sub.add_parser("topup", help="credit a payment (idempotent by channel + reference)")
    top.add_argument("--account", required=True)
    top.add_argument("--amount", required=True, help="yuan, e.g. 50.00")
    top.add_argument("--channel", required=True, choices=ledger.CHANNELS)
    top.add_argument("--reference", required=True, help="the payment's reference")
    top.add_argument("--json", action="store_true")
    top.set_defaults(handler=_topup)

    bal = sub.add_parser("balance", help="an account's balance and recent ledger entries")
    bal.add_argument("--account", required=True)
    bal.add_argument("--entries", type=int, default=10)
    bal.add_argument("--json", action="store_true")
    bal.set_defaults(handler=_balance)

    acc = sub.add_parser("accounts", help="accounts with phase, risk grade and days left")
    acc.add_argument("--risk", default=None, help="only these grades, e.g. CD")
    acc.add_argument("--json", action="store_true")
    acc.set_defaults(handler=_accounts)

    new = sub.add_parser("create-account", help="open a prepaid account")
    new.add_argument("--account", required=True)
    new.add_argument("--meter", action="append", required=True, help="repeat for more meters")
    new.add_argument("--tariff", required=True)
    new.add_argument("--name", default="")
    new.add_argument("--group", default=None, help="building or transformer")
    new.add_argument("--restore-mode", choices=("close", "close_permitted"), default="close")
    new.add_argument("--opening-balance", default="0")
    new.add_argument("--credit", default=None,
                     help='credit settings as JSON, e.g. {"alert_thresholds": ["50", "20", '
                          '"0"], "emergency_credit": "10", "final_to_cutoff_s": 1800}')
    new.add_argument("--windows", default=None,
                     help='protected windows as JSON, e.g. {"nightly": ["18:00", "08:00"], '
                          '"weekends": true, "holidays": ["2026-10-01"]}')
    new.add_argument("--relayless", choices=("refuse", "flag"), default="refuse",
                     help="a meter without a relay: refuse the account (default), or open it "
                          "flagged as needing a site visit to disconnect")
    new.set_defaults(handler=_create)

    cmds = sub.add_parser("commands", help="relay commands and their audit trail")
    cmds.add_argument("--account", default=None)
    cmds.add_argument("--audit", action="store_true", help="print every transition")
    cmds.add_argument("--limit", type=int, default=50)
    cmds.add_argument("--json", action="store_true")
    cmds.set_defaults(handler=_commands)

    al = sub.add_parser("alerts", help="recent alerts")
    al.add_argument("--account", default=None)
    al.add_argument("--limit", type=int, default=50)
    al.add_argument("--json", action="store_true")
    al.set_defaults(handler=_alerts)

    ap = sub.add_parser("approve", help="approve a waiting mass cut-off of one group")
    ap.add_argument("--group", required=True)
    ap.add_argument("--by", required=True, help="who approves (kept in the record)")
    ap.set_defaults(handler=_approve)

    rl = sub.add_parser("relay", help="an operator cuts a meter off or restores it by hand "
                                      "(held against the policy until released)")
    rl.add_argument("--meter", required=True)
    rl.add_argument("--want", required=True, choices=("open", "closed"),
                    help="open: cut off; closed: restore")
    rl.add_argument("--by", required=True, help="the operator (kept in the audit)")
    rl.add_argument("--reason", default="")
    rl.add_argument("--until", default=None, type=datetime.fromisoformat,
                    help="ISO time with zone when the hold ends (default: until released)")
    rl.set_defaults(handler=_relay)

    rel = sub.add_parser("release", help="end an operator's manual hold of a meter")
    rel.add_argument("--meter", required=True)
    rel.add_argument("--by", required=True)
    rel.add_argument("--reason", default="")
    rel.set_defaults(handler=_release)

    holds = sub.add_parser("holds", help="manual holds in force")
    holds.add_argument("--account", default=None)
    holds.add_argument("--json", action="store_true")
    holds.set_defaults(handler=_holds)

    cli_customers.register(sub)
    cli_payments.register(sub)

    tf = sub.add_parser("tariffs", help="check and list the tariff files")
    tf.set_defaults(handler=_tariffs)
    collection_cli.register(sub)  # postpaid: bills, arrears, ladder, plans, reports


def _url(args: argparse.Namespace) -> str:
    return settings.require_database_url(args.database_url)


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(_url(args), autocommit=True)


def _dump(obj: Any) -> str:
    def default(v: Any) -> Any:
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, datetime):
            return v.isoformat()
        raise TypeError(type(v).__name__)

    return json.dumps(obj, default=default, ensure_ascii=False)


def _run(args: argparse.Namespace) -> int:
    mqtt = settings.require_mqtt(args.mqtt_url)
    url = _url(args)
    if args.migrate:
        db.migrate(url)
    key = args.signing_key or (Path(os.environ[SIGNING_KEY_ENV])
                               if os.environ.get(SIGNING_KEY_ENV) else None)
    engine = BillingEngine(BillingConfig(
        database_url=url, mqtt=mqtt, signing_key_path=key, poll_interval_s=args.poll,
        tariffs_dir=args.tariffs,
        max_group_cutoffs=args.max_group_cutoffs,
        charge_connections=max(1, args.charge_connections),
    ))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with metrics_endpoint(args.metrics, lambda: BillingMetrics(engine)):
            await engine.run(stop)

    asyncio.run(main())
    s = engine.stats
    print(_dump({"intervals_charged": s.intervals_charged, "adjustments": s.adjustments,
                 "commands_sent": s.commands_sent, "cutoffs_acked": s.cutoffs_acked,
                 "restores_acked": s.restores_acked, "alerts": s.alerts_published,
                 "acks_refused": dict(s.acks_refused), "task_restarts": dict(s.task_restarts)}))
    return 0


def _topup(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        e = ledger.topup(conn, args.account,
                         parse_yuan(args.amount, max_yuan=DEFAULT_MAX_TOPUP, field='--amount'),
                         args.channel,
                         args.reference, actor="cli")
        bal = ledger.balance(conn, args.account)
    if args.json:
        print(_dump({"entry_id": e.entry_id, "account": e.account_id, "amount": e.amount,
                     "channel": e.channel, "reference": e.reference, "balance": bal}))
    else:
        print(_("{account}: +{amount} via {channel} ({reference}), entry {entry}; balance now "
                "{balance}", account=e.account_id, amount=yuan(e.amount), channel=e.channel,
                reference=e.reference, entry=e.entry_id, balance=yuan(bal)))
    return 0


def _balance(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        tariffs = load_tariffs(args.tariffs)
        summary = reports.list_accounts(conn, tariffs, account_id=args.account)
        if not summary:
            raise ledger.UnknownAccount(_("account {account!r} does not exist",
                                          account=args.account))
        s = summary[0]
        recent = ledger.entries(conn, args.account, args.entries)
    if args.json:
        print(_dump({**s.to_json(), "entries": [
            {"entry_id": e.entry_id, "kind": e.kind, "amount": e.amount,
             "balance_after": e.balance_after, "at": e.created_at, "key": e.idempotency_key}
            for e in recent]}))
        return 0
    print(_("{account} {name!r}: balance {balance} ({phase}), risk {risk}, days left {days}",
            account=s.account_id, name=s.name, balance=yuan(s.balance), phase=s.phase,
            risk=s.risk_grade, days=s.days_left if s.days_left is not None else "-"))
    if s.customer_action_needed:
        print(_("  supply restored on the meter: the customer must press the meter's button"))
    for e in recent:
        print(f"  {e.created_at:%Y-%m-%d %H:%M:%S} {e.kind:17} {e.amount:>10} "
              f"-> {e.balance_after:>10}  {e.idempotency_key}")
    return 0


def _accounts(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = reports.list_accounts(conn, load_tariffs(args.tariffs))
    if args.risk:
        rows = [r for r in rows if r.risk_grade in args.risk.upper()]
    if args.json:
        print(_dump([r.to_json() for r in rows]))
        return 0
    print(_("{account:14} {balance:>10} {phase:7} {risk:4} {days:>6} {relay:14} {rest}",
            account=_("account"), balance=_("balance"), phase=_("phase"), risk=_("risk"),
            days=_("days"), relay=_("relay"), rest=_("tariff / group / note")))
    for r in rows:
        relay = ",".join(f"{w[0]}/{p[0]}" for w, p in zip(r.relay_wanted, r.relay_reported,
                                                          strict=True))
        note = r.hold_reason or (_("awaiting approval") if r.awaiting_approval else "")
        if r.customer_action_needed:
            note = _("customer must press the button")
        days = "-" if r.days_left is None else str(r.days_left)
        print(f"{r.account_id:14} {r.balance:>10} {r.phase:7} {r.risk_grade:4} {days:>6} "
              f"{relay:14} {r.tariff} / {r.group or '-'} {note}")
    return 0


def _create(args: argparse.Namespace) -> int:
    try:
        credit = CreditSettings.from_json(json.loads(args.credit)) if args.credit else None
        windows = ProtectedWindows.from_json(json.loads(args.windows)) if args.windows else None
    except json.JSONDecodeError as exc:
        raise BillingError(_("--credit/--windows: not valid JSON ({error})", error=exc)) from None
    with _connect(args) as conn:
        ledger.create_account(
            conn, args.account, meters=args.meter, tariff=args.tariff, name=args.name,
            credit=credit, windows=windows, group=args.group, restore_mode=args.restore_mode,
            opening_balance=args.opening_balance, tariffs=load_tariffs(args.tariffs),
            relayless=args.relayless,
        )
    print(_("account {account} opened for {meters} on {tariff}", account=args.account,
            meters=", ".join(args.meter), tariff=args.tariff))
    return 0


def _commands(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = lifecycle.command_history(conn, args.account, args.limit)
        trails = {r["command_id"]: lifecycle.audit_trail(conn, r["command_id"])
                  for r in rows} if (args.audit or args.json) else {}
    if args.json:
        print(_dump([{**r, "audit": [
            {"at": a, "from": f, "to": t, "actor": who, "detail": d}
            for a, f, t, who, d in trails[r["command_id"]]]} for r in rows]))
        return 0
    for r in rows:
        print(f"{r['created_at']:%Y-%m-%d %H:%M:%S} {r['command_id'][:12]} {r['account_id']:12} "
              f"{r['meter_id']:14} {r['action']:22} {r['purpose']:9} {r['state']:10} "
              f"try {r['attempt']} {r['reason'] or ''}")
        for a, f, t, who, d in trails.get(r["command_id"], []):
            print(f"    {a:%H:%M:%S.%f} {f or '-':>9} -> {t:10} by {who}: {d}")
    return 0


def _alerts(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = alerts_mod.recent(conn, args.account, args.limit)
    if args.json:
        print(_dump([{"alert_id": a, "account": acc, "kind": k, "message": m,
                      "balance_fen": b, "at": at, "published_at": p}
                     for a, acc, k, m, b, at, p in rows]))
        return 0
    for _a, acc, k, m, _b, at, _p in rows:
        print(f"{at:%Y-%m-%d %H:%M:%S} {acc:12} {k:16} {m}")
    return 0


def _approve(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        ok = ledger.approve_cutoffs(conn, args.group, by=args.by)
    if not ok:
        print(_("no cut-off is waiting for approval in group {group!r}", group=args.group),
              file=sys.stderr)
        return 1
    print(_("cut-offs of group {group} approved by {by}", group=args.group, by=args.by))
    return 0


def _relay(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        cid = manual.manual_relay(conn, args.meter, args.want, by=args.by, reason=args.reason,
                                  hold_until=args.until)
    held = (_("held until {until}", until=args.until.isoformat()) if args.until
            else _("held until released"))
    print(_("command {id} queued: relay of {meter} wanted {want}, {held}", id=cid,
            meter=args.meter, want=args.want, held=held))
    return 0


def _release(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        ok = manual.release_manual_hold(conn, args.meter, by=args.by, reason=args.reason)
    if not ok:
        print(_("meter {meter!r} has no manual hold", meter=args.meter), file=sys.stderr)
        return 1
    print(_("manual hold of {meter} released by {by}; the policy applies again",
            meter=args.meter, by=args.by))
    return 0


def _holds(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = read_model.manual_holds(conn, [args.account] if args.account else None)
    if args.json:
        print(_dump(rows))
        return 0
    for r in rows:
        until = r["until"].isoformat() if r["until"] else _("released by hand")
        print(_("{meter:16} {account:12} {wanted:6} by {by} until {until}  {reason}",
                meter=r["meter_id"], account=r["account_id"], wanted=r["wanted"], by=r["by"],
                until=until, reason=r["reason"]))
    return 0


def _tariffs(args: argparse.Namespace) -> int:
    for t in load_tariffs(args.tariffs).values():
        versions = ", ".join(str(v.effective) for v in t.versions)
        print(_("{tariff:26} {zone:16} versions from {versions}  ({source})",
                tariff=t.tariff_id, zone=t.zone.key, versions=versions, source=t.source))
    return 0
