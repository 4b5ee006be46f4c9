"""Logging in and out of the page, and "who am I" for any client."""

from __future__ import annotations

from aiohttp import web

from web import auth, database, inputs
from web.app import API, SESSION_KEY_KEY, SETTINGS_KEY, current_user, json_response
from web.errors import Unauthorized

routes = web.RouteTableDef()


def _user_json(user: auth.User) -> dict[str, object]:
    return {"id": user.id, "name": user.name, "role": user.role, "via": user.via}


@routes.post(f"{API}/session")
async def login(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("name", "password"))
    name = inputs.text(body.get("name"), "name", max_len=100)
    password = inputs.text(body.get("password"), "password", max_len=200)
    assert name is not None and password is not None
    try:
        user = await database.run(request, auth.login, name, password)
    except auth.AuthError as exc:
        raise Unauthorized(str(exc)) from None
    response = json_response({"user": _user_json(user)})
    response.set_cookie(
        auth.SESSION_COOKIE, auth.sign_session(request.app[SESSION_KEY_KEY], user.id),
        max_age=auth.SESSION_TTL_S, httponly=True, samesite="Strict", path="/",
        secure=request.app[SETTINGS_KEY].secure_cookies,
    )
    return response


@routes.delete(f"{API}/session")
async def logout(request: web.Request) -> web.Response:
    response = json_response({"ok": True})
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    return response


@routes.get(f"{API}/me")
async def me(request: web.Request) -> web.Response:
    return json_response({"user": _user_json(current_user(request))})
