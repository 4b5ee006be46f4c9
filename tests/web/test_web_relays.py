"""The page and API show a relay as it truly is (issue 17 item 4): read from the meter, or
"unknown", or "none" for a meter without one; an account is "cut" only when every relay
was read back open."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient
from web_helpers import Fleet, Logins

Client = TestClient[web.Request, web.Application]


async def _get(client: Client, path: str, logins: Logins) -> Any:
    resp = await client.get(f"/api/v1{path}", headers=logins.auth("viewer"))
    assert resp.status == 200
    return await resp.json()


async def test_fleet_relay_column_shows_the_truth(client: Client, logins: Logins,
                                                  fleet: Fleet, db_url: str) -> None:
    first, second, third = fleet.meters
    with psycopg.connect(db_url) as conn:
        # first: read closed with a reading, then read back open after billing's cut-off
        conn.execute("UPDATE meters SET relay = 'closed', relay_at = %s WHERE meter_id = %s",
                     (fleet.now - timedelta(minutes=5), first))
        conn.execute("UPDATE billing_meters SET relay_wanted = 'open', relay_reported = 'open',"
                     " relay_reported_at = %s WHERE meter_id = %s", (fleet.now, first))
        # second: its gateway reports it has no relay; third: never read
        conn.execute("UPDATE meters SET relay = NULL, relay_at = NULL WHERE meter_id = %s",
                     (third,))
        health = {"meters": {second: {"capabilities": {"relay": False, "time_sync": True,
                                                       "clock": True}}}}
        conn.execute("UPDATE gateways SET health = %s WHERE gateway = %s",
                     (json.dumps(health), fleet.gateway))
        conn.execute("INSERT INTO clock_checks (meter_id, read_at, meter_clock, drift_s, "
                     "gateway) VALUES (%s, %s, %s, 95.0, %s)",
                     (second, fleet.now, fleet.now + timedelta(seconds=95), fleet.gateway))
    rows = {m["meter"]: m for m in (await _get(client, "/meters", logins))["meters"]}
    assert rows[first]["relay"] == "open"
    assert (rows[second]["relay"], rows[second]["relay_capable"]) == ("none", False)
    assert rows[second]["clock_drift_s"] == 95.0
    assert rows[third]["relay"] == "unknown"
    assert (await _get(client, f"/meters/{third}", logins))["relay"] == "unknown"


async def test_an_account_is_cut_only_with_a_relay_read_back_open(
    client: Client, logins: Logins, fleet: Fleet, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE billing_accounts SET phase = 'cut' WHERE account_id = %s",
                     (fleet.account,))
        conn.execute("UPDATE billing_meters SET relay_wanted = 'open' WHERE account_id = %s",
                     (fleet.account,))
    acc = await _get(client, f"/accounts/{fleet.account}", logins)
    assert (acc["phase"], acc["cut_off"], acc["supply"]) == ("cut", True, "unknown")
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE billing_meters SET relay_reported = 'open', relay_reported_at = "
                     "now() WHERE account_id = %s", (fleet.account,))
    assert (await _get(client, f"/accounts/{fleet.account}", logins))["supply"] == "off"
