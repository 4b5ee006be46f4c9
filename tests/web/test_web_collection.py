"""Postpaid collection over the API on a real PostgreSQL: bills and e-bills, the arrears
report with the ladder state, the account's notices and penalty lines, instalment plans."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient
from web_helpers import Logins

from billing import ledger
from billing.arrears import CollectionSettings
from billing.collection import run_collection
from billing.postpaid import issue_bill, open_postpaid
from billing.tariffs import load_tariffs

Client = TestClient[web.Request, web.Application]
S = CollectionSettings()


def _seed(db_url: str) -> int:
    """A residential postpaid account billed for last month and now well overdue."""
    now = datetime.now(UTC)
    period_end = now.astimezone(S.zone).date().replace(day=1) - timedelta(days=80)
    period_start = period_end.replace(day=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        open_postpaid(
            conn,
            "PP1",
            meters=["PP1-m"],
            customer_class="residential",
            name="Wang",
            group="Garden",
            tariff="residential-flat",
            charge_from=datetime.combine(period_start, datetime.min.time(), S.zone),
            tariffs=load_tariffs(),
        )
        ledger.adjust(conn, "PP1", "-250.00", "opening-debt", reason="meter reading by hand")
        issued = datetime.combine(
            period_end + timedelta(days=1), datetime.min.time(), S.zone
        ) + timedelta(hours=10)
        bill = issue_bill(conn, "PP1", period_start, period_end, now=issued, settings=S)
        run_collection(conn, now - timedelta(days=2), S)  # reminders .. collection notice
        run_collection(conn, now, S)  # a day after it: the planned-disconnection notice
        return bill.bill_id


async def _get(
    client: Client, path: str, logins: Logins, role: str = "viewer", status: int = 200, **kw: Any
) -> Any:
    resp = await client.request(
        kw.pop("method", "GET"), f"/api/v1{path}", headers=logins.auth(role), **kw
    )
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_bills_report_ladder_and_ebill(client: Client, logins: Logins, db_url: str) -> None:
    bill_id = _seed(db_url)
    bills = await _get(client, "/accounts/PP1/bills", logins)
    assert [b["bill_id"] for b in bills["bills"]] == [bill_id]
    assert bills["bills"][0]["amount_due"] == "250.00"
    one = await _get(client, f"/bills/{bill_id}", logins)
    assert one["lines"][-1]["amount"] == "-250.00"
    report = await _get(client, "/collection/arrears", logins)
    (row,) = report["accounts"]
    assert row["unpaid"] == "250.00" and row["ageing"]["61-90"] == "250.00"
    assert row["stage"] == "cut_planned"  # the planned-disconnection notice is out
    ladder = await _get(client, "/accounts/PP1/collection", logins)
    kinds = [n["kind"] for n in reversed(ladder["notices"])]
    assert kinds == ["bill", "reminder", "due_today", "collection", "planned_disconnection"]
    assert "违约金" in ladder["notices"][1]["texts"]["zh-CN"]["body"]
    assert ladder["hold"] and "delivery" in ladder["hold"]  # nothing delivered yet
    rates = await _get(client, "/collection/rates", logins)
    assert rates["group"] == [
        {
            "group": "Garden",
            "billed": "250.00",
            "collected": "0.00",
            "arrears": "250.00",
            "rate": "0.0000",
        }
    ]
    html = await client.get(f"/api/v1/bills/{bill_id}/ebill", headers=logins.auth("viewer"))
    assert html.status == 200 and html.content_type == "text/html"
    assert "250.00" in await html.text()
    pdf = await client.get(
        f"/api/v1/bills/{bill_id}/ebill?format=pdf", headers=logins.auth("viewer")
    )
    assert pdf.status == 200 and (await pdf.read()).startswith(b"%PDF")
    await _get(client, "/bills/999999/ebill", logins, status=404)
    await _get(client, "/accounts/nobody/bills", logins, status=404)


async def test_instalment_plan_by_operator(client: Client, logins: Logins, db_url: str) -> None:
    _seed(db_url)
    today = datetime.now(UTC).astimezone(S.zone).date()
    body = {
        "instalments": [
            {"due": (today + timedelta(days=10)).isoformat(), "amount": "100"},
            {"due": (today + timedelta(days=40)).isoformat(), "amount": "150.00"},
        ],
        "reason": "hardship",
        "waive_penalty": True,
    }
    await _get(
        client,
        "/accounts/PP1/instalment-plans",
        logins,
        role="engineer",
        status=403,
        method="POST",
        json=body,
    )
    plan = await _get(
        client,
        "/accounts/PP1/instalment-plans",
        logins,
        role="operator",
        status=201,
        method="POST",
        json=body,
    )
    assert plan["state"] == "kept" and plan["covered"] == "250.00"
    again = await _get(
        client,
        "/accounts/PP1/instalment-plans",
        logins,
        role="operator",
        status=400,
        method="POST",
        json=body,
    )
    assert "already" in again["error"]["message"]
    bad = {**body, "instalments": [{"due": "2020-01-01", "amount": "1"}]}
    out = await _get(
        client,
        "/accounts/PP1/instalment-plans",
        logins,
        role="operator",
        status=400,
        method="POST",
        json=bad,
    )
    assert "past" in out["error"]["message"]
    listed = await _get(client, "/collection/plans?account=PP1", logins)
    assert [p["plan_id"] for p in listed["plans"]] == [plan["plan_id"]]
    assert date.fromisoformat(listed["plans"][0]["instalments"][0]["due"]) > today


async def test_the_customer_sees_own_bills_only(client: Client, db_url: str) -> None:
    from billing import create_customer, link_account
    from web import auth, users

    bill_id = _seed(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        create_customer(conn, "c-wang", name="Wang", phones=["+8613800138000"])
        create_customer(conn, "c-li", name="Li", phones=["+8613800138001"])
        link_account(conn, "PP1", "c-wang")
    headers = {}
    for name, customer in (("wang", "c-wang"), ("li", "c-li")):
        users.create_user(db_url, name, "customer", customer=customer)
        with psycopg.connect(db_url) as conn:
            user_id = conn.execute("SELECT id FROM web_users WHERE name = %s",
                                   (name,)).fetchone()[0]
            headers[name] = {"Authorization": f"Bearer {auth.create_token(conn, user_id, 't')[1]}"}
    resp = await client.get("/api/v1/my/bills", headers=headers["wang"])
    bills = (await resp.json())["bills"]
    assert [b["bill_id"] for b in bills] == [bill_id] and bills[0]["account"] == "PP1"
    page = await client.get(f"/api/v1/my/bills/{bill_id}", headers=headers["wang"])
    assert page.status == 200 and page.content_type == "text/html"
    assert "PP1" in await page.text()
    # another customer: no bills, and Wang's bill is "not found", not "forbidden"
    resp = await client.get("/api/v1/my/bills", headers=headers["li"])
    assert (await resp.json())["bills"] == []
    assert (await client.get(f"/api/v1/my/bills/{bill_id}", headers=headers["li"])).status == 404


async def test_clear_escalation_by_operator(client: Client, logins: Logins, db_url: str) -> None:
    _seed(db_url)
    path = "/accounts/PP1/escalation/clear"
    body = {"reason": "demand letter answered, paying"}
    out = await _get(client, path, logins, role="operator", status=409, method="POST",
                     json=body)
    assert "not escalated" in out["error"]["message"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE billing_accounts SET escalated_at = now(), "
                     "escalation_reason = '2 bills in arrears within a year'")
    await _get(client, path, logins, role="engineer", status=403, method="POST", json=body)
    await _get(client, path, logins, role="operator", status=400, method="POST",
               json={"reason": "  "})
    await _get(client, "/accounts/nobody/escalation/clear", logins, role="operator",
               status=404, method="POST", json=body)
    state = await _get(client, path, logins, role="operator", method="POST", json=body)
    assert not state["escalated"]
    assert state["escalation_cleared"]["by"] == "web:operator"
    assert state["escalation_cleared"]["reason"] == body["reason"]
    with psycopg.connect(db_url) as conn:
        audit = conn.execute("SELECT user_name, detail->>'reason' FROM web_audit "
                             "WHERE action = 'collection.escalation_clear'").fetchall()
        billing_audit = conn.execute("SELECT action, by_whom FROM billing_escalation_audit"
                                     ).fetchall()
    assert audit == [("operator", body["reason"])]
    assert billing_audit == [("cleared", "web:operator")]


async def test_high_voltage_settlement_schedule(client: Client, logins: Logins,
                                                db_url: str) -> None:
    _seed(db_url)  # PP1 is residential
    with psycopg.connect(db_url, autocommit=True) as conn:
        open_postpaid(conn, "HV1", meters=["HV1-m"], customer_class="high_voltage",
                      tariff="residential-flat", tariffs=load_tariffs())
    nxt = datetime.now(UTC).astimezone(S.zone).date().replace(day=28) + timedelta(days=4)
    body = {"month": f"{nxt:%Y-%m}", "expected": "120000.50", "reason": "HV contract",
            "instalments": [{"day": 10, "share": "0.3"}, {"day": 20, "share": "0.3"}]}
    path = "/accounts/HV1/settlement-schedules"
    made = await _get(client, path, logins, role="operator", status=201, method="POST",
                      json=body)
    assert [i["amount"] for i in made["instalments"]] == ["36000.15", "36000.15"]
    assert made["bill_amount"] == "48000.20" and made["state"] == "kept"
    assert made["created_by"] == "web:operator"
    again = await _get(client, path, logins, role="operator", status=409, method="POST",
                       json=body)
    assert "already" in again["error"]["message"]
    res = await _get(client, "/accounts/PP1/settlement-schedules", logins, role="operator",
                     status=409, method="POST", json=body)
    assert "high-voltage" in res["error"]["message"]
    for bad in ({**body, "month": "2026-13"},
                {**body, "instalments": [{"day": 10, "share": "0.7"}, {"day": 20, "share": "0.3"}]},
                {**body, "instalments": [{"day": 40, "share": "0.3"}]},
                {**body, "expected": "-5"}):
        await _get(client, path, logins, role="operator", status=400, method="POST", json=bad)
    await _get(client, path, logins, role="engineer", status=403, method="POST", json=body)
    listed = await _get(client, path, logins)
    assert [s["schedule_id"] for s in listed["schedules"]] == [made["schedule_id"]]
    await _get(client, "/accounts/nobody/settlement-schedules", logins, status=404)
