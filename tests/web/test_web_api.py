"""The JSON API against a real PostgreSQL: reads, writes, roles, audit, errors."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient
from web_helpers import Fleet, Logins, same_origin

from billing.ledger import balance

Client = TestClient[web.Request, web.Application]


async def _json(client: Client, method: str, path: str, logins: Logins | None = None,
                role: str = "viewer", status: int = 200, **kw: Any) -> Any:
    headers = {**(logins.auth(role) if logins else {}), **kw.pop("headers", {})}
    resp = await client.request(method, f"/api/v1{path}", headers=headers, **kw)
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    return body


async def test_fleet_reads(client: Client, logins: Logins, fleet: Fleet) -> None:
    gws = (await _json(client, "GET", "/gateways", logins))["gateways"]
    status = {g["gateway"]: g for g in gws}
    assert status[fleet.gateway]["status"] == "online"
    assert status[fleet.gateway]["meters"] == 2
    assert status[fleet.offline_gateway]["status"] == "offline"
    assert "offline" in status[fleet.offline_gateway]["offline_reason"]

    detail = await _json(client, "GET", f"/gateways/{fleet.gateway}", logins)
    assert detail["meter_ids"] == fleet.meters[:2]

    meters = await _json(client, "GET", "/meters", logins, params={"gateway": fleet.gateway})
    assert meters["total"] == 2
    blank = await _json(client, "GET", "/meters", logins, params={"gateway": " \u00a0"})
    assert blank["total"] == 3  # a filter of only whitespace is a blank box: no filter
    latest = meters["meters"][0]["values"]
    assert latest["power_active_total"]["value"] == 1.6  # the newest of the seeded hour
    assert latest["voltage_a"]["unit"] == "V"

    one = await _json(client, "GET", f"/meters/{fleet.meters[0]}", logins)
    assert one["open_reviews"] == 1
    assert one["billing"] == {"account": fleet.account, "relay_wanted": "closed",
                              "relay_reported": "unknown", "customer_action_needed": False,
                              "hold": None}
    other = await _json(client, "GET", f"/meters/{fleet.meters[1]}", logins)
    assert other["billing"] is None


async def test_history_picks_resolution_from_range(client: Client, logins: Logins,
                                                   fleet: Fleet) -> None:
    meter = fleet.meters[0]
    raw = await _json(client, "GET", f"/meters/{meter}/history", logins,
                      params={"quantity": "voltage_a"})
    assert raw["resolution"] == "raw"
    assert 59 <= len(raw["points"]) <= 61
    day = await _json(client, "GET", f"/meters/{meter}/history", logins,
                      params={"from": (fleet.now.replace(hour=0) .isoformat()),
                              "to": fleet.now.isoformat().replace("+00:00", "Z"),
                              "quantity": "power_active_total", "resolution": "auto"})
    assert day["resolution"] in ("raw", "1min", "15min")
    week = await _json(client, "GET", f"/meters/{meter}/history", logins,
                       params={"from": "2020-01-01T00:00:00Z", "to": "2020-01-08T00:00:00Z"})
    assert week["resolution"] == "hour" and week["points"] == []
    buckets = await _json(client, "GET", f"/meters/{meter}/history", logins,
                          params={"resolution": "15min", "quantity": "power_active_total"})
    assert 4 <= len(buckets["points"]) <= 6
    point = buckets["points"][-1]
    assert point["min"] <= point["value"] <= point["max"]


async def test_intervals_with_anomalies(client: Client, logins: Logins, fleet: Fleet) -> None:
    out = await _json(client, "GET", f"/meters/{fleet.meters[0]}/intervals", logins)
    assert len(out["intervals"]) == 24
    held = [i for i in out["intervals"] if i["held"]]
    assert len(held) == 1 and held[0]["kwh"] == "9.5000"
    assert out["anomalies"][0]["rule"] == "surge"
    assert out["anomalies"][0]["at"] == held[0]["start"]
    # a surge compares kWh with kWh: the page shows the units beside the numbers
    assert (out["anomalies"][0]["value_unit"], out["anomalies"][0]["expected_unit"]) == (
        "kWh", "kWh")


async def test_review_dismiss_releases_hold_and_is_audited(
    client: Client, logins: Logins, fleet: Fleet, db_url: str
) -> None:
    path = f"/review-items/{fleet.review_id}/dismiss"
    forbidden = await _json(client, "POST", path, logins, role="viewer", status=403,
                            json={"comment": "x"})
    assert "engineer" in forbidden["error"]["message"]
    item = await _json(client, "POST", path, logins, role="engineer",
                       json={"comment": "meter swapped, reading is fine"})
    assert item["status"] == "dismissed" and item["decided_by"] == "engineer"
    assert item["comment"] == "meter swapped, reading is fine"
    again = await _json(client, "POST", f"/review-items/{fleet.review_id}/confirm", logins,
                        role="engineer", status=409, json={})
    assert "already dismissed" in again["error"]["message"]
    queue = await _json(client, "GET", "/review-items", logins)
    assert queue["total"] == 0
    with psycopg.connect(db_url) as conn:
        held = conn.execute("SELECT count(*) FROM intervals WHERE held").fetchone()
        audit = conn.execute(
            "SELECT user_name, action, target, detail->>'comment' FROM web_audit").fetchall()
    assert held == (0,)
    assert audit == [("engineer", "review.dismiss", f"review_item:{fleet.review_id}",
                      "meter swapped, reading is fine")]


async def test_topup_changes_balance_once(client: Client, logins: Logins, fleet: Fleet,
                                          db_url: str) -> None:
    acct = await _json(client, "GET", f"/accounts/{fleet.account}", logins)
    assert acct["balance"] == "30.00" and acct["risk"]["grade"] == "A"
    body = {"amount": "50.00", "channel": "wechat", "reference": "wx-1"}
    await _json(client, "POST", f"/accounts/{fleet.account}/topups", logins,
                role="engineer", status=403, json=body)
    out = await _json(client, "POST", f"/accounts/{fleet.account}/topups", logins,
                      role="operator", status=201, json=body)
    assert out["balance"] == "80.00"
    replay = await _json(client, "POST", f"/accounts/{fleet.account}/topups", logins,
                         role="operator", status=201, json=body)
    assert replay["entry"]["id"] == out["entry"]["id"] and replay["balance"] == "80.00"
    clash = await _json(client, "POST", f"/accounts/{fleet.account}/topups", logins,
                        role="operator", status=409, json={**body, "amount": "60.00"})
    assert "wx-1" in clash["error"]["message"]
    ledger = await _json(client, "GET", f"/accounts/{fleet.account}/ledger", logins)
    assert [e["amount"] for e in ledger["entries"]] == ["50.00", "30.00"]
    assert ledger["entries"][0]["actor"] == "web:operator"
    with psycopg.connect(db_url) as conn:
        assert balance(conn, fleet.account) == Decimal("80.00")
        n = conn.execute("SELECT count(*) FROM web_audit WHERE action = 'account.topup'"
                         " AND user_name = 'operator'").fetchone()
    assert n is not None and n[0] >= 1


async def test_manual_cutoff_and_restore(client: Client, logins: Logins, fleet: Fleet,
                                         db_url: str) -> None:
    meter = fleet.meters[0]
    await _json(client, "POST", "/commands", logins, role="engineer", status=403,
                json={"meter": meter, "action": "cutoff"})
    cmd = await _json(client, "POST", "/commands", logins, role="operator", status=201,
                      json={"meter": meter, "action": "cutoff", "reason": "tamper"})
    assert cmd["action"] == "relay_open" and cmd["state"] == "queued"
    assert cmd["audit"][0]["actor"] == "web:operator"
    busy = await _json(client, "POST", "/commands", logins, role="operator", status=409,
                       json={"meter": meter, "action": "restore"})
    assert "in flight" in busy["error"]["message"]
    history = await _json(client, "GET", "/commands", logins, params={"meter": meter})
    assert [c["id"] for c in history["commands"]] == [cmd["id"]]
    unknown = await _json(client, "POST", "/commands", logins, role="operator", status=404,
                          json={"meter": "nope", "action": "cutoff"})
    assert "no account" in unknown["error"]["message"]
    with psycopg.connect(db_url) as conn:
        wanted = conn.execute("SELECT relay_wanted, manual_hold, manual_hold_by, "
                              "manual_hold_command FROM billing_meters WHERE meter_id = %s",
                              (meter,)).fetchone()
        held = conn.execute("SELECT event, actor, reason FROM billing_manual_hold_audit "
                            "WHERE meter_id = %s", (meter,)).fetchall()
    # billing holds the operator's decision against its policy and reconciliation
    assert wanted == ("open", "open", "web:operator", cmd["id"])
    assert held == [("set", "web:operator", "tamper")]


async def test_manual_hold_until_and_release(client: Client, logins: Logins, fleet: Fleet,
                                             db_url: str) -> None:
    """hold_until passes through to billing's hold; the hold shows on the meter and the
    account; an operator releases it (audited with their name); viewers may do neither."""
    from datetime import UTC, datetime, timedelta, timezone

    meter = fleet.meters[0]
    until = (datetime.now(UTC) + timedelta(hours=6)).replace(microsecond=0)
    body = {"meter": meter, "action": "cutoff", "reason": "meter tamper",
            "hold_until": until.isoformat().replace("+00:00", "Z")}
    await _json(client, "POST", "/commands", logins, role="viewer", status=403, json=body)
    for bad, words in (("2020-01-01T00:00:00Z", "in the future"),
                       ((datetime.now(UTC) - timedelta(seconds=5)).isoformat(), "in the future"),
                       ("2030-01-01T00:00:00", "timezone"),
                       ("next tuesday", "ISO-8601"), (1893456000, "must be a string")):
        out = await _json(client, "POST", "/commands", logins, role="operator", status=400,
                          json={**body, "hold_until": bad})
        assert "hold_until" in out["error"]["message"] and words in out["error"]["message"]
    with psycopg.connect(db_url) as conn:  # refused: nothing queued, held or audited
        assert conn.execute("SELECT count(*) FROM billing_commands WHERE meter_id = %s",
                            (meter,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM web_audit").fetchone() == (0,)

    # an offset other than Z is the same instant
    local = until.astimezone(timezone(timedelta(hours=8))).isoformat()
    cmd = await _json(client, "POST", "/commands", logins, role="operator", status=201,
                      json={**body, "hold_until": local})
    assert "held until" in cmd["reason"]
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT manual_hold, manual_hold_until, manual_hold_by"
                           " FROM billing_meters WHERE meter_id = %s", (meter,)).fetchone()
        set_audit = conn.execute("SELECT detail->>'hold_until' FROM web_audit"
                                 " WHERE action = 'command.cutoff'").fetchone()
    assert row == ("open", until, "web:operator")
    assert set_audit is not None and set_audit[0].startswith(until.strftime("%Y-%m-%dT%H:%M"))

    expected_hold = {"meter": meter, "account": fleet.account, "wanted": "open",
                     "until": until.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                     "by": "web:operator", "reason": "meter tamper", "command": cmd["id"]}
    detail = await _json(client, "GET", f"/meters/{meter}", logins)
    hold = detail["billing"]["hold"]
    assert {k: hold[k] for k in expected_hold} == expected_hold and hold["since"]
    acct = await _json(client, "GET", f"/accounts/{fleet.account}", logins)
    assert [h["meter"] for h in acct["holds"]] == [meter] and acct["cut_off"] is True
    listed = await _json(client, "GET", "/accounts", logins, params={"q": fleet.account})
    assert listed["accounts"][0]["holds"] == acct["holds"]

    release = f"/meters/{meter}/hold/release"
    await _json(client, "POST", release, logins, role="viewer", status=403, json={})
    await _json(client, "POST", release, logins, role="engineer", status=403, json={})
    await _json(client, "POST", "/meters/nope/hold/release", logins, role="operator",
                status=404, json={})
    out = await _json(client, "POST", release, logins, role="operator",
                      json={"reason": "tamper seal replaced"})
    assert out["released"]["wanted"] == "open" and out["released"]["by"] == "web:operator"
    assert out["relay_wanted"] == "closed"  # the policy's wish: the account is in credit
    again = await _json(client, "POST", release, logins, role="operator", status=409, json={})
    assert "no manual hold" in again["error"]["message"]
    # a meter that never had a hold
    with psycopg.connect(db_url) as conn:
        from billing.ledger import create_account

        create_account(conn, f"{fleet.account}-2", meters=[fleet.meters[1]],
                       tariff="residential-flat", name="Household Two")
        conn.commit()
    await _json(client, "POST", f"/meters/{fleet.meters[1]}/hold/release", logins,
                role="operator", status=409, json={})

    assert (await _json(client, "GET", f"/meters/{meter}", logins))["billing"]["hold"] is None
    assert (await _json(client, "GET", f"/accounts/{fleet.account}", logins))["holds"] == []
    with psycopg.connect(db_url) as conn:
        held = conn.execute("SELECT manual_hold, manual_hold_until FROM billing_meters"
                            " WHERE meter_id = %s", (meter,)).fetchone()
        trail = conn.execute("SELECT event, actor, reason FROM billing_manual_hold_audit"
                             " WHERE meter_id = %s ORDER BY audit_id", (meter,)).fetchall()
        audit = conn.execute("SELECT user_name, role, action, target, detail->>'reason'"
                             " FROM web_audit WHERE action = 'hold.release'").fetchall()
    assert held == (None, None)
    assert trail == [("set", "web:operator", "meter tamper"),
                     ("released", "web:operator", "tamper seal replaced")]
    # one row: the refused releases (403, 404, 409) left none
    assert audit == [("operator", "operator", "hold.release", f"meter:{meter}",
                      "tamper seal replaced")]


async def test_bad_input_is_400_with_a_reason(client: Client, logins: Logins,
                                              fleet: Fleet) -> None:
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", f"/meters/{fleet.meters[0]}/history", {"params": {"from": "yesterday"}},
         "ISO-8601"),
        ("GET", f"/meters/{fleet.meters[0]}/history", {"params": {"quantity": "bogus"}},
         "unknown"),
        ("GET", "/meters", {"params": {"limit": "0"}}, "between 1 and 1000"),
        ("GET", "/meters", {"params": {"limit": "ten"}}, "whole number"),
        ("GET", "/review-items/99999999999999999999", {}, "between 1"),
        ("GET", "/review-items", {"params": {"status": "maybe"}}, "one of"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, "not valid JSON"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": 12.345, "channel": "bank", "reference": "r"}}, "amount"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "1.001", "channel": "bank", "reference": "r"}}, "two decimals"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "-5", "channel": "bank", "reference": "r"}}, "more than zero"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "5", "channel": "cash", "reference": "r"}}, "channel"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "5", "channel": "bank", "reference": "r\x00"}}, "NUL"),
        ("POST", "/commands", {"json": {"meter": "m", "action": "explode"}}, "action"),
        ("POST", "/commands", {"json": [1, 2]}, "JSON object"),
        ("POST", "/commands", {"json": {"meter": "m", "action": "cutoff", "x": 1}},
         "unknown field"),
    ]
    for method, path, kw, words in cases:
        body = await _json(client, method, path, logins, role="admin", status=400, **kw)
        assert words in body["error"]["message"], (path, kw, body)


async def test_auth_required_and_roles(client: Client, logins: Logins, db_url: str) -> None:
    body = await _json(client, "GET", "/gateways", status=401)
    assert "log in" in body["error"]["message"]
    resp = await client.get("/api/v1/gateways", headers={"Authorization": "Bearer mh_nope"})
    assert resp.status == 401
    assert (await _json(client, "GET", "/users", logins, role="operator", status=403))
    assert (await client.get("/api/v1/openapi.json")).status == 200
    missing = await _json(client, "GET", "/no-such-thing", logins, status=404)
    assert "no such endpoint" in missing["error"]["message"]


async def test_session_login_cookie(client: Client, logins: Logins) -> None:
    bad = await _json(client, "POST", "/session", status=401,
                      json={"name": "viewer", "password": "wrong"})
    assert "wrong user name or password" in bad["error"]["message"]
    ok = await _json(client, "POST", "/session",
                     json={"name": "operator", "password": logins.passwords["operator"]})
    assert ok["user"]["role"] == "operator"
    me = await _json(client, "GET", "/me")  # the cookie jar carries the session
    assert me["user"] == {"id": ok["user"]["id"], "name": "operator", "role": "operator",
                          "via": "session"}
    await _json(client, "DELETE", "/session", json={}, headers=same_origin(client))
    await _json(client, "GET", "/me", status=401)


async def test_admin_users_and_tokens(client: Client, logins: Logins) -> None:
    made = await _json(client, "POST", "/users", logins, role="admin", status=201,
                       json={"name": "alice", "role": "engineer"})
    assert made["user"]["role"] == "engineer" and len(made["password"]) >= 12
    dup = await _json(client, "POST", "/users", logins, role="admin", status=409,
                      json={"name": "alice", "role": "viewer"})
    assert "already exists" in dup["error"]["message"]
    tok = await _json(client, "POST", "/tokens", logins, role="admin", status=201,
                      json={"user": "alice", "label": "script"})
    headers = {"Authorization": f"Bearer {tok['token']}"}
    assert (await client.get("/api/v1/me", headers=headers)).status == 200
    await _json(client, "DELETE", f"/tokens/{tok['id']}", logins, role="admin")
    assert (await client.get("/api/v1/me", headers=headers)).status == 401
    audit = await _json(client, "GET", "/audit", logins, role="admin")
    assert [e["action"] for e in audit["entries"]] == ["token.revoke", "token.create",
                                                       "user.create"]


async def test_silent_gateway_shows_offline(client: Client, logins: Logins, fleet: Fleet,
                                            db_url: str) -> None:
    """A gateway that says it is online but has not been heard from is offline."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE gateways SET last_seen = now() - interval '5 minutes'"
                     " WHERE gateway = %s", (fleet.gateway,))
    gws = (await _json(client, "GET", "/gateways", logins))["gateways"]
    gw = next(g for g in gws if g["gateway"] == fleet.gateway)
    assert gw["reported_state"] == "online" and gw["status"] == "offline"
    assert "nothing heard for over 60 s" in gw["offline_reason"]


