"""``meterhub collector review`` and ``work-orders``: the review queue from a terminal.

The same decisions as the web page (collector/vee/review.py, collector/vee/decisions.py):
confirm or dismiss; reject, estimate or correct with the new value's quality and method;
assign, comment, history, several items at once; site-visit work orders printed as CSV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from collector.vee import decisions, review
from collector.vee.review import ReviewError

DECISIONS = ("confirm", "dismiss", "reject", "estimate")


def register(sub: Any, database_url: Callable[[argparse.Namespace], str],
             db_help: str) -> None:
    p = sub.add_parser("review", help="the review queue: list, decide, assign, comment",
                       description="Without ITEM: the open queue. With ITEM(s): a decision "
                       "(--confirm, --dismiss, --reject, --estimate, --correct), --assign, "
                       "--note or --history.")
    p.add_argument("--database-url", help=db_help)
    p.add_argument("items", nargs="*", type=int, metavar="ITEM", help="review item id(s)")
    what = p.add_mutually_exclusive_group()
    for name in DECISIONS:
        what.add_argument(f"--{name}", action="store_const", const=name, dest="decision")
    what.add_argument("--correct", action="append", metavar="START=KWH", default=None,
                      help="the interval starting at START (ISO, with zone) is KWH "
                      "(repeatable); needs --reason")
    what.add_argument("--assign", metavar="PERSON", help="give the item(s) to a person")
    what.add_argument("--note", metavar="TEXT", help="add a comment to the item's history")
    what.add_argument("--history", action="store_true", help="everything done to the item")
    p.add_argument("--method", choices=decisions.METHODS, default="like_day",
                   help="estimate method for --reject / --estimate (default like_day)")
    p.add_argument("--reason", default="", help="why (required with --correct)")
    p.add_argument("--team", help="with --assign: the team")
    p.add_argument("--due", type=_when, help="with --assign: due date (ISO, with zone)")
    p.add_argument("--by", default="", help="who decides (kept in the history)")
    p.add_argument("--comment", default="", help="the decision's comment")
    p.set_defaults(handler=lambda args: _review(args, database_url(args)))

    w = sub.add_parser("work-orders", help="site visits: list, open, close, export CSV")
    w.add_argument("action", choices=("list", "open", "close", "export"))
    w.add_argument("--database-url", help=db_help)
    w.add_argument("--item", type=int, help="open: the review item the visit answers")
    w.add_argument("--id", type=int, dest="order_id", help="close: the work order")
    w.add_argument("--instructions", default="", help="open: what to check on site")
    w.add_argument("--findings", default="", help="close: what was found")
    w.add_argument("--cancel", action="store_true", help="close: cancelled, not done")
    w.add_argument("--assign", help="open: who goes")
    w.add_argument("--due", type=_when, help="open: by when (ISO, with zone)")
    w.add_argument("--status", choices=("open", "done", "cancelled", "all"), default="open")
    w.add_argument("--by", default="", help="who (kept in the history)")
    w.set_defaults(handler=lambda args: _work_orders(args, database_url(args)))


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date/time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. {text}+08:00")
    return value.astimezone(UTC)


def _corrections(pairs: list[str]) -> dict[datetime, Any]:
    out = {}
    for pair in pairs:
        start, sep, kwh = pair.rpartition("=")
        if not sep:
            raise ReviewError(f"--correct {pair!r}: expected START=KWH")
        try:
            when = _when(start)
        except argparse.ArgumentTypeError as exc:
            raise ReviewError(f"--correct: {exc}") from None
        out[when] = decisions.parse_kwh(kwh, f"--correct {start}")
    return out


def _review(args: argparse.Namespace, url: str) -> int:
    if not args.items:
        for item in review.open_items(url):
            print(f"#{item['id']} {item['meter_id']} {item['rule']} "
                  f"{item['period_start']}..{item['period_end']}: {item['reason']}")
        return 0
    with psycopg.connect(url, autocommit=True) as conn:
        if args.history:
            for item_id in args.items:
                for step in decisions.history(conn, item_id):
                    print(f"#{item_id} {step['at']:%Y-%m-%d %H:%M} {step['by']}: "
                          f"{step['action']} {step['detail']} {step['comment']}".rstrip())
            return 0
        if args.note is not None:
            for item_id in args.items:
                decisions.comment(conn, item_id, args.by, args.note)
            print(f"comment added to {len(args.items)} item(s)")
            return 0
        if args.assign is not None:
            n = decisions.assign(conn, args.items, args.by, to=args.assign, team=args.team,
                                 due_at=args.due)
            print(f"{n} item(s) assigned to {args.assign}")
            return 0
        if args.correct is not None:
            if len(args.items) != 1:
                raise ReviewError("--correct applies to one item")
            out = decisions.correct(conn, args.items[0], args.by, args.reason,
                                    _corrections(args.correct))
            _say(out)
            return 0
        if args.decision is None:
            raise ReviewError("say what to do: --confirm, --dismiss, --reject, --estimate, "
                              "--correct, --assign, --note or --history")
        status = {"confirm": "confirmed", "dismiss": "dismissed", "reject": "rejected",
                  "estimate": "estimated"}[args.decision]
        for out in decisions.bulk_decide(conn, args.items, status, args.by, args.comment,
                                         method=args.method):
            _say(out)
    return 0


def _say(out: decisions.Outcome) -> None:
    changes = ", ".join(f"{c.interval_start:%Y-%m-%d %H:%M} {c.previous_kwh} -> {c.kwh} kWh"
                        for c in out.changed)
    print(f"review item {out.item_id} {out.status}; {out.released} interval(s) released"
          + (f"; {changes}" if changes else ""))


def _work_orders(args: argparse.Namespace, url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        if args.action == "open":
            if args.item is None:
                raise ReviewError("work-orders open needs --item")
            order = decisions.open_work_order(conn, args.item, args.by, args.instructions,
                                              assigned_to=args.assign, due_at=args.due)
            print(f"work order {order.id} for review item {order.item_id} ({order.meter_id})")
            return 0
        if args.action == "close":
            if args.order_id is None:
                raise ReviewError("work-orders close needs --id")
            order = decisions.close_work_order(conn, args.order_id, args.by, args.findings,
                                               cancelled=args.cancel)
            print(f"work order {order.id} {order.status}")
            return 0
        orders = decisions.work_orders(conn, None if args.status == "all" else args.status)
    if args.action == "export":
        sys.stdout.write(decisions.work_orders_csv(orders))
        return 0
    for o in orders:
        due = f" due {o.due_at:%Y-%m-%d %H:%M}" if o.due_at else ""
        print(f"#{o.id} item {o.item_id} {o.meter_id} {o.status}{due}"
              f" {o.assigned_to or '-'}: {o.instructions}")
    return 0
