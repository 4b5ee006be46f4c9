"""The operators' door (issue 13) attacked the way the issue describes: parallel password
guessing, cross-site writes, revoked sessions, odd inputs, weak hashes, readable key files."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from web_helpers import Fleet, Logins, same_origin

from meterhub.security import SecretError
from web import DoorSettings, auth, create_app, keys
from web.sessions import SessionPolicy

Client = TestClient[web.Request, web.Application]
ATTACKER, OTHER_ATTACKER, OFFICE = "203.0.113.9", "203.0.113.10", "198.51.100.7"


@pytest.fixture
async def proxied(db_url: str) -> AsyncIterator[Client]:
    """The app behind a trusted proxy on 127.0.0.1, so X-Forwarded-For picks the address,
    with a short idle expiry for the session tests."""
    door = DoorSettings(trusted_proxies=("127.0.0.1",),
                        sessions=SessionPolicy(idle_s=2.0, absolute_s=3600))
    async with TestClient(TestServer(create_app(db_url, door_settings=door))) as c:
        yield c


async def _login(client: Client, name: str, password: str, address: str = OFFICE,
                 **headers: str) -> Any:
    """A login from ``address``, as a client without a cookie jar: each test request then
    carries the cookie it is given."""
    resp = await client.post("/api/v1/session", json={"name": name, "password": password},
                             headers={"X-Forwarded-For": address, **headers})
    client.session.cookie_jar.clear()
    return resp


def _cookie(resp: Any) -> dict[str, str]:
    return {"Cookie": f"{auth.SESSION_COOKIE}={resp.cookies[auth.SESSION_COOKIE].value}"}


async def test_parallel_guessing_is_throttled_while_the_admin_logs_in_elsewhere(
        proxied: Client, logins: Logins) -> None:
    guesses = await asyncio.gather(*(_login(proxied, "admin", f"guess-{n}", ATTACKER)
                                     for n in range(50)))
    codes = sorted(r.status for r in guesses)
    # Five attempts pass at once, every further one waits a doubling delay: 50 at once get
    # no more tries than 50 in a row would.
    assert codes.count(401) <= 5 and codes.count(429) >= 45 and set(codes) == {401, 429}
    refused = next(r for r in guesses if r.status == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    # The rightful admin, from the office, gets in although the name is under attack.
    ok = await _login(proxied, "admin", logins.passwords["admin"], OFFICE)
    assert ok.status == 200, await ok.text()
    # The attack resumes from another address until the name is throttled again; then each
    # fresh address gets one try at it (a clean address is let through, as the admin was)
    # and is throttled after it.
    again = [(await _login(proxied, "admin", f"again-{n}", OTHER_ATTACKER)).status
             for n in range(6)]
    assert again == [401] * 5 + [429]
    first = await _login(proxied, "admin", "x", "203.0.113.11")
    second = await _login(proxied, "admin", "y", "203.0.113.11")
    assert (first.status, second.status) == (401, 429)
    # X-Forwarded-For from a peer that is not a trusted proxy is not believed.
    assert (await _login(proxied, "viewer", logins.passwords["viewer"], ATTACKER)).status == 429


async def test_forwarded_for_is_ignored_without_a_trusted_proxy(client: Client,
                                                                logins: Logins) -> None:
    for n in range(5):
        await _login(client, "admin", f"guess-{n}", f"192.0.2.{n}")
    # every guess came from 127.0.0.1 whatever the header said: that address is throttled
    resp = await _login(client, "viewer", logins.passwords["viewer"], "192.0.2.99")
    assert resp.status == 429


async def test_cross_site_writes_are_refused(client: Client, logins: Logins,
                                             fleet: Fleet) -> None:
    login = await client.post("/api/v1/session", headers=same_origin(client), json={
        "name": "operator", "password": logins.passwords["operator"]})
    assert login.status == 200
    topup = f"/api/v1/accounts/{fleet.account}/topups"
    body = '{"amount": "5", "channel": "bank", "reference": "csrf"}'
    form = await client.post(topup, data=body, headers={
        **same_origin(client), "Content-Type": "text/plain"})
    assert form.status == 415 and "application/json" in (await form.json())["error"]["message"]
    for headers, why in (({"Origin": "https://evil.example"}, "Origin"),
                         ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
                         ({"Origin": "null"}, "Origin"),
                         ({}, "Origin or Sec-Fetch-Site")):
        resp = await client.post(topup, data=body,
                                 headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 403, headers
        assert why in (await resp.json())["error"]["message"]
    # A login form posted from elsewhere (login CSRF) is refused too.
    foreign = await client.post("/api/v1/session", headers={"Origin": "https://evil.example"},
                                json={"name": "viewer", "password": logins.passwords["viewer"]})
    assert foreign.status == 403
    # The page itself, and an API client with a token, get through.
    for headers in (same_origin(client), {"Sec-Fetch-Site": "same-origin"}):
        resp = await client.post(topup, data=body.replace("csrf", str(headers)),
                                 headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 201, await resp.text()
    client.session.cookie_jar.clear()
    by_token = await client.post(topup, json={"amount": "1", "channel": "bank",
                                              "reference": "tok"},
                                 headers={**logins.auth("operator"),
                                          "Origin": "https://evil.example"})
    assert by_token.status == 201
    plain = await client.post(topup, data=body, headers={**logins.auth("operator"),
                                                          "Content-Type": "text/plain"})
    assert plain.status == 415


async def test_sessions_listed_and_revoked_on_the_next_request(
        proxied: Client, logins: Logins, db_url: str) -> None:
    origin = same_origin(proxied)
    laptop = _cookie(await _login(proxied, "operator", logins.passwords["operator"]))
    phone = _cookie(await _login(proxied, "operator", logins.passwords["operator"],
                                 "192.0.2.50", **{"User-Agent": "phone"}))

    async def me(cookie: dict[str, str]) -> int:
        return (await proxied.get("/api/v1/me", headers=cookie)).status

    listed = await (await proxied.get("/api/v1/sessions", headers=laptop)).json()
    assert len(listed["sessions"]) == 2
    assert [s["current"] for s in listed["sessions"]] == [False, True]
    phone_id = next(s["id"] for s in listed["sessions"] if s["user_agent"] == "phone")
    assert next(s for s in listed["sessions"] if s["id"] == phone_id)["source"] == "192.0.2.50"
    resp = await proxied.delete(f"/api/v1/sessions/{phone_id}", json={},
                                headers={**laptop, **origin})
    assert resp.status == 200
    assert await me(phone) == 401 and await me(laptop) == 200
    # Nobody revokes another user's session but an admin.
    viewer = _cookie(await _login(proxied, "viewer", logins.passwords["viewer"]))
    laptop_id = next(s["id"] for s in listed["sessions"] if s["current"])
    resp = await proxied.delete(f"/api/v1/sessions/{laptop_id}", json={},
                                headers={**viewer, **origin})
    assert resp.status == 404 and await me(laptop) == 200

    # A password change ends the other sessions, not the one changing it.
    other = _cookie(await _login(proxied, "operator", logins.passwords["operator"]))
    new = "correct horse battery staple"
    wrong = await proxied.post("/api/v1/me/password", headers={**laptop, **origin},
                               json={"current": "nope", "new": new})
    assert wrong.status == 403
    changed = await proxied.post("/api/v1/me/password", headers={**laptop, **origin},
                                 json={"current": logins.passwords["operator"], "new": new})
    assert (await changed.json())["sessions_ended"] == 1
    assert await me(other) == 401 and await me(laptop) == 200

    # An admin ends all of a user's sessions; log out everywhere ends one's own.
    with psycopg.connect(db_url) as conn:
        operator_id = conn.execute("SELECT id FROM web_users WHERE name = 'operator'"
                                   ).fetchone()[0]  # type: ignore[index]
    resp = await proxied.delete(f"/api/v1/users/{operator_id}/sessions",
                                headers=logins.auth("admin"))
    assert (await resp.json())["sessions_ended"] == 1 and await me(laptop) == 401
    resp = await proxied.post("/api/v1/me/logout-all", json={},
                              headers={**viewer, **origin})
    assert resp.status == 200 and await me(viewer) == 401

    # Idle expiry (2 s here).
    idle = _cookie(await _login(proxied, "engineer", logins.passwords["engineer"]))
    assert await me(idle) == 200
    await asyncio.sleep(2.5)
    assert await me(idle) == 401
    # A forged or tampered cookie is refused before any lookup.
    assert await me({"Cookie": f"{auth.SESSION_COOKIE}=abc.def"}) == 401
    with psycopg.connect(db_url) as conn:
        actions = {r[0] for r in conn.execute("SELECT action FROM web_audit")}
    assert {"session.login", "session.revoke", "user.password", "session.revoke_all"} <= actions


async def test_inputs_are_checked_against_the_document(client: Client, logins: Logins,
                                                       fleet: Fleet) -> None:
    admin = logins.auth("admin")
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("GET", "/meters/" + "m" * 65, {}, "meter: must be at most 64"),
        ("GET", "/accounts/a%20b", {}, "account: must be letters, digits"),
        ("GET", "/commands", {"params": {"meter": "m'; drop"}}, "meter: must be letters"),
        ("POST", "/commands", {"json": {"meter": "m" * 65, "action": "cutoff"}},
         "meter: must be at most 64"),
        ("POST", "/commands", {"json": {"meter": "m", "action": 1}}, "action: must be a string"),
        ("POST", "/commands", {"data": b"\xff\xfe", "headers": {
            "Content-Type": "application/json"}}, "body: not valid JSON"),
        ("POST", "/users", {"json": {"name": "x"}}, "role: is required"),
        ("PATCH", "/users/1", {"json": {}}, "body: needs at least 1"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "١٠", "channel": "bank", "reference": "r"}}, "amount: must be"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "1_0.00", "channel": "bank", "reference": "r"}}, "amount: must be"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": "1e30", "channel": "bank", "reference": "r"}}, "amount: must be"),
        ("POST", f"/accounts/{fleet.account}/topups",
         {"json": {"amount": 100001, "channel": "bank", "reference": "r"}}, "amount: must be"),
    ]
    for method, path, kw, words in cases:
        headers = {**admin, **kw.pop("headers", {})}
        resp = await client.request(method, f"/api/v1{path}", headers=headers, **kw)
        body = await resp.json()
        assert resp.status == 400, (path, body)
        assert words in body["error"]["message"], (path, kw, body)
        assert body["error"]["details"]["field"] in words


async def test_auditor_reads_and_exports_the_audit_log(client: Client, logins: Logins,
                                                       fleet: Fleet) -> None:
    topup = await client.post(f"/api/v1/accounts/{fleet.account}/topups",
                              headers=logins.auth("operator"),
                              json={"amount": "12.50", "channel": "bank", "reference": "a-1"})
    assert topup.status == 201
    await client.post("/api/v1/session", json={"name": "nobody", "password": "x"})
    assert (await client.get("/api/v1/audit", headers=logins.auth("viewer"))).status == 403
    assert (await client.get("/api/v1/audit", headers=logins.auth("operator"))).status == 403
    entries = (await (await client.get("/api/v1/audit", headers=logins.auth("auditor"))
                      ).json())["entries"]
    by_action = {e["action"]: e for e in entries}
    assert by_action["account.topup"]["user"] == "operator"
    assert by_action["account.topup"]["source"] == "127.0.0.1"
    assert by_action["session.fail"]["target"] == "user:nobody"
    resp = await client.get("/api/v1/audit", params={"format": "csv"},
                            headers=logins.auth("auditor"))
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert {r["action"] for r in rows} >= {"account.topup", "session.fail"}
    assert next(r for r in rows if r["action"] == "account.topup")["source"] == "127.0.0.1"
    # the auditor reads like a viewer, and changes nothing
    assert (await client.get("/api/v1/accounts", headers=logins.auth("auditor"))).status == 200
    assert (await client.post(f"/api/v1/accounts/{fleet.account}/topups", json={
        "amount": "1", "channel": "bank", "reference": "a-2"},
        headers=logins.auth("auditor"))).status == 403


def test_passwords_are_hashed_at_current_cost_and_old_hashes_upgraded(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (auth.ScryptParams().n, auth.ScryptParams().r, auth.ScryptParams().p) == (
        2**17, 8, 1)
    monkeypatch.setattr(auth, "SCRYPT", auth.ScryptParams())
    real = auth.hash_password("pw")  # N=2^17 needs maxmem set above the 32 MiB default
    assert real.startswith("scrypt$131072$8$1$") and auth.check_password("pw", real)
    monkeypatch.setattr(auth, "SCRYPT", auth.ScryptParams(n=2**10))
    with psycopg.connect(db_url) as conn:
        user_id, password = auth.create_user(conn, "old", "viewer")
        monkeypatch.setattr(auth, "SCRYPT", auth.ScryptParams(n=2**11))
        auth.login(conn, "old", password)
        stored = conn.execute("SELECT password_hash FROM web_users WHERE id = %s",
                              (user_id,)).fetchone()[0]  # type: ignore[index]
        assert stored.startswith("scrypt$2048$8$1$")
        monkeypatch.setattr(auth, "SCRYPT", auth.ScryptParams(n=2**10))
        auth.login(conn, "old", password)  # a stronger hash is never weakened
        assert conn.execute("SELECT password_hash FROM web_users WHERE id = %s",
                            (user_id,)).fetchone()[0] == stored  # type: ignore[index]


def test_session_key_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "session.key"
    key.write_text("k" * 48 + "\n")
    key.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        keys.session_key(str(key), environ={})
    key.chmod(0o600)
    assert keys.session_key(str(key), environ={}) == b"k" * 48
    assert keys.session_key(environ={keys.KEY_ENV: "e" * 40}) == b"e" * 40
    with pytest.raises(SecretError, match="shorter"):
        keys.session_key(environ={keys.KEY_ENV: "short"})
    made = keys.session_key(environ={}, data_dir=tmp_path)
    path = tmp_path / keys.GENERATED_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(made) >= 32
    assert keys.session_key(environ={}, data_dir=tmp_path) == made  # stable across restarts