async def test_account_outlook_and_alerts(client: Client, logins: Logins, fleet: Fleet,
                                          db_url: str) -> None:
    """Days of credit from the account's own charges; risk grade from its history."""
    from datetime import UTC, datetime, timedelta

    from billing.ledger import adjust, topup

    with psycopg.connect(db_url) as conn:
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for h in range(1, 49):  # two days of 0.50 yuan an hour
            s = start - timedelta(hours=h)
            conn.execute(
                "INSERT INTO billing_charges (meter_id, interval_start, interval_end,"
                " account_id, kwh, exact, revision) VALUES (%s, %s, %s, %s, 1, 0.5, %s)",
                (fleet.meters[0], s, s + timedelta(hours=1), fleet.account, h))
        conn.execute(
            "INSERT INTO billing_alerts (account_id, kind, threshold_fen, balance_fen, message)"
            " VALUES (%s, 'low_balance', 5000, 3000, 'balance 30.00 is below 50.00')",
            (fleet.account,))
        conn.commit()
    acct = await _json(client, "GET", f"/accounts/{fleet.account}", logins)
    assert acct["days_of_credit"] is not None and Decimal(acct["days_of_credit"]) > 0
    assert acct["risk"]["grade"] == "A"
    assert acct["alerts"][0]["threshold"] == "50.00"
    assert acct["alerts"][0]["message"] == "balance 30.00 is below 50.00"

    with psycopg.connect(db_url) as conn:  # runs dry, then pays late
        adjust(conn, fleet.account, "-40.00", "meter-swap-1", reason="correction")
        topup(conn, fleet.account, "20.00", "bank", "late-1")
        conn.commit()
    acct = await _json(client, "GET", f"/accounts/{fleet.account}", logins)
    assert acct["balance"] == "10.00"
    assert acct["risk"]["times_below_zero"] == 1 and acct["risk"]["late_topups"] == 1
    assert acct["risk"]["grade"] in ("B", "C")
    listed = await _json(client, "GET", "/accounts", logins, params={"q": fleet.meters[0]})
    assert [a["account"] for a in listed["accounts"]] == [fleet.account]
    alerts = await _json(client, "GET", "/alerts", logins, params={"account": fleet.account})
    assert len(alerts["alerts"]) == 1


