"""The review queue ("abnormal work orders"): list, look at, confirm or dismiss with a comment.

Engineers decide; a decision releases the intervals the item held back from billing. The
collector owns the queue: its decision function is used when it has one, else the same
update is made here (see :func:`_decide`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web

from web import database, inputs, queries
from web.app import API, current_user, json_response, requires
from web.auth import User
from web.errors import Conflict, NotFound

routes = web.RouteTableDef()

STATUSES = ("open", "confirmed", "dismissed")


@routes.get(f"{API}/review-items")
@requires("viewer")
async def list_review_items(request: web.Request) -> web.Response:
    status = inputs.query_text(request, "status", choices=(*STATUSES, "all"), default="open")
    meter_id = inputs.query_text(request, "meter")
    limit = inputs.query_int(request, "limit", default=100, lo=1, hi=1000)
    offset = inputs.query_int(request, "offset", default=0, lo=0, hi=1_000_000)
    rows, total = await database.run(
        request, queries.review_items, None if status == "all" else status, meter_id, limit,
        offset)
    return json_response({"review_items": rows, "total": total, "limit": limit,
                          "offset": offset})


@routes.get(API + "/review-items/{id}")
@requires("viewer")
async def get_review_item(request: web.Request) -> web.Response:
    item_id = inputs.path_id(request)
    item = await database.run(request, queries.review_item, item_id)
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
    item = await database.run(request, _decide, item_id, status, comment, user)
    return json_response(item)


def _decide(conn: psycopg.Connection[Any], item_id: int, status: str, comment: str,
            user: User) -> dict[str, Any]:
    row = conn.execute("SELECT status FROM review_items WHERE id = %s FOR UPDATE",
                       (item_id,)).fetchone()
    if row is None:
        raise NotFound(f"no review item {item_id}")
    if row["status"] != "open":
        raise Conflict(f"review item {item_id} is already {row['status']}")
    action = "review.confirm" if status == "confirmed" else "review.dismiss"
    database.audit(conn, user, action, f"review_item:{item_id}",
                   {"status": status, "comment": comment})
    conn.execute(
        "UPDATE review_items SET status = %s, decided_at = now(), decided_by = %s,"
        " comment = %s WHERE id = %s", (status, user.name, comment, item_id))
    # Either decision releases what the item held back from billing, unless another open
    # item still holds the same interval.
    conn.execute(
        """UPDATE intervals i SET held = false
           FROM review_items r
           WHERE r.id = %s AND i.meter_id = r.meter_id AND i.held
             AND i.interval_start >= r.period_start AND i.interval_start < r.period_end
             AND NOT EXISTS (
                 SELECT 1 FROM anomalies a JOIN review_items o ON o.id = a.review_item_id
                 WHERE a.meter_id = i.meter_id AND a.at = i.interval_start AND a.holds
                   AND o.status = 'open' AND o.id <> r.id)""",
        (item_id,))
    item = queries.review_item(conn, item_id)
    assert item is not None
    return item
