"""Logging in and out of the page, "who am I", one's sessions and password.

A login is throttled by source address and by account name (``web.throttle``): a guesser
from one address is slowed exponentially, and a name under attack from many addresses still
lets its owner in from an address with no failures. A login opens a server-side session
(``web.sessions``) that its owner can list and revoke; an admin can revoke anyone's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from aiohttp import web

from meterhub.i18n import _
from web import auth, database, door, inputs, sessions, throttle
from web._http import (
    API,
    SESSION_KEY_KEY,
    SETTINGS_KEY,
    USER_KEY,
    DoorSettings,
    current_user,
    json_response,
    requires,
    source,
)
from web.errors import BadRequest, Forbidden, NotFound, TooManyRequests, Unauthorized

routes = web.RouteTableDef()

# scrypt at N=2^17 takes 128 MiB and a good fraction of a second: a few at a time at most,
# so a burst of logins queues instead of exhausting memory.
_HASHING = asyncio.Semaphore(2)


def _user_json(user: auth.User) -> dict[str, object]:
    return {"id": user.id, "name": user.name, "role": user.role, "via": user.via}


def _refuse(wait_s: float, what: str) -> TooManyRequests:
    after = int(wait_s) + 1
    return TooManyRequests(_("too many wrong passwords {what}; try again in {after} s",
                             what=what, after=after),
                           headers={"Retry-After": str(after)})


def _admit(conn: psycopg.Connection[Any], address: str, name: str,
           policy: throttle.ThrottlePolicy) -> None:
    """Count this attempt against the address and the name, or refuse it (429).

    The name's delay is skipped for an address with no failures of its own: the rightful
    operator, elsewhere, still gets in while someone guesses at their name; each address of
    a guesser gets one such try per delay, as its first failure makes it not clean."""
    by_addr = throttle.claim(conn, "addr", address, policy)
    if not by_addr.granted:
        raise _refuse(by_addr.retry_after_s, _("from this address"))
    by_name = throttle.claim(conn, "name", name.lower(), policy)
    if not by_name.granted and by_addr.failures > 1:
        raise _refuse(by_name.retry_after_s, _("for {name!r}", name=name))


def _login(conn: psycopg.Connection[Any], name: str, password: str, address: str,
           user_agent: str, door_settings: DoorSettings) -> tuple[auth.User, str]:
    """Check the password, clear the throttle, open a session and audit the login."""
    try:
        user = auth.login(conn, name, password)
    except auth.AuthError:
        database.audit_row(conn, name, "", address, "session.fail", f"user:{name}")
        conn.commit()
        raise
    throttle.clear(conn, "addr", address)
    throttle.clear(conn, "name", name.lower())
    throttle.forget_old(conn, door_settings.throttle)
    session_id, token = sessions.open_session(conn, user, door_settings.sessions, address,
                                              user_agent)
    database.audit_row(conn, user.name, user.role, address, "session.login",
                       f"session:{session_id}")
    return user, token


@routes.post(f"{API}/session")
async def login(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("name", "password"))
    name = inputs.text(body.get("name"), "name", max_len=100)
    password = inputs.text(body.get("password"), "password", max_len=200)
    assert name is not None and password is not None
    settings = request.app[SETTINGS_KEY]
    address = source(request)
    await database.run(request, _admit, address, name, settings.door.throttle)
    async with _HASHING:
        try:
            user, token = await database.run(
                request, _login, name, password, address,
                request.headers.get("User-Agent", ""), settings.door)
        except auth.AuthError as exc:
            raise Unauthorized(str(exc)) from None
    response = json_response({"user": _user_json(user)})
    response.set_cookie(
        auth.SESSION_COOKIE, auth.sign_session(request.app[SESSION_KEY_KEY], token),
        max_age=int(settings.door.sessions.absolute_s), httponly=True, samesite="Strict",
        path="/", secure=settings.secure_cookies or door.is_https(request,
                                                                  settings.door.proxies),
    )
    return response


@routes.delete(f"{API}/session")
async def logout(request: web.Request) -> web.Response:
    """Ends this session on the server too, so a copied cookie stops working."""
    user = request.get(USER_KEY)
    if user is not None and user.session_id is not None:
        await database.run(request, _revoke_one, user, user.session_id)
    response = json_response({"ok": True})
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    return response


@routes.get(f"{API}/me")
async def me(request: web.Request) -> web.Response:
    return json_response({"user": _user_json(current_user(request))})


@routes.post(f"{API}/me/password")
@requires("viewer")
async def change_password(request: web.Request) -> web.Response:
    """A new password, given the current one; every other session of the user ends."""
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("current", "new"))
    current = inputs.text(body.get("current"), "current", max_len=200)
    new = inputs.text(body.get("new"), "new", max_len=200)
    assert current is not None and new is not None
    if len(new) < 12:
        raise BadRequest(_("new: a password needs at least 12 characters"))
    user = current_user(request)

    def change(conn: psycopg.Connection[Any]) -> int:
        try:
            auth.login(conn, user.name, current)
        except auth.AuthError:
            raise Forbidden(_("current: that is not your current password")) from None
        auth.set_password(conn, user.id, new)
        ended = sessions.revoke(conn, by=user.name, user_id=user.id, keep=user.session_id)
        database.audit(conn, user, "user.password", f"user:{user.name}",
                       {"sessions_ended": ended})
        return ended

    async with _HASHING:
        ended = await database.run(request, change)
    return json_response({"ok": True, "sessions_ended": ended})


@routes.get(f"{API}/sessions")
@requires("viewer")
async def list_sessions(request: web.Request) -> web.Response:
    """The caller's live sessions (the one asking is marked ``current``)."""
    user = current_user(request)
    rows = await database.run(request, sessions.list_sessions, user.id,
                              request.app[SETTINGS_KEY].door.sessions)
    for row in rows:
        row["current"] = row["id"] == user.session_id
    return json_response({"sessions": rows})


