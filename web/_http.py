"""What every route module shares: the API prefix, app and request keys, the JSON answer,
and who is asking (``current_user``, ``requires``).

Route modules and the live feed depend on this module; the app factory (``web.app``)
depends on them. Nothing here imports a route module, so web/ has no import loop.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

import billing
from meterhub.i18n import _
from meterhub.settings import MqttSettings
from web import database, door, inputs
from web.auth import Role, User
from web.errors import Forbidden, Unauthorized
from web.sessions import SessionPolicy
from web.throttle import ThrottlePolicy

API = "/api/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class DoorSettings:
    """How the web lets people in: proxies, sessions, login throttling, top-up bound, key."""

    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-* we believe
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    max_topup_yuan: Decimal = billing.DEFAULT_MAX_TOPUP  # yuan in one top-up
    session_key_file: str | None = None  # else web.keys' environment variables / data dir

    @property
    def proxies(self) -> tuple[door.Network, ...]:
        return door.trusted_networks(self.trusted_proxies)


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Knobs of one web process."""

    database_url: str
    mqtt: MqttSettings | None = None
    live_interval_s: float = 1.0  # how often the live feed polls the database
    offline_after_s: float = 60.0  # a gateway silent this long shows offline
    secure_cookies: bool = False  # always mark the cookie Secure (else: when HTTPS is seen)
    door: DoorSettings = field(default_factory=DoorSettings)


SETTINGS_KEY: web.AppKey[WebSettings] = web.AppKey("settings", WebSettings)
SESSION_KEY_KEY: web.AppKey[bytes] = web.AppKey("session_key", bytes)
USER_KEY: web.RequestKey[User | None] = web.RequestKey("user", User)  # type: ignore[arg-type]


def json_response(data: Any, status: int = 200) -> web.Response:
    """Rows as JSON the way the whole API writes them (see :func:`web.database.jsonable`)."""
    return web.json_response(database.jsonable(data), status=status)


def requires(role: Role) -> Callable[[Handler], Handler]:
    """Only users with at least ``role`` may call the handler (401 without a login)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            user = current_user(request)
            if not user.can(role):
                raise Forbidden(_("this needs the {role} role; {name} is {user_role}", role=role,
                                  name=user.name, user_role=user.role))
            return await handler(request)

        checked.required_role = role  # type: ignore[attr-defined]
        return checked

    return wrap


def current_user(request: web.Request) -> User:
    """The logged-in user (set by the auth middleware); a 401 when nobody is."""
    user = request.get(USER_KEY)
    if user is None:
        raise Unauthorized(_("log in first, or send an API token as "
                           "'Authorization: Bearer ...'"))
    assert isinstance(user, User)
    return user


def source(request: web.Request) -> str:
    """The client's address as the audit log and the login throttle see it."""
    return door.client_address(request, request.app[SETTINGS_KEY].door.proxies)


def page(request: web.Request, default: int = 100) -> tuple[int, int]:
    """``limit`` and ``offset`` of a list endpoint, checked."""
    return (inputs.query_int(request, "limit", default=default, lo=1, hi=1000),
            inputs.query_int(request, "offset", default=0, lo=0, hi=1_000_000))
