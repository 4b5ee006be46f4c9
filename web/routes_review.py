"""The review queue ("abnormal work orders"): list, look at, confirm or dismiss with a comment.

Engineers decide; a decision releases the intervals the item held back from billing. The
collector owns the queue: web reads it through :mod:`collector.read_model` and decides
through :func:`collector.decide_review` (see :func:`_decide`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web

import collector
from collector import read_model as collector_read
from web import database, inputs
from web._http import API, SETTINGS_KEY, current_user, json_response, page, requires
from web.auth import User
from web.errors import Conflict, NotFound

routes = web.RouteTableDef()

STATUSES = ("open", "confirmed", "dismissed")


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
