"""``meterhub collector run | migrate | revalidate | review``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.config import CollectorConfig
from meterhub import db, settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("collector", help="MQTT ingest, validation, review queue")
    sub = parser.add_subparsers(dest="collector_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="consume readings until interrupted")
    _common(run)
    run.add_argument("--group", default="collectors",
                     help="MQTT 5 shared-subscription group (default: collectors)")
    run.add_argument("--no-share", action="store_true",
                     help="plain MQTT 3.1.1 subscription (brokers without $share, e.g. amqtt)")
    run.add_argument("--site", default="+", help="only this site's topics (default: all)")
    run.add_argument("--client-id", help="stable MQTT client id (default: per host)")
    run.add_argument("--migrate", action="store_true", help="apply migrations first")
    run.add_argument("--validate-every", type=float, default=5.0, metavar="SECONDS",
                     help="continuous validation period; 0 turns it off")
    run.set_defaults(handler=_run)

    migrate = sub.add_parser("migrate", help="apply the versioned SQL migrations")
    migrate.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    migrate.set_defaults(handler=_migrate)

    reval = sub.add_parser("revalidate", help="validate stored readings again (batch)")
    reval.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    reval.add_argument("--since", required=True, type=_since,
                       help="ISO date/time (UTC if no zone) or a span back: 7d, 12h")
    reval.add_argument("--meter", action="append", help="only this meter (repeatable)")
    reval.add_argument("--interval", type=int, default=900, help="interval length, s")
    reval.set_defaults(handler=_revalidate)

    review = sub.add_parser("review", help="list open review items or decide one")
    review.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    review.add_argument("item", nargs="?", type=int, help="item id to decide")
    review.add_argument("--confirm", action="store_true")
    review.add_argument("--dismiss", action="store_true")
    review.add_argument("--by", help="who decides")
    review.add_argument("--comment", default="")
    review.set_defaults(handler=_review)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    p.add_argument("--mqtt-url", help=f"default: ${settings.MQTT_URL_ENV}")
    p.add_argument("--interval", type=int, default=900, help="interval length, s (default 900)")


def _since(text: str) -> datetime:
    text = text.strip()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time nor a span like 7d or 12h"
        ) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _database_url(args: argparse.Namespace) -> str:
    return settings.require_database_url(args.database_url)


def _run(args: argparse.Namespace) -> int:
    mqtt = settings.require_mqtt(args.mqtt_url)
    kw: dict[str, Any] = {}
    if args.client_id:
        kw["client_id"] = args.client_id
    config = CollectorConfig(
        database_url=_database_url(args), mqtt=mqtt,
        shared_group=None if args.no_share else args.group, interval_s=args.interval,
        site=args.site, migrate=args.migrate,
        validate_every_s=args.validate_every or None, **kw,
    )
    from collector.service import Collector

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        collector = Collector(config)
        await collector.run(stop)
        s = collector.stats
        print(json.dumps({"messages": s.messages, "readings_stored": s.readings_stored,
                          "dead_letters": s.dead_letters, "intervals": s.intervals_written}))

    asyncio.run(main())
    return 0


def _migrate(args: argparse.Namespace) -> int:
    url = _database_url(args)
    applied = db.migrate(url)
    print("\n".join(f"applied {name}" for name in applied) or
          f"up to date ({db.host_label(url)})")
    return 0


def _revalidate(args: argparse.Namespace) -> int:
    from collector.config import ValidationConfig
    from collector.vee import revalidate

    written = revalidate(_database_url(args), args.interval, ValidationConfig(), args.since,
                         args.meter)
    print(f"revalidated since {args.since.isoformat()}: {written} intervals written")
    return 0


def _review(args: argparse.Namespace) -> int:
    from collector import vee

    url = _database_url(args)
    if args.item is None:
        for item in vee.open_items(url):
            print(f"#{item['id']} {item['meter_id']} {item['rule']} "
                  f"{item['period_start']}..{item['period_end']}: {item['reason']}")
        return 0
    if args.confirm == args.dismiss:
        raise vee.ReviewError("say --confirm or --dismiss")
    decided = vee.decide(url, args.item, "confirmed" if args.confirm else "dismissed",
                         args.by or "", args.comment)
    print(f"review item {decided.item_id} {decided.status}; "
          f"{decided.released} interval(s) released to billing")
    return 0
