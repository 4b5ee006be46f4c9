"""Postpaid collection for operators: bills and e-bills, the arrears and ageing report, each
account's ladder state and notices, penalty lines, instalment plans, collection rates.

Reads go through billing's public API (``billing.arrears_report``, ``billing.bills_of``, ...);
an instalment plan is agreed through :func:`billing.create_plan` (operator, audited).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from aiohttp import web

import billing
from web import database, inputs
from web._http import API, SETTINGS_KEY, current_user, json_response, requires
from web.errors import BadRequest, NotFound

routes = web.RouteTableDef()
MAX_INSTALMENTS = 36


def _billing(conn: psycopg.Connection[Any], fn: Any, *args: Any) -> Any:
    """Call one of billing's functions (written for plain tuple rows) on a web connection."""
    with database.tuple_rows(conn):
        return fn(conn, *args)


def _postpaid(conn: psycopg.Connection[Any], account_id: str) -> None:
    row = conn.execute(
        "SELECT billing_mode FROM billing_accounts WHERE account_id = %s", (account_id,)
    ).fetchone()
    if row is None or row["billing_mode"] != "postpaid":
        raise NotFound(f"no postpaid account {account_id!r}")


def _bill_json(bill: billing.Bill) -> dict[str, Any]:
    return {**asdict(bill), "kwh": str(bill.kwh)}


@routes.get(f"{API}/collection/arrears")
@requires("viewer")
async def arrears(request: web.Request) -> web.Response:
    """Every postpaid account owing on its bills, by ageing bucket, with its ladder state."""
    return json_response(
        await database.run(request, _billing, billing.arrears_report, datetime.now(UTC))
    )


@routes.get(f"{API}/collection/rates")
@requires("viewer")
async def rates(request: web.Request) -> web.Response:
    return json_response(
        await database.run(request, _billing, billing.collection_rates, datetime.now(UTC))
    )


@routes.get(f"{API}/collection/plans")
@requires("viewer")
async def list_plans(request: web.Request) -> web.Response:
    account_id = inputs.query_text(request, "account")
    return json_response(
        {"plans": await database.run(request, _billing, billing.plans, account_id)}
    )


@routes.get(API + "/accounts/{account}/bills")
@requires("viewer")
async def account_bills(request: web.Request) -> web.Response:
    account_id = inputs.path_text(request, "account")

    def load(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        _postpaid(conn, account_id)
        return [_bill_json(b) for b in _billing(conn, billing.bills_of, account_id)]

    return json_response({"account": account_id, "bills": await database.run(request, load)})


@routes.get(API + "/accounts/{account}/collection")
@requires("viewer")
async def account_ladder(request: web.Request) -> web.Response:
    """The ladder state with next step and date, penalty lines and every notice with its
    delivery evidence."""
    account_id = inputs.path_text(request, "account")

    def load(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        _postpaid(conn, account_id)
        rep = _billing(conn, billing.arrears_report, datetime.now(UTC))
        state = next(r for r in rep["accounts"] if r["account_id"] == account_id)
        return {
            **state,
            "penalties": _billing(conn, billing.penalty_lines, account_id),
            "notices": [
                {
                    "notice_id": n.notice_id,
                    "kind": n.kind,
                    "required": n.required,
                    "not_before": n.not_before,
                    "attempts": n.attempts,
                    "last_outcome": n.last_outcome,
                    "texts": n.texts,
                }
                for n in _billing(conn, billing.notices_of, account_id)
            ],
        }

    return json_response(await database.run(request, load))


def _load_bill(conn: psycopg.Connection[Any], bill_id: int) -> tuple[Any, Any, str]:
    try:
        bill, lines = _billing(conn, billing.get_bill, bill_id)
    except billing.BillingError:
        raise NotFound(f"no bill {bill_id}") from None
    row = conn.execute(
        "SELECT name FROM billing_accounts WHERE account_id = %s", (bill.account_id,)
    ).fetchone()
    return bill, lines, row["name"] if row else ""


@routes.get(API + "/bills/{bill}")
@requires("viewer")
async def get_bill(request: web.Request) -> web.Response:
    bill_id = inputs.path_id(request, "bill")
    bill, lines, _ = await database.run(request, _load_bill, bill_id)
    return json_response(
        {
            "bill": _bill_json(bill),
            "lines": [
                {
                    "line_no": ln.line_no,
                    "kind": ln.kind,
                    "description": ln.description,
                    "amount": ln.amount,
                }
                for ln in lines
            ],
        }
    )


@routes.get(API + "/bills/{bill}/ebill")
@requires("viewer")
async def ebill(request: web.Request) -> web.Response:
    """The e-bill as HTML (default) or PDF (``format=pdf``)."""
    bill_id = inputs.path_id(request, "bill")
    fmt = inputs.query_text(request, "format", choices=("html", "pdf"), default="html")
    bill, lines, name = await database.run(request, _load_bill, bill_id)
    if fmt == "pdf":
        pdf = billing.render_bill_pdf(bill, lines, name)
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="bill-{bill_id}.pdf"'},
        )
    return web.Response(text=billing.render_bill_html(bill, lines, name), content_type="text/html")


def _instalments(raw: Any, max_yuan: Any) -> list[tuple[date, Any]]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_INSTALMENTS:
        raise BadRequest(f"instalments must be a list of 1 to {MAX_INSTALMENTS} items")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"due", "amount"}:
            raise BadRequest(f'instalments[{i}] must be {{"due": date, "amount": yuan}}')
        try:
            due = date.fromisoformat(str(item["due"]))
        except ValueError:
            raise BadRequest(f"instalments[{i}].due must be a date like 2026-05-01") from None
        out.append(
            (due, inputs.money(item["amount"], f"instalments[{i}].amount", max_yuan=max_yuan))
        )
    return out


@routes.post(API + "/accounts/{account}/instalment-plans")
@requires("operator")
async def create_plan(request: web.Request) -> web.Response:
    account_id = inputs.path_text(request, "account")
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("instalments", "reason", "waive_penalty"))
    reason = inputs.text(body.get("reason"), "reason", max_len=500)
    waive = body.get("waive_penalty", False)
    if not isinstance(waive, bool):
        raise BadRequest("waive_penalty must be true or false")
    items = _instalments(body.get("instalments"), request.app[SETTINGS_KEY].door.max_topup_yuan)
    user = current_user(request)

    def post(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        _postpaid(conn, account_id)
        database.audit(
            conn,
            user,
            "collection.plan",
            f"account:{account_id}",
            {"instalments": [[d.isoformat(), str(a)] for d, a in items], "waive_penalty": waive},
        )
        try:
            with database.tuple_rows(conn):
                plan_id = billing.create_plan(
                    conn,
                    account_id,
                    items,
                    by=f"web:{user.name}",
                    reason=reason or "",
                    waive_penalty=waive,
                    now=datetime.now(UTC),
                )
        except billing.BillingError as exc:
            raise BadRequest(str(exc)) from None
        return next(p for p in _billing(conn, billing.plans, account_id) if p["plan_id"] == plan_id)

    return json_response(await database.run(request, post), status=201)