async def test_other_reads(client: Client, logins: Logins, fleet: Fleet, db_url: str) -> None:
    dead = await _json(client, "GET", "/dead-letters", logins)
    assert dead["total"] == 1
    assert dead["dead_letters"][0]["payload"] == "{not json"
    assert dead["dead_letters"][0]["reason"] == "readings: not valid JSON"
    anomalies = await _json(client, "GET", "/anomalies", logins,
                            params={"meter": fleet.meters[0], "rule": "surge"})
    assert len(anomalies["anomalies"]) == 1
    none = await _json(client, "GET", "/anomalies", logins, params={"meter": fleet.meters[1]})
    assert none["anomalies"] == []
    item = await _json(client, "GET", f"/review-items/{fleet.review_id}", logins)
    assert item["anomalies"][0]["rule"] == "surge"
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO gateway_events (gateway, kind, meter_id, at, detail)"
                     " VALUES (%s, 'comm_error', %s, now(), 'no answer after 3 tries')",
                     (fleet.gateway, fleet.meters[1]))
    gw = await _json(client, "GET", f"/gateways/{fleet.gateway}", logins)
    assert gw["events"][0]["detail"] == "no answer after 3 tries"
    await _json(client, "GET", "/gateways/nope", logins, status=404)
    await _json(client, "GET", "/meters/nope/history", logins, status=404)
    await _json(client, "GET", "/accounts/nope", logins, status=404)
    await _json(client, "GET", "/commands/nope", logins, status=404)


