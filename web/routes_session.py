"""Logging in and out of the page, and "who am I" for any client."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from aiohttp import web

from web import auth, database, inputs
from web._http import API, SESSION_KEY_KEY, SETTINGS_KEY, current_user, json_response
from web.errors import TooManyRequests, Unauthorized

routes = web.RouteTableDef()

MAX_FAILURES = 5
FAILURE_WINDOW_S = 300.0


class LoginThrottle:
    """Slows password guessing: after MAX_FAILURES wrong passwords for one name within the
    window, that name is refused until the oldest failure ages out. Per process."""

    def __init__(self) -> None:
        self._failures: defaultdict[str, deque[float]] = defaultdict(deque)

    def wait_s(self, name: str, now: float) -> float:
        q = self._failures.get(name.lower())
        while q and now - q[0] > FAILURE_WINDOW_S:
            q.popleft()
        if q is None or len(q) < MAX_FAILURES:
            return 0.0
        return FAILURE_WINDOW_S - (now - q[0])

    def failed(self, name: str, now: float) -> None:
        self._failures[name.lower()].append(now)

    def succeeded(self, name: str) -> None:
        self._failures.pop(name.lower(), None)


THROTTLE_KEY: web.AppKey[LoginThrottle] = web.AppKey("login_throttle", LoginThrottle)


def _user_json(user: auth.User) -> dict[str, object]:
    return {"id": user.id, "name": user.name, "role": user.role, "via": user.via}


@routes.post(f"{API}/session")
async def login(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("name", "password"))
    name = inputs.text(body.get("name"), "name", max_len=100)
    password = inputs.text(body.get("password"), "password", max_len=200)
    assert name is not None and password is not None
    throttle = request.app[THROTTLE_KEY]
    wait = throttle.wait_s(name, time.monotonic())
    if wait > 0:
        raise TooManyRequests(f"too many wrong passwords for {name!r}; try again in "
                              f"{int(wait) + 1} s", headers={"Retry-After": str(int(wait) + 1)})
    try:
        user = await database.run(request, auth.login, name, password)
    except auth.AuthError as exc:
        throttle.failed(name, time.monotonic())
        raise Unauthorized(str(exc)) from None
    throttle.succeeded(name)
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
