"""The review queue ("abnormal work orders"): list, look at, confirm or dismiss with a comment.

Engineers decide; a decision releases the intervals the item held back from billing. The
collector owns the queue: web reads it through :mod:`collector.read_model` and decides
through :func:`collector.decide_review` (see :func:`_decide`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import psycopg
from aiohttp import web

import collector
from collector import read_model as collector_read
from web import database, inputs
from web._http import API, SETTINGS_KEY, current_user, json_response, page, requires
from web.auth import User
from web.errors import BadRequest, Conflict, NotFound

routes = web.RouteTableDef()

STATUSES = ("open", "confirmed", "dismissed", "rejected", "corrected", "estimated")


@routes.get(f"{API}/review-items")
@requires("viewer")
async def list_review_items(request: web.Request) -> web.Response:
    status = inputs.query_text(request, "status", choices=(*STATUSES, "all"), default="open")
    meter_id = inputs.query_text(request, "meter")
    limit, offset = page(request)
    rows, total = await database.run(
        request, collector_read.review_items, None if status == "all" else status, meter_id, limit,
        offset)
    return json_response({"review_items": rows, "total": total, "limit": limit,
                          "offset": offset})


@routes.get(API + "/review-items/{id}")
@requires("viewer")
async def get_review_item(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    item = await database.run(request, collector_read.review_item, item_id)
    if item is None:
        raise NotFound(f"no review item {item_id}")
    return json_response(item)


@routes.post(API + "/review-items/{id}/confirm")
@requires("engineer")
async def confirm(request: web.Request) -> web.Response:
    return await _decision(request, "confirmed")


@routes.post(API + "/review-items/{id}/dismiss")
@requires("engineer")
async def dismiss(request: web.Request) -> web.Response:
    return await _decision(request, "dismissed")


async def _decision(request: web.Request, status: str) -> web.Response:
    item_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("comment",))
    comment = inputs.text(body.get("comment"), "comment", required=False, max_len=2000,
                          min_len=0) or ""
    user = current_user(request)
    database_url = request.app[SETTINGS_KEY].database_url
    item = await database.run(request, _decide, database_url, item_id, status, comment, user)
    return json_response(item)


def _decide(conn: psycopg.Connection[Any], database_url: str, item_id: int, status: str,
            comment: str, user: User) -> dict[str, Any]:
    """The collector decides (status, who, why; releases the held intervals) in a
    transaction of its own; the audit row is written first in ours, so a refused decision
    leaves no audit row behind."""
    if collector_read.review_item(conn, item_id) is None:
        raise NotFound(f"no review item {item_id}")
    action = "review.confirm" if status == "confirmed" else "review.dismiss"
    database.audit(conn, user, action, f"review_item:{item_id}",
                   {"status": status, "comment": comment})
    try:
        decided = collector.decide_review(database_url, item_id, status,  # type: ignore[arg-type]
                                user.name, comment)
    except collector.ReviewError as exc:
        raise Conflict(str(exc)) from None
    item = collector_read.review_item(conn, item_id)
    assert item is not None
    return {**item, "released_intervals": decided.released}


# ---------------------------------------------------------------------------- decisions with values

_D = collector.review_decisions
_DUE = "due_at"


def _read(fn: Any) -> Any:
    """``fn`` of the collector on a pool connection, with the plain tuple rows it expects."""

    def call(conn: psycopg.Connection[Any], *args: Any) -> Any:
        with database.tuple_rows(conn):
            return fn(conn, *args)

    return call


def _method(body: Mapping[str, Any]) -> str:
    method = body.get("method", "like_day")
    if method not in _D.METHODS:
        raise BadRequest(f"method must be one of {', '.join(_D.METHODS)}")
    return str(method)


def _due(body: Mapping[str, Any], name: str = _DUE) -> Any:
    raw = inputs.text(body.get(name), name, required=False, max_len=40)
    return inputs.parse_time(raw, name) if raw else None


def _ids(body: Mapping[str, Any]) -> list[int]:
    items = body.get("items")
    if (not isinstance(items, list) or not 1 <= len(items) <= 500
            or not all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= 2**63 - 1
                       for i in items)):
        raise BadRequest("items must be a list of 1 to 500 review item ids")
    return items


def _outcome(out: Any) -> dict[str, Any]:
    return {"id": out.item_id, "status": out.status, "released_intervals": out.released,
            "changed": [{"interval_start": c.interval_start, "previous_kwh": str(c.previous_kwh),
                         "kwh": str(c.kwh)} for c in out.changed]}


async def _write(request: web.Request, action: str, target: str, detail: dict[str, Any],
                 fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Audit row and the collector's change in one transaction; a refusal leaves neither."""
    user = current_user(request)

    def work(conn: psycopg.Connection[Any]) -> Any:
        database.audit(conn, user, action, target, detail)
        try:
            with database.tuple_rows(conn):  # the collector's functions read plain tuples
                return fn(conn, *args, **kwargs)
        except collector.ReviewError as exc:
            message = str(exc)
            if "does not exist" in message:
                raise NotFound(message) from None
            raise Conflict(message) from None

    return await database.run(request, work)