async def test_password_guessing_is_slowed(client: Client, logins: Logins) -> None:
    for _ in range(5):
        await _json(client, "POST", "/session", status=401,
                    json={"name": "admin", "password": "guess"})
    blocked = await client.post("/api/v1/session",
                                json={"name": "admin", "password": logins.passwords["admin"]})
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0
    assert "too many wrong passwords" in (await blocked.json())["error"]["message"]
    # A delay, not a lock: once it has passed, the right password gets in (from another
    # address at once: test_web_door).
    await asyncio.sleep(int(blocked.headers["Retry-After"]))
    ok = await _json(client, "POST", "/session",
                     json={"name": "admin", "password": logins.passwords["admin"]})
    assert ok["user"]["name"] == "admin"


async def test_mass_cutoff_approval(client: Client, logins: Logins, fleet: Fleet,
                                    db_url: str) -> None:
    with psycopg.connect(db_url) as conn:  # as billing's policy records a held mass cut-off
        conn.execute("INSERT INTO billing_cutoff_approvals (group_key, households)"
                     " VALUES ('tower-7', 64)")
        conn.execute("UPDATE billing_accounts SET group_key = 'tower-7',"
                     " awaiting_approval = true WHERE account_id = %s", (fleet.account,))
    waiting = await _json(client, "GET", "/cutoff-approvals", logins)
    assert [(a["group"], a["households"], a["accounts_waiting"])
            for a in waiting["approvals"]] == [("tower-7", 64, 1)]
    await _json(client, "POST", "/cutoff-approvals", logins, role="engineer", status=403,
                json={"group": "tower-7"})
    await _json(client, "POST", "/cutoff-approvals", logins, role="operator", status=404,
                json={"group": "tower-8"})
    done = await _json(client, "POST", "/cutoff-approvals", logins, role="operator",
                       json={"group": "tower-7"})
    assert done["approved_by"] == "web:operator" and done["valid_until"] is not None
    assert (await _json(client, "GET", "/cutoff-approvals", logins))["approvals"] == []
    audit = await _json(client, "GET", "/audit", logins, role="admin",
                        params={"user": "operator"})
    # the refused attempt (404) left no audit row: its transaction was rolled back
    assert [e["action"] for e in audit["entries"]] == ["cutoff.approve"]


async def test_pending_meters_are_listed_for_operators(
    client: Client, logins: Logins, fleet: Fleet, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO pending_meters (meter_id, gateway, site, first_seen, last_seen,"
            " readings) VALUES ('stray-1', %s, 's1', %s, %s, 3)",
            (fleet.gateway, fleet.now, fleet.now))
    listed = (await _json(client, "GET", "/pending-meters", logins))["pending_meters"]
    assert [(p["meter_id"], p["gateway"], p["readings"], p["status"]) for p in listed] == [
        ("stray-1", fleet.gateway, 3, "pending")]
    none = await _json(client, "GET", "/pending-meters", logins, params={"status": "rejected"})
    assert none["pending_meters"] == []
    await _json(client, "GET", "/pending-meters", logins, params={"status": "lost"}, status=400)
