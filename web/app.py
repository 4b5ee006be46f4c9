"""The aiohttp application: middlewares (errors, who is asking), routes, page, live feed.

Every answer under ``/api/v1`` is JSON; failures are ``{"error": {"status", "message"}}``
with a message a person can act on. Bad input is a 400, never a 500: inputs are checked at
the door (``web.inputs``) and, as a safety net, PostgreSQL data errors caused by a value
also become 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import psycopg
from aiohttp import web

from meterhub import i18n
from meterhub.i18n import _
from meterhub.settings import MqttSettings
from web import (
    auth,
    database,
    door,
    keys,
    openapi,
    routes_accounts,
    routes_admin,
    routes_collection,
    routes_customer,
    routes_fleet,
    routes_review,
    routes_session,
    sessions,
    validation,
)
from web._http import (
    API,
    SESSION_KEY_KEY,
    SETTINGS_KEY,
    USER_KEY,
    DoorSettings,
    Handler,
    WebSettings,
    json_response,
    source,
)
from web.auth import User
from web.errors import ApiError, Unauthorized, Unavailable
from web.live import LIVE_KEY, LiveHub
from web.openapi import openapi_handler

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


# ---------------------------------------------------------------------------- middlewares

_PUBLIC = {f"{API}/openapi.json", f"{API}/health", f"{API}/session"}


@web.middleware
async def language_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer in the asker's language (Accept-Language; the page sends its chosen one):
    the messages of errors raised while handling the request are looked up in it."""
    lang = i18n.negotiate(request.headers.get("Accept-Language"))
    with i18n.language(lang):
        response = await handler(request)
    if request.path.startswith(API) and not response.prepared:
        response.headers["Content-Language"] = lang
        response.headers["Vary"] = "Accept-Language"
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into JSON with a human message; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith(API):
            raise
        message = {404: _("no such endpoint: {method} {path}", method=request.method,
                          path=request.path),
                   405: _("{method} is not allowed on {path}", method=request.method,
                          path=request.path)}.get(exc.status, exc.reason)
        return web.json_response(
            {"error": {"status": exc.status, "message": message}}, status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k == "Allow"},
        )
    except psycopg.errors.UndefinedTable as exc:
        log.warning("missing table", exc_info=True)
        err = Unavailable(_("this needs a table the database does not have yet ({detail}); "
                            "apply the migrations (meterhub collector migrate)",
                            detail=exc.diag.message_primary))
        return web.json_response(err.body(), status=err.status)
    except psycopg.errors.DataError as exc:
        # A value PostgreSQL refused (out of range, bad encoding): the client's input.
        return web.json_response(
            {"error": {"status": 400, "message": _("invalid value: {detail}",
                                                   detail=exc.diag.message_primary)}},
            status=400,
        )
    except psycopg.OperationalError:
        log.exception("database unavailable")
        err = Unavailable(_("the database is not reachable right now; try again in a moment"))
        return web.json_response(err.body(), status=err.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response(
            {"error": {"status": 500, "message": _("internal error; it has been logged")}},
            status=500,
        )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who is asking: a Bearer token or the session cookie. Unknown credentials are a 401
    (not silently anonymous) so a client with a revoked token learns why. State-changing
    requests must be JSON, and from our own page when a browser (cookie, Origin or
    Sec-Fetch-Site) is involved; API-token clients have no ambient credential to abuse."""
    if not request.path.startswith(API):
        return await handler(request)
    door_settings = request.app[SETTINGS_KEY].door
    header = request.headers.get("Authorization", "")
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    user: User | None = None
    if header:
        scheme, _sep, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(_("Authorization must be 'Bearer <token>'"))
        user = await database.run(request, auth.user_by_token, token.strip())
        if user is None:
            raise Unauthorized(_("this API token is unknown or revoked"))
    elif cookie:
        session_token = auth.verify_session(request.app[SESSION_KEY_KEY], cookie)
        if session_token is not None:
            user = await database.run(request, sessions.user_by_session, session_token,
                                      door_settings.sessions)
    if user is not None:
        user = dataclasses.replace(user, source=source(request))
    request[USER_KEY] = user
    if user is None and request.path not in _PUBLIC:
        raise Unauthorized(_("log in first (the session may have expired or been revoked), "
                             "or send an API token as 'Authorization: Bearer ...'"))
    door.check_json_content_type(request, with_cookie=bool(cookie) and not header)
    if not header and (cookie or "Origin" in request.headers
                       or "Sec-Fetch-Site" in request.headers):
        door.check_same_site(request, door_settings.proxies)
    return await handler(request)


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Conservative browser headers: the page loads nothing from elsewhere."""
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith(API):
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        )
    return response


# ---------------------------------------------------------------------------- the app


def create_app(
    database_url: str,
    *,
    mqtt: MqttSettings | None = None,
    live_interval_s: float = 1.0,
    offline_after_s: float = 60.0,
    secure_cookies: bool = False,
    door_settings: DoorSettings | None = None,
) -> web.Application:
    """The whole web service; the database must already be migrated (``meterhub.db``)."""
    settings = WebSettings(database_url, mqtt, live_interval_s, offline_after_s, secure_cookies,
                           door_settings or DoorSettings())
    app = web.Application(
        middlewares=[language_middleware, headers_middleware, error_middleware,
                     auth_middleware, validation.middleware],
        client_max_size=1024 * 1024,
    )
    app[SETTINGS_KEY] = settings
    app[validation.VALIDATOR_KEY] = validation.Validator(openapi.DOCUMENT)
    app[database.POOL_KEY] = database.make_pool(database_url)
    app[LIVE_KEY] = LiveHub(app, settings.live_interval_s, settings.offline_after_s, mqtt)
    app.on_startup.append(_start)
    app.on_shutdown.append(_stop_live)
    app.on_cleanup.append(_close_pool)

    app.router.add_get(f"{API}/openapi.json", openapi_handler)
    app.router.add_get(f"{API}/health", _health)
    for module in (routes_session, routes_fleet, routes_review, routes_accounts, routes_admin,
                   routes_collection, routes_customer):
        app.router.add_routes(module.routes)
    app.router.add_get(f"{API}/live", app[LIVE_KEY].handler)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    return app


async def _start(app: web.Application) -> None:
    pool = app[database.POOL_KEY]
    await asyncio.to_thread(pool.open, wait=True, timeout=15)
    app[SESSION_KEY_KEY] = await asyncio.to_thread(keys.session_key,
                                                   app[SETTINGS_KEY].door.session_key_file)
    await app[LIVE_KEY].start()


async def _stop_live(app: web.Application) -> None:
    await app[LIVE_KEY].stop()


async def _close_pool(app: web.Application) -> None:
    await asyncio.to_thread(app[database.POOL_KEY].close)


async def _health(request: web.Request) -> web.Response:
    """Liveness for load balancers: answers only when the database does."""
    await database.run(request, lambda conn: conn.execute("SELECT 1"))
    return json_response({"status": "ok"})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Cache-Control": "no-cache"})
