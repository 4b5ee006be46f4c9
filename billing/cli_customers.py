"""``meterhub billing customers ...``: register customers, link accounts, verify contacts,
and the list of undeliverable contacts staff work through."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from billing import customers
from billing.customers import CONTACT_CHANNELS, LANGUAGES
from meterhub import settings


def register(sub: Any) -> None:
    p = sub.add_parser("customers", help="customers, contacts and undeliverable contacts")
    cs = p.add_subparsers(dest="customers_command", required=True, metavar="ACTION")
    for name, helptext in (
        ("add", "register a customer"),
        ("update", "change a customer's fields (contacts: unverified)"),
    ):
        c = cs.add_parser(name, help=helptext)
        c.add_argument("--customer", required=True)
        c.add_argument("--name", required=name == "add")
        c.add_argument("--phone", action="append", help="E.164, repeat for more")
        c.add_argument("--email")
        c.add_argument("--wechat-openid")
        c.add_argument("--preferred-channel", choices=CONTACT_CHANNELS)
        c.add_argument("--language", choices=LANGUAGES)
        c.add_argument("--address")
        c.add_argument("--compound", help="residential community")
        c.set_defaults(handler=_add if name == "add" else _update)
    link = cs.add_parser("link", help="the account belongs to the customer")
    link.add_argument("--customer", required=True)
    link.add_argument("--account", required=True)
    link.set_defaults(handler=_link)
    ver = cs.add_parser("verify", help="staff confirmed the customer's contacts")
    ver.add_argument("--customer", required=True)
    ver.add_argument("--by", required=True)
    ver.set_defaults(handler=_verify)
    show = cs.add_parser("show", help="a customer and their accounts")
    show.add_argument("--customer", required=True)
    show.set_defaults(handler=_show)
    und = cs.add_parser("undeliverable", help="contacts deliveries found dead: re-verify them")
    und.add_argument("--json", action="store_true")
    und.set_defaults(handler=_undeliverable)


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(settings.require_database_url(args.database_url), autocommit=True)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "name": args.name,
        "phones": args.phone,
        "email": args.email,
        "wechat_openid": args.wechat_openid,
        "preferred_channel": args.preferred_channel,
        "language": args.language,
        "address": args.address,
        "compound": args.compound,
    }
    return {k: v for k, v in given.items() if v is not None}


def _print(c: customers.Customer, accounts: list[str] | None = None) -> None:
    verified = (
        f"verified {c.contact_verified_at.isoformat()}"
        if c.contact_verified_at
        else "contacts not verified"
    )
    print(
        f"{c.customer_id}: {c.name} ({c.language}); prefers {c.preferred_channel}; "
        f"phones {', '.join(c.phones) or '-'}; email {c.email or '-'}; "
        f"wechat {c.wechat_openid or '-'}; {c.address or '-'}"
        f"{f' [{c.compound}]' if c.compound else ''}; {verified}"
        + (f"; accounts {', '.join(accounts) or '-'}" if accounts is not None else "")
    )


def _add(args: argparse.Namespace) -> int:
    fields = _fields(args)
    with _connect(args) as conn:
        _print(customers.create_customer(conn, args.customer, name=fields.pop("name"), **fields))
    return 0


def _update(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        _print(customers.update_customer(conn, args.customer, **_fields(args)))
    return 0


def _link(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        customers.link_account(conn, args.account, args.customer)
    print(f"{args.account} belongs to {args.customer}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        resolved = customers.verify_contacts(conn, args.customer, by=args.by, at=datetime.now(UTC))
    print(
        f"{args.customer}: contacts verified by {args.by}; {resolved} undeliverable "
        "entries resolved"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        _print(
            customers.get_customer(conn, args.customer), customers.accounts_of(conn, args.customer)
        )
    return 0


def _undeliverable(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = customers.undeliverable_contacts(conn)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "customer": u.customer_id,
                        "name": u.name,
                        "channel": u.channel,
                        "contact": u.contact,
                        "reason": u.reason,
                        "failures": u.failures,
                        "last_failed_at": u.last_failed_at.isoformat(),
                    }
                    for u in rows
                ],
                ensure_ascii=False,
            )
        )
        return 0
    for u in rows:
        print(
            f"{u.customer_id} ({u.name}): {u.channel} {u.contact}: {u.reason} "
            f"({u.failures}x, last {u.last_failed_at.isoformat()})"
        )
    return 0