@routes.post(API + "/review-items/{id}/reject")
@requires("engineer")
async def reject(request: web.Request) -> web.Response:
    return await _estimate(request, "rejected")


@routes.post(API + "/review-items/{id}/estimate")
@requires("engineer")
async def estimate(request: web.Request) -> web.Response:
    return await _estimate(request, "estimated")


async def _estimate(request: web.Request, status: str) -> web.Response:
    item_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("comment", "method"))
    comment = inputs.text(body.get("comment"), "comment", required=False, max_len=2000,
                          min_len=0) or ""
    method = _method(body)
    who = current_user(request).name
    out = await _write(request, f"review.{status[:-2]}", f"review_item:{item_id}",
                       {"method": method, "comment": comment}, _D.estimate_item, item_id, who,
                       comment, method=method, status=status)
    return json_response(_outcome(out))


@routes.post(API + "/review-items/{id}/correct")
@requires("engineer")
async def correct(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("reason", "values"))
    reason = inputs.text(body.get("reason"), "reason", max_len=2000)
    raw = body.get("values")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 500:
        raise BadRequest("values must be a list of 1 to 500 {interval_start, kwh}")
    values = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise BadRequest(f"values[{i}] must be an object")
        inputs.only_keys(entry, ("interval_start", "kwh"))
        start = inputs.parse_time(
            inputs.text(entry.get("interval_start"), f"values[{i}].interval_start",
                        max_len=40) or "", f"values[{i}].interval_start")
        try:
            values[start] = _D.parse_kwh(entry.get("kwh"), f"values[{i}].kwh")
        except collector.ReviewError as exc:
            raise BadRequest(str(exc)) from None
    who = current_user(request).name
    out = await _write(request, "review.correct", f"review_item:{item_id}",
                       {"reason": reason, "values": {k.isoformat(): str(v)
                                                     for k, v in values.items()}},
                       _D.correct, item_id, who, reason or "", values)
    return json_response(_outcome(out))


@routes.post(API + "/review/bulk-decisions")
@requires("engineer")
async def bulk(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("items", "decision", "comment", "method"))
    items = _ids(body)
    decision = body.get("decision")
    if decision not in ("confirmed", "dismissed", "rejected", "estimated"):
        raise BadRequest("decision must be confirmed, dismissed, rejected or estimated")
    comment = inputs.text(body.get("comment"), "comment", required=False, max_len=2000,
                          min_len=0) or ""
    method = _method(body)
    who = current_user(request).name
    outs = await _write(request, "review.bulk", f"review_items:{len(items)}",
                        {"items": items, "decision": decision, "comment": comment},
                        _D.bulk_decide, items, decision, who, comment, method=method)
    return json_response({"decided": [_outcome(o) for o in outs]})


@routes.post(API + "/review/assignments")
@requires("engineer")
async def assign(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("items", "to", "team", _DUE))
    items = _ids(body)
    to = inputs.text(body.get("to"), "to", required=False, max_len=100)
    team = inputs.text(body.get("team"), "team", required=False, max_len=100)
    if to is None and team is None:
        raise BadRequest("say to whom (to) or to which team (team)")
    due = _due(body)
    who = current_user(request).name
    n = await _write(request, "review.assign", f"review_items:{len(items)}",
                     {"items": items, "to": to, "team": team, _DUE: database.iso(due)},
                     _D.assign, items, who, to=to, team=team, due_at=due)
    return json_response({"assigned": n})


@routes.post(API + "/review-items/{id}/comments")
@requires("engineer")
async def add_comment(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("text",))
    text = inputs.text(body.get("text"), "text", max_len=2000) or ""
    who = current_user(request).name
    await _write(request, "review.comment", f"review_item:{item_id}", {"text": text},
                 _D.comment, item_id, who, text)
    return json_response({"history": await database.run(request, _read(_D.history), item_id)},
                         status=201)


