"""``meterhub web``: serve the API and page; ``meterhub web create-user``: make a login."""

from __future__ import annotations

import argparse
import logging
import sys
from decimal import Decimal
from typing import Any

from meterhub import db, settings
from meterhub.metrics import add_metrics_option
from web import keys
from web.auth import ROLES
from web.sessions import SessionPolicy

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
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM, mode 0600)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR[/BITS]",
                   help="a reverse proxy whose X-Forwarded-For/-Proto/-Host are believed "
                        "(repeatable)")
    p.add_argument("--session-key-file",
                   help=f"file (mode 0600) with the key that signs session cookies "
                        f"(default ${keys.KEY_FILE_ENV}, ${keys.KEY_ENV}, or a key "
                        "generated in the data directory)")
    p.add_argument("--session-idle", type=float, default=SessionPolicy().idle_s,
                   metavar="SECONDS", help="a session unused this long ends")
    p.add_argument("--session-max", type=float, default=SessionPolicy().absolute_s,
                   metavar="SECONDS", help="a session ends this long after login, used or not")
    add_metrics_option(p)
    p.add_argument("--max-topup", type=Decimal, default=None, metavar="YUAN",
                   help="largest amount one top-up may credit (default 100000)")
    p.set_defaults(handler=_serve)
    web_sub = p.add_subparsers(dest="web_command", metavar="SUBCOMMAND")

    cu = web_sub.add_parser("create-user", help="create a login; prints its password")
    cu.add_argument("--name", required=True)
    cu.add_argument("--role", required=True, choices=ROLES)
    cu.add_argument("--customer", default=None,
                    help="role customer: the billing customer this login may see")
    cu.add_argument("--token", action="store_true", help="also print a new API token")
    cu.add_argument("--database-url", default=settings.database_url(),
                    help=f"PostgreSQL (default ${settings.DATABASE_URL_ENV})")
    cu.set_defaults(handler=_create_user)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    import billing
    from web._http import DoorSettings
    from web.app import create_app
    from web.server import tls_context

    mqtt = settings.mqtt_from(args.mqtt_url)
    url = settings.require_database_url(args.database_url)  # the launcher may embed one
    if not args.no_migrate:
        db.migrate(url)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise settings.SettingsError("--tls-cert and --tls-key go together")
    context = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    door = DoorSettings(trusted_proxies=tuple(args.trusted_proxy),
                        sessions=SessionPolicy(args.session_idle, args.session_max),
                        max_topup_yuan=args.max_topup or billing.DEFAULT_MAX_TOPUP,
                         session_key_file=args.session_key_file)
    app = create_app(url, mqtt=mqtt, offline_after_s=args.offline_after, door_settings=door)
    if args.metrics:
        from web import metrics

        metrics.install(app, args.metrics)
    scheme = "https" if context else "http"
    print(f"meterhub web: {scheme}://{args.host}:{args.port}/", file=sys.stderr)
    if not _has_users(url):
        print("no logins yet: create one with "
              "'meterhub web create-user --name NAME --role admin'", file=sys.stderr)
    web.run_app(app, host=args.host, port=args.port, print=None, ssl_context=context)
    return 0


def _has_users(url: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM web_users)").fetchone()
    return bool(row and row[0])


def _create_user(args: argparse.Namespace) -> int:
    import billing
    from web import auth, users

    url = settings.require_database_url(args.database_url)  # the launcher may embed one
    db.migrate(url)
    if (args.role == "customer") != (args.customer is not None):
        print("meterhub web create-user: --customer goes with --role customer (and only "
              "with it)", file=sys.stderr)
        return 1
    try:
        password = users.create_user(url, args.name, args.role, customer=args.customer)
    except (auth.AuthError, billing.BillingError) as exc:
        print(f"meterhub web create-user: {exc}", file=sys.stderr)
        return 1
    print(f"user {args.name} ({args.role}) password: {password}")
    if args.token:
        print(f"API token: {users.create_token(url, args.name, 'cli')}")
    return 0