@routes.delete(API + "/sessions/{id}")
@requires("viewer")
async def revoke_session(request: web.Request) -> web.Response:
    """End one session: one's own, or anyone's for an admin."""
    session_id = inputs.path_id(request)
    user = current_user(request)
    await database.run(request, _revoke_one, user, session_id)
    return json_response({"revoked": session_id})


def _revoke_one(conn: psycopg.Connection[Any], user: auth.User, session_id: int) -> None:
    owner = sessions.session_owner(conn, session_id)
    if owner is None or (owner != user.id and not user.can("admin")):
        raise NotFound(_("no session {id} of yours", id=session_id))
    sessions.revoke(conn, by=user.name, session_id=session_id)
    database.audit(conn, user, "session.revoke", f"session:{session_id}",
                   {"user_id": owner})


@routes.post(f"{API}/me/logout-all")
@requires("viewer")
async def revoke_all(request: web.Request) -> web.Response:
    """Log out everywhere: every session of the caller, this one included."""
    user = current_user(request)
    ended = await database.run(request, _revoke_user, user, user.id, user.name)
    response = json_response({"sessions_ended": ended})
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    return response


@routes.delete(API + "/users/{id}/sessions")
@requires("admin")
async def revoke_user_sessions(request: web.Request) -> web.Response:
    """An admin ends every session of a user (a lost laptop, a person leaving)."""
    user_id = inputs.path_id(request)
    user = current_user(request)

    def revoke(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT name FROM web_users WHERE id = %s", (user_id,)).fetchone()
        if row is None:
            raise NotFound(_("no user {id}", id=user_id))
        return _revoke_user(conn, user, user_id, row["name"])

    return json_response({"sessions_ended": await database.run(request, revoke)})


def _revoke_user(conn: psycopg.Connection[Any], user: auth.User, user_id: int,
                 name: str) -> int:
    ended = sessions.revoke(conn, by=user.name, user_id=user_id)
    database.audit(conn, user, "session.revoke_all", f"user:{name}", {"ended": ended})
    return ended
