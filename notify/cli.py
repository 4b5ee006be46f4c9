"""``meterhub notify run | check | jobs``: deliver billing's notices, check a config, list
deliveries (``--state given_up``: notices staff must deliver by hand)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from meterhub import db, settings
from meterhub.supervise import run_until_signalled
from notify import queue
from notify.config import NotifyConfig
from notify.service import NotifyService


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("notify", help="deliver notices to customers")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"PostgreSQL conninfo (default ${settings.DATABASE_URL_ENV})",
    )
    sub = parser.add_subparsers(dest="notify_command", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="deliver due notices until interrupted")
    run.add_argument("--config", type=Path, required=True, help="notify.toml")
    run.add_argument("--migrate", action="store_true", help="apply migrations first")
    run.set_defaults(handler=_run)
    check = sub.add_parser("check", help="check a notify.toml (secrets included) and exit")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=_check)
    jobs = sub.add_parser("jobs", help="recent deliveries and their state")
    jobs.add_argument("--state", choices=("pending", "done", "given_up"), default=None)
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=_jobs)


def _run(args: argparse.Namespace) -> int:
    config = NotifyConfig.load(args.config)
    url = settings.require_database_url(args.database_url)
    if args.migrate:
        db.migrate(url)
    service = NotifyService(config, url)
    run_until_signalled(service.run)
    s = service.stats
    print(
        json.dumps(
            {
                "delivered": s.delivered,
                "webhooks_sent": s.webhooks_sent,
                "retries": s.retries,
                "dead_contacts": s.dead_contacts,
                "given_up": s.given_up,
                "deferred": s.deferred,
                "task_restarts": s.task_restarts,
            }
        )
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    config = NotifyConfig.load(args.config)
    channels = [c for c in ("email", "sms", "wechat") if getattr(config, c) is not None]
    print(
        f"{args.config}: ok; channels {', '.join(channels) or 'none'}; "
        f"webhooks {', '.join(w.name for w in config.webhooks) or 'none'}"
    )
    return 0


def _jobs(args: argparse.Namespace) -> int:
    url = settings.require_database_url(args.database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = queue.jobs(conn, args.state, args.limit)
    cols = ("notice", "target", "state", "channel", "provider_id", "last_error", "finished")
    if args.json:
        print(
            json.dumps(
                [dict(zip(cols, r, strict=True)) for r in rows],
                default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
            )
        )
        return 0
    for r in rows:
        print("  ".join("-" if v is None else str(v) for v in r))
    return 0
