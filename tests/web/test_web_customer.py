"""The customer's own page: a customer login sees its customer's accounts, usage and
notices, in its language, and nothing of the staff's; staff logins cannot use it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from web_helpers import Fleet, Logins

from billing import create_account, create_customer, link_account, record_notice
from web import auth, users

pytestmark = pytest.mark.integration


def _customer_login(db_url: str, fleet: Fleet) -> dict[str, str]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        create_customer(
            conn, "cust-1", name="Household One", phones=["+8613800138000"], language="en"
        )
        link_account(conn, fleet.account, "cust-1")
        create_account(conn, "other-acct", meters=["other-meter"], tariff="residential-flat")
        for lang_body in ("first", "second"):
            record_notice(
                conn,
                account_id=fleet.account,
                kind="low_balance",
                required=False,
                not_before=datetime.now(UTC),
                params={"balance": "30.00"},
                texts={
                    "zh-CN": {"subject": "余额不足", "body": f"正文 {lang_body}"},
                    "en": {"subject": "Low balance", "body": f"Body {lang_body}"},
                },
                dedupe_key=f"n-{lang_body}",
            )
        record_notice(
            conn,
            account_id="other-acct",
            kind="low_balance",
            required=False,
            not_before=datetime.now(UTC),
            params={},
            texts={
                "zh-CN": {"subject": "别人的", "body": "x"},
                "en": {"subject": "someone else's", "body": "x"},
            },
            dedupe_key="other",
        )
    users.create_user(db_url, "wang", "customer", customer="cust-1")
    with psycopg.connect(db_url) as conn:
        user_id = conn.execute("SELECT id FROM web_users WHERE name = 'wang'").fetchone()[0]
        token = auth.create_token(conn, user_id, "test")[1]
    return {"Authorization": f"Bearer {token}"}


async def test_customer_sees_own_accounts_usage_and_notices(
    client, db_url, fleet: Fleet, logins: Logins
) -> None:
    me = _customer_login(db_url, fleet)
    r = await client.get("/api/v1/my/accounts", headers=me)
    assert r.status == 200
    body = await r.json()
    assert body["customer"]["name"] == "Household One"
    [acct] = body["accounts"]
    assert (acct["account"], acct["balance"], acct["phase"]) == (fleet.account, "30.00", "normal")
    r = await client.get("/api/v1/my/usage?days=3", headers=me)
    usage = await r.json()
    assert len(usage["days"]) == 3 and usage["zone"] == "Asia/Shanghai"
    assert sum(Decimal(d["kwh"]) for d in usage["days"]) == Decimal("23") * Decimal(
        "0.25"
    ) + Decimal("9.5")
    r = await client.get("/api/v1/my/notices", headers=me)
    notices = (await r.json())["notices"]
    assert [n["body"] for n in notices] == ["Body second", "Body first"]
    assert all(n["account"] == fleet.account and not n["delivered"] for n in notices)

    # someone else's account, the staff's routes and the live feed stay shut
    assert (await client.get("/api/v1/my/usage?account=other-acct", headers=me)).status == 404
    for path in (
        "/api/v1/accounts",
        f"/api/v1/accounts/{fleet.account}",
        "/api/v1/gateways",
        "/api/v1/live",
    ):
        assert (await client.get(path, headers=me)).status == 403, path
    # staff are not customers
    for role in ("viewer", "admin"):
        r = await client.get("/api/v1/my/accounts", headers=logins.auth(role))
        assert r.status == 403
    # a customer login nobody linked to a customer gets a clear refusal
    r = await client.get("/api/v1/my/accounts", headers=logins.auth("customer"))
    assert r.status == 403 and "not linked" in (await r.json())["error"]["message"]


def test_create_user_links_only_existing_customers(db_url: str) -> None:
    from billing import UnknownCustomer

    with pytest.raises(UnknownCustomer):
        users.create_user(db_url, "nobody", "customer", customer="no-such-customer")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM web_users WHERE name = 'nobody'").fetchone() == (
            0,
        )