@routes.get(API + "/review-items/{id}/history")
@requires("viewer")
async def item_history(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    if await database.run(request, collector_read.review_item, item_id) is None:
        raise NotFound(f"no review item {item_id}")
    return json_response({"history": await database.run(request, _read(_D.history), item_id)})


# ---------------------------------------------------------------------------- work orders


def _order(o: Any) -> dict[str, Any]:
    return {"id": o.id, "item_id": o.item_id, "meter": o.meter_id, "created_at": o.created_at,
            "created_by": o.created_by, "assigned_to": o.assigned_to, "due_at": o.due_at,
            "instructions": o.instructions, "status": o.status, "closed_at": o.closed_at,
            "closed_by": o.closed_by, "findings": o.findings}


@routes.post(API + "/review-items/{id}/work-orders")
@requires("engineer")
async def open_work_order(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("instructions", "assigned_to", _DUE))
    instructions = inputs.text(body.get("instructions"), "instructions", max_len=2000) or ""
    assigned = inputs.text(body.get("assigned_to"), "assigned_to", required=False, max_len=100)
    due = _due(body)
    who = current_user(request).name
    order = await _write(request, "review.work_order", f"review_item:{item_id}",
                         {"instructions": instructions, "assigned_to": assigned},
                         _D.open_work_order, item_id, who, instructions,
                         assigned_to=assigned, due_at=due)
    return json_response(_order(order), status=201)


@routes.post(API + "/work-orders/{id}/close")
@requires("engineer")
async def close_work_order(request: web.Request) -> web.Response:
    order_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("findings", "cancelled"))
    findings = inputs.text(body.get("findings"), "findings", max_len=2000) or ""
    cancelled = body.get("cancelled", False)
    if not isinstance(cancelled, bool):
        raise BadRequest("cancelled must be true or false")
    who = current_user(request).name
    order = await _write(request, "work_order.close", f"work_order:{order_id}",
                         {"findings": findings, "cancelled": cancelled},
                         _D.close_work_order, order_id, who, findings, cancelled=cancelled)
    return json_response(_order(order))


def _status_filter(request: web.Request) -> str | None:
    status = inputs.query_text(request, "status", choices=("open", "done", "cancelled", "all"),
                               default="open")
    return None if status == "all" else status


@routes.get(API + "/work-orders")
@requires("viewer")
async def list_work_orders(request: web.Request) -> web.Response:
    orders = await database.run(request, _read(_D.work_orders), _status_filter(request))
    return json_response({"work_orders": [_order(o) for o in orders]})


@routes.get(API + "/work-orders.csv")
@requires("viewer")
async def export_work_orders(request: web.Request) -> web.Response:
    orders = await database.run(request, _read(_D.work_orders), _status_filter(request))
    return web.Response(text=_D.work_orders_csv(orders), content_type="text/csv",
                        headers={"Content-Disposition":
                                 'attachment; filename="work-orders.csv"'})


@routes.get(API + "/work-orders/{id}/print")
@requires("viewer")
async def print_work_order(request: web.Request) -> web.Response:
    """A page the field team prints: what, where, why, and room for the findings."""
    order_id = inputs.path_id(request)
    orders = await database.run(request, _read(_D.work_orders), None, order_id)
    if not orders:
        raise NotFound(f"no work order {order_id}")
    o = orders[0]
    item = await database.run(request, collector_read.review_item, o.item_id)
    esc = html.escape
    due = o.due_at.strftime("%Y-%m-%d %H:%M UTC") if o.due_at else "-"
    rows = "".join(f"<tr><td>{esc(a['at'].strftime('%Y-%m-%d %H:%M'))}</td>"
                   f"<td>{esc(a['rule'])}</td><td>{esc(a['reason'])}</td></tr>"
                   for a in (item.get("anomalies", []) if item else []))
    page_html = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Work order {o.id}</title><style>body{{font:14px sans-serif;margin:2em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px}}
.box{{border:1px solid #000;height:8em;margin-top:.5em}}</style></head><body>
<h1>Site visit - work order {o.id}</h1>
<table><tr><th>Meter</th><td>{esc(o.meter_id)}</td></tr>
<tr><th>Review item</th><td>{o.item_id} ({esc(item['rule'] if item else '')})</td></tr>
<tr><th>Assigned to</th><td>{esc(o.assigned_to or '-')}</td></tr>
<tr><th>Due</th><td>{esc(due)}</td></tr>
<tr><th>Ordered by</th><td>{esc(o.created_by)}, {o.created_at:%Y-%m-%d %H:%M} UTC</td></tr>
<tr><th>Status</th><td>{esc(o.status)}</td></tr></table>
<h2>Instructions</h2><p>{esc(o.instructions)}</p>
<h2>What validation found</h2><table><tr><th>At (UTC)</th><th>Rule</th><th>Reason</th></tr>
{rows}</table>
<h2>Findings</h2><div class="box">{esc(o.findings or '')}</div>
<p>Signature: ____________________ Date: ____________</p></body></html>"""
    return web.Response(text=page_html, content_type="text/html")
