"""Postpaid collection for operators: bills and e-bills, the arrears and ageing report, each
account's ladder state and notices, penalty lines, instalment plans, collection rates.

Reads go through billing's public API (``billing.arrears_report``, ``billing.bills_of``, ...);
an instalment plan is agreed through :func:`billing.create_plan`, the escalation flag cleared
through :func:`billing.clear_escalation` and a high-voltage account's in-month settlement
agreed through :func:`billing.create_settlement_schedule` (operator, audited).
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from aiohttp import web

import billing
from web import database, inputs
from web._http import API, SETTINGS_KEY, current_user, json_response, requires
from web.errors import BadRequest, Conflict, NotFound

routes = web.RouteTableDef()
MAX_INSTALMENTS = 36
MAX_SETTLEMENT_INSTALMENTS = 6
MAX_EXPECTED_YUAN = Decimal("99999999.99")  # a high-voltage month (the OpenAPI pattern)


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


def _state(conn: psycopg.Connection[Any], account_id: str) -> dict[str, Any]:
    rep = _billing(conn, billing.arrears_report, datetime.now(UTC))
    return next(r for r in rep["accounts"] if r["account_id"] == account_id)


@routes.post(API + "/accounts/{account}/escalation/clear")
@requires("operator")
async def clear_escalation(request: web.Request) -> web.Response:
    """Clear the escalation flag with a reason; who cleared it is recorded (billing's audit
    and the web audit). Only a bill falling into arrears afterwards sets it again."""
    account_id = inputs.path_text(request, "account")
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("reason",))
    reason = inputs.text(body.get("reason"), "reason", max_len=500)
    user = current_user(request)

    def post(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        _postpaid(conn, account_id)
        database.audit(conn, user, "collection.escalation_clear", f"account:{account_id}",
                       {"reason": reason})
        try:
            with database.tuple_rows(conn):
                billing.clear_escalation(conn, account_id, by=f"web:{user.name}",
                                         reason=reason or "", now=datetime.now(UTC))
        except billing.NotEscalated as exc:
            raise Conflict(str(exc)) from None
        return _state(conn, account_id)

    return json_response(await database.run(request, post))


@routes.get(API + "/accounts/{account}/settlement-schedules")
@requires("viewer")
async def list_settlements(request: web.Request) -> web.Response:
    """A postpaid account's in-month settlement schedules, newest month first."""
    account_id = inputs.path_text(request, "account")

    def load(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        _postpaid(conn, account_id)
        return list(_billing(conn, billing.settlement_schedules, account_id))

    return json_response({"account": account_id,
                          "schedules": await database.run(request, load)})


def _settlement_items(raw: Any) -> list[tuple[int, Decimal]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SETTLEMENT_INSTALMENTS:
        raise BadRequest(f"instalments must be a list of 1 to {MAX_SETTLEMENT_INSTALMENTS} items")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"day", "share"}:
            raise BadRequest(f'instalments[{i}] must be {{"day": 1-31, "share": "0.3"}}')
        day, share = item["day"], item["share"]
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise BadRequest(f"instalments[{i}].day must be a day of the month, 1 to 31")
        if not isinstance(share, str) or not re.fullmatch(r"0\.[0-9]{1,6}", share):
            raise BadRequest(f'instalments[{i}].share must be a fraction like "0.3"')
        out.append((day, Decimal(share)))
    return out


@routes.post(API + "/accounts/{account}/settlement-schedules")
@requires("operator")
async def create_settlement(request: web.Request) -> web.Response:
    """Agree a high-voltage account's in-month settlement for a month: instalments on days
    of the month, each a share of the expected amount; the month's bill settles the rest."""
    account_id = inputs.path_text(request, "account")
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("month", "expected", "instalments", "reason"))
    raw_month = inputs.text(body.get("month"), "month", max_len=7)
    try:
        month = datetime.strptime(raw_month or "", "%Y-%m").date()
    except ValueError:
        raise BadRequest("month must be YYYY-MM like 2026-05") from None
    expected = (
        None
        if body.get("expected") is None
        else inputs.money(body["expected"], "expected", max_yuan=MAX_EXPECTED_YUAN)
    )
    items = _settlement_items(body.get("instalments"))
    reason = inputs.text(body.get("reason"), "reason", max_len=500)
    user = current_user(request)

    def post(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        _postpaid(conn, account_id)
        database.audit(conn, user, "collection.settlement", f"account:{account_id}",
                       {"month": raw_month, "expected": str(expected) if expected else None,
                        "instalments": [[d, str(sh)] for d, sh in items or []]})
        try:
            with database.tuple_rows(conn):
                schedule_id = billing.create_settlement_schedule(
                    conn, account_id, month, by=f"web:{user.name}", reason=reason or "",
                    now=datetime.now(UTC), expected=expected, instalments=items,
                )
        except billing.NotHighVoltage as exc:
            raise Conflict(str(exc)) from None
        except billing.BillingError as exc:
            if "already" in str(exc):
                raise Conflict(str(exc)) from None
            raise BadRequest(str(exc)) from None
        return next(r for r in _billing(conn, billing.settlement_schedules, account_id)
                    if r["schedule_id"] == schedule_id)

    return json_response(await database.run(request, post), status=201)
