"""Review decisions with values, the queue's work and work orders through the API."""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient
from web_helpers import Fleet, Logins

Client = TestClient[web.Request, web.Application]


async def _call(client: Client, method: str, path: str, logins: Logins, role: str = "engineer",
                status: int = 200, **kw: Any) -> Any:
    resp = await client.request(method, f"/api/v1{path}", headers=logins.auth(role), **kw)
    body = await resp.json() if resp.content_type == "application/json" else await resp.text()
    assert resp.status == status, body
    return body


async def test_correct_comment_history_and_audit(client: Client, logins: Logins, fleet: Fleet,
                                                 db_url: str) -> None:
    item = await _call(client, "GET", f"/review-items/{fleet.review_id}", logins, "viewer")
    start = item["period_start"]
    path = f"/review-items/{fleet.review_id}/correct"
    body = {"reason": "CT wiring fault found on site",
            "values": [{"interval_start": start, "kwh": "0.2500"}]}
    forbidden = await _call(client, "POST", path, logins, "viewer", 403, json=body)
    assert "engineer" in forbidden["error"]["message"]
    bad = await _call(client, "POST", path, logins, status=400, json={
        "reason": "x", "values": [{"interval_start": start, "kwh": "abc"}]})
    assert "values[0].kwh" in bad["error"]["message"]
    outside = await _call(client, "POST", path, logins, status=409, json={
        "reason": "x", "values": [{"interval_start": "2001-01-01T00:00:00Z", "kwh": "1"}]})
    assert "is not an interval of review item" in outside["error"]["message"]
    missing = await _call(client, "POST", "/review-items/999999/correct", logins, status=404,
                          json=body)
    assert "does not exist" in missing["error"]["message"]

    out = await _call(client, "POST", path, logins, json=body)
    assert out["status"] == "corrected" and out["changed"][0]["kwh"] == "0.2500"
    await _call(client, "POST", f"/review-items/{fleet.review_id}/comments", logins,
                status=201, json={"text": "customer informed"})
    history = (await _call(client, "GET", f"/review-items/{fleet.review_id}/history", logins,
                           "viewer"))["history"]
    assert [h["action"] for h in history] == ["decided", "comment"]
    assert history[0]["by"] == "engineer" and history[0]["detail"]["decision"] == "corrected"
    with psycopg.connect(db_url) as conn:
        audit = [r[0] for r in conn.execute("SELECT action FROM web_audit ORDER BY id")]
        kwh, quality = conn.execute(
            "SELECT (kwh_e4 * 0.0001)::text, quality::text FROM intervals i JOIN meters m"
            " ON m.meter_key = i.meter WHERE m.meter_id = %s AND interval_start = %s",
            (fleet.meters[0], start)).fetchone()
    # refused requests leave no audit row; the two that changed something do
    assert audit == ["review.correct", "review.comment"]
    assert (kwh, quality) == ("0.2500", "F")


async def test_assign_bulk_and_work_orders(client: Client, logins: Logins, fleet: Fleet) -> None:
    rid = fleet.review_id
    assigned = await _call(client, "POST", "/review/assignments", logins, json={
        "items": [rid], "to": "eng. Li", "due_at": "2031-01-06T09:00:00+08:00"})
    assert assigned == {"assigned": 1}
    bad = await _call(client, "POST", "/review/assignments", logins, status=400,
                      json={"items": [rid], "due_at": "2031-01-06T09:00:00Z"})
    assert "to whom" in bad["error"]["message"]
    order = await _call(client, "POST", f"/review-items/{rid}/work-orders", logins, status=201,
                        json={"instructions": "<script>alert(1)</script> check CT polarity",
                              "assigned_to": "field team 2"})
    listed = (await _call(client, "GET", "/work-orders", logins, "viewer"))["work_orders"]
    assert [o["id"] for o in listed] == [order["id"]]
    csv_text = await _call(client, "GET", "/work-orders.csv", logins, "viewer")
    assert csv_text.splitlines()[0].startswith("work_order,review_item,meter")
    printed = await _call(client, "GET", f"/work-orders/{order['id']}/print", logins, "viewer")
    assert "&lt;script&gt;" in printed and "<script>" not in printed
    assert fleet.meters[0] in printed
    closed = await _call(client, "POST", f"/work-orders/{order['id']}/close", logins,
                         json={"findings": "polarity reversed; fixed"})
    assert closed["status"] == "done"
    again = await _call(client, "POST", f"/work-orders/{order['id']}/close", logins,
                        status=409, json={"findings": "again"})
    assert "already closed" in again["error"]["message"]
    refused = await _call(client, "POST", "/review/bulk-decisions", logins, status=404, json={
        "items": [rid, 987654], "decision": "confirmed"})
    assert "nothing was decided" in refused["error"]["message"]
    done = await _call(client, "POST", "/review/bulk-decisions", logins, json={
        "items": [rid], "decision": "estimated", "method": "linear"})
    assert [d["status"] for d in done["decided"]] == ["estimated"]
