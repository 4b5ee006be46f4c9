"""What a customer may see of billing and the collector: their own accounts, daily usage of
their meters, the notices sent to them. Every function takes the customer id the login is
linked to (``web_customer_logins``), never one the client names, so a customer cannot read
another's account by changing a URL."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg

import billing
from billing import read_model as billing_read
from collector import read_model as collector_read
from web import database

SITE_ZONE = ZoneInfo("Asia/Shanghai")  # days of the usage chart, as the customer lives them
ACCOUNT_FIELDS = (
    "account",
    "name",
    "balance",
    "phase",
    "meters",
    "cut_off",
    "customer_action_needed",
    "restore_mode",
)


def customer_of_login(conn: psycopg.Connection[Any], user_id: int) -> str | None:
    row = conn.execute(
        "SELECT customer_id FROM web_customer_logins WHERE user_id = %s", (user_id,)
    ).fetchone()
    return None if row is None else str(row["customer_id"])


def link_login(conn: psycopg.Connection[Any], user_id: int, customer_id: str) -> None:
    with database.tuple_rows(conn):
        billing.get_customer(conn, customer_id)  # UnknownCustomer names it
    conn.execute(
        "INSERT INTO web_customer_logins (user_id, customer_id) VALUES (%s, %s)",
        (user_id, customer_id),
    )


def overview(conn: psycopg.Connection[Any], customer_id: str) -> dict[str, Any]:
    with database.tuple_rows(conn):
        customer = billing.get_customer(conn, customer_id)
        account_ids = billing.accounts_of(conn, customer_id)
    accounts = []
    for account_id in account_ids:
        row = billing_read.account(conn, account_id)
        if row is not None:
            accounts.append({k: row[k] for k in ACCOUNT_FIELDS})  # type: ignore[literal-required]
    return {
        "customer": {
            "id": customer.customer_id,
            "name": customer.name,
            "language": customer.language,
            "preferred_channel": customer.preferred_channel,
            "contact_verified": customer.contact_verified,
        },
        "accounts": accounts,
    }


def usage(
    conn: psycopg.Connection[Any],
    customer_id: str,
    account_id: str | None,
    days: int,
    now: datetime,
) -> dict[str, Any] | None:
    """Daily kWh of one of the customer's accounts (default: their first) over ``days`` local
    days, today included; None when the account is not theirs."""
    with database.tuple_rows(conn):
        mine = billing.accounts_of(conn, customer_id)
    account_id = account_id or (mine[0] if mine else None)
    if account_id not in mine:
        return None
    row = billing_read.account(conn, account_id)
    meters = list(row["meters"]) if row else []
    today = now.astimezone(SITE_ZONE).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), SITE_ZONE)
    end = datetime.combine(today + timedelta(days=1), datetime.min.time(), SITE_ZONE)
    per_day: dict[date, Decimal] = defaultdict(Decimal)
    for meter in meters:
        for iv in collector_read.intervals(conn, meter, start, end, limit=days * 24 * 12):
            if iv["kwh"] is not None:
                per_day[iv["start"].astimezone(SITE_ZONE).date()] += iv["kwh"]
    return {
        "account": account_id,
        "zone": SITE_ZONE.key,
        "days": [
            {
                "date": first + timedelta(days=i),
                "kwh": per_day.get(first + timedelta(days=i), Decimal(0)),
            }
            for i in range(days)
        ],
    }


def notices(conn: psycopg.Connection[Any], customer_id: str, limit: int) -> list[dict[str, Any]]:
    """The notices of the customer's accounts, newest first, in their language."""
    out: list[dict[str, Any]] = []
    with database.tuple_rows(conn):
        language = billing.get_customer(conn, customer_id).language
        for account_id in billing.accounts_of(conn, customer_id):
            for n in billing.notices_of(conn, account_id, limit=limit):
                text = n.texts.get(language) or n.texts["zh-CN"]
                out.append(
                    {
                        "id": n.notice_id,
                        "account": n.account_id,
                        "kind": n.kind,
                        "at": n.not_before,
                        "subject": text["subject"],
                        "body": text["body"],
                        "delivered": n.last_outcome == "delivered" or n.last_outcome == "posted",
                    }
                )
    out.sort(key=lambda r: (r["at"], r["id"]), reverse=True)
    return out[:limit]


def bills(conn: psycopg.Connection[Any], customer_id: str, limit: int) -> list[dict[str, Any]]:
    """The customer's postpaid bills, newest first (prepaid accounts have none)."""
    with database.tuple_rows(conn):
        out = [
            {"bill_id": b.bill_id, "account": b.account_id, "period_start": b.period_start,
             "period_end": b.period_end, "issued_at": b.issued_at, "due_date": b.due_date,
             "kwh": b.kwh, "amount_due": b.amount_due, "penalties": b.penalties}
            for account in billing.accounts_of(conn, customer_id)
            for b in billing.bills_of(conn, account, limit)
        ]
    out.sort(key=lambda r: cast(datetime, r["issued_at"]), reverse=True)
    return [database.jsonable(r) for r in out[:limit]]


def bill_page(conn: psycopg.Connection[Any], customer_id: str, bill_id: int) -> str | None:
    """The e-bill as HTML, only if the bill is one of the customer's accounts'."""
    with database.tuple_rows(conn):
        try:
            bill, lines = billing.get_bill(conn, bill_id)
        except billing.BillingError:
            return None
        if bill.account_id not in billing.accounts_of(conn, customer_id):
            return None  # someone else's bill is "not found", not "forbidden": no probing
    return billing.render_bill_html(bill, lines)
