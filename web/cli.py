"""``meterhub web``: serve the API and page; ``meterhub web create-user``: make a login."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from meterhub import db, settings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("web", help="the web page and HTTP API (and its user admin)",
                       description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--database-url", default=settings.database_url(),
                   help=f"PostgreSQL (default ${settings.DATABASE_URL_ENV} or embedded)")
    p.add_argument("--mqtt-url", default=None,
                   help=f"broker for live gateway status (default ${settings.MQTT_URL_ENV})")
    p.add_argument("--offline-after", type=float, default=60.0,
                   help="seconds of silence before a gateway shows offline")
    p.add_argument("--no-migrate", action="store_true",
                   help="do not apply missing migrations at start")
    p.set_defaults(handler=_serve)
    web_sub = p.add_subparsers(dest="web_command", metavar="SUBCOMMAND")

    cu = web_sub.add_parser("create-user", help="create a login; prints its password")
    cu.add_argument("--name", required=True)
    cu.add_argument("--role", required=True, choices=("viewer", "engineer", "operator", "admin"))
    cu.add_argument("--token", action="store_true", help="also print a new API token")
    cu.add_argument("--database-url", default=settings.database_url(),
                    help=f"PostgreSQL (default ${settings.DATABASE_URL_ENV})")
    cu.set_defaults(handler=_create_user)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from web.app import create_app

    mqtt = settings.mqtt_from(args.mqtt_url)
    url = settings.require_database_url(args.database_url)  # the launcher may embed one
    if not args.no_migrate:
        db.migrate(url)
    app = create_app(url, mqtt=mqtt, offline_after_s=args.offline_after)
    print(f"meterhub web: http://{args.host}:{args.port}/", file=sys.stderr)
    if not _has_users(url):
        print("no logins yet: create one with "
              "'meterhub web create-user --name NAME --role admin'", file=sys.stderr)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0


def _has_users(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM web_users)").fetchone()
    return bool(row and row[0])


def _create_user(args: argparse.Namespace) -> int:
    from web import auth, users

    url = settings.require_database_url(args.database_url)  # the launcher may embed one
    db.migrate(url)
    try:
        password = users.create_user(url, args.name, args.role)
    except auth.AuthError as exc:
        print(f"meterhub web create-user: {exc}", file=sys.stderr)
        return 1
    print(f"user {args.name} ({args.role}) password: {password}")
    if args.token:
        print(f"API token: {users.create_token(url, args.name, 'cli')}")
    return 0
