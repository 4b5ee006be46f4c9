"""Administration: users, API tokens and the audit log of every write made through the web."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import psycopg
from aiohttp import web

from web import auth, database, inputs
from web._http import API, current_user, json_response, requires
from web.errors import BadRequest, Conflict, NotFound

routes = web.RouteTableDef()

_USER = "SELECT id, name, role, disabled, created_at, created_by FROM web_users"


@routes.get(f"{API}/users")
@requires("admin")
async def list_users(request: web.Request) -> web.Response:
    rows = await database.run(
        request, lambda conn: [dict(r) for r in conn.execute(_USER + " ORDER BY name")])
    return json_response({"users": rows})


@routes.post(f"{API}/users")
@requires("admin")
async def create_user(request: web.Request) -> web.Response:
    """A new user with a generated password (shown once in the answer)."""
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("name", "role"))
    name = inputs.text(body.get("name"), "name", max_len=100)
    role = inputs.text(body.get("role"), "role", max_len=20)
    if role not in auth.ROLES:
        raise BadRequest(f"role must be one of {', '.join(auth.ROLES)}")
    assert name is not None
    user = current_user(request)

    def create(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        database.audit(conn, user, "user.create", f"user:{name}", {"role": role})
        try:
            user_id, password = auth.create_user(conn, name, role,  # type: ignore[arg-type]
                                                 created_by=user.name)
        except auth.AuthError as exc:
            raise Conflict(str(exc)) from None
        row = conn.execute(_USER + " WHERE id = %s", (user_id,)).fetchone()
        return {"user": dict(row or {}), "password": password}

    return json_response(await database.run(request, create), status=201)


@routes.patch(API + "/users/{id}")
@requires("admin")
async def update_user(request: web.Request) -> web.Response:
    user_id = inputs.path_id(request)
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("role", "disabled"))
    role = body.get("role")
    if role is not None and role not in auth.ROLES:
        raise BadRequest(f"role must be one of {', '.join(auth.ROLES)}")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise BadRequest("disabled must be true or false")
    if role is None and disabled is None:
        raise BadRequest("send role and/or disabled")
    user = current_user(request)
    if user_id == user.id:
        raise BadRequest("you cannot change your own role or lock yourself out; "
                         "ask another admin")

    def update(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        database.audit(conn, user, "user.update", f"user:{user_id}",
                       {"role": role, "disabled": disabled})
        row = conn.execute(
            "UPDATE web_users SET role = coalesce(%s, role), disabled = coalesce(%s, disabled)"
            " WHERE id = %s RETURNING id, name, role, disabled, created_at, created_by",
            (role, disabled, user_id)).fetchone()
        if row is None:
            raise NotFound(f"no user {user_id}")
        return {"user": dict(row)}

    return json_response(await database.run(request, update))


@routes.get(f"{API}/tokens")
@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    rows = await database.run(request, lambda conn: [dict(r) for r in conn.execute(
        "SELECT t.id, u.name AS user, t.label, t.created_at, t.last_used_at, t.revoked_at"
        " FROM web_tokens t JOIN web_users u ON u.id = t.user_id ORDER BY t.id")])
    return json_response({"tokens": rows})


@routes.post(f"{API}/tokens")
@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    """A new API token for a user; the token is in this answer only (stored hashed)."""
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("user", "label"))
    name = inputs.text(body.get("user"), "user", max_len=100)
    label = inputs.text(body.get("label"), "label", required=False, max_len=200,
                        min_len=0) or ""
    user = current_user(request)

    def create(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute("SELECT id FROM web_users WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no user {name!r}")
        database.audit(conn, user, "token.create", f"user:{name}", {"label": label})
        token_id, token = auth.create_token(conn, row["id"], label)
        return {"id": token_id, "user": name, "label": label, "token": token}

    return json_response(await database.run(request, create), status=201)


@routes.delete(API + "/tokens/{id}")
@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    token_id = inputs.path_id(request)
    user = current_user(request)
    if user.token_id == token_id:
        raise BadRequest("this is the token you are using; revoke it with another login")

    def revoke(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute(
            "UPDATE web_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s"
            " RETURNING id, revoked_at", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"no token {token_id}")
        database.audit(conn, user, "token.revoke", f"token:{token_id}")
        return dict(row)

    return json_response(await database.run(request, revoke))


@routes.get(f"{API}/audit")
@requires("auditor")
async def list_audit(request: web.Request) -> web.StreamResponse:
    """Who did what, when and from where; ``format=csv`` for a spreadsheet or an archive."""
    limit = inputs.query_int(request, "limit", default=100, lo=1, hi=100_000)
    offset = inputs.query_int(request, "offset", default=0, lo=0, hi=1_000_000)
    who = inputs.query_text(request, "user")
    fmt = inputs.query_text(request, "format", choices=("json", "csv"), default="json")
    rows = await database.run(request, _audit_rows, who, limit, offset)
    if fmt == "csv":
        return web.Response(text=_csv(rows), content_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="meterhub-audit.csv"'})
    return json_response({"entries": rows, "limit": limit, "offset": offset})


_AUDIT_COLUMNS = ("id", "at", "user", "role", "source", "action", "target", "detail")


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_AUDIT_COLUMNS)
    for row in rows:
        cells = database.jsonable([row[c] for c in _AUDIT_COLUMNS])
        cells[-1] = json.dumps(cells[-1], sort_keys=True)
        # A cell a spreadsheet would run as a formula is quoted as text (CSV injection).
        writer.writerow(["'" + c if isinstance(c, str) and c and c[0] in "=+-@\t\r" else c
                         for c in cells])
    return out.getvalue()


def _audit_rows(conn: psycopg.Connection[Any], who: str | None, limit: int,
                offset: int) -> list[dict[str, Any]]:
    where, params = ("user_name = %s", [who]) if who else ("true", [])
    return [dict(r) for r in conn.execute(
        f"SELECT id, at, user_name AS user, role, source, action, target, detail"
        f" FROM web_audit WHERE {where} ORDER BY id DESC LIMIT %s OFFSET %s",
        [*params, limit, offset])]
