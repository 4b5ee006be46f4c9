"""``meterhub collector run | migrate | revalidate | review | dead-letters``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.config import CollectorConfig
from meterhub import db, settings
from meterhub.metrics import add_metrics_option, metrics_endpoint


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
    add_metrics_option(run)
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

    _register_ownership(sub)

    dl = sub.add_parser("dead-letters", help="list, export or replay refused messages")
    dl_sub = dl.add_subparsers(dest="dead_letter_command", required=True, metavar="ACTION")
    for name, text in (("list", "counts by reason, then the newest rows"),
                       ("export", "JSON lines: payload base64, length, sha256"),
                       ("replay", "feed complete refused messages through ingest again")):
        one = dl_sub.add_parser(name, help=text)
        one.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
        one.add_argument("--code", help="only this reason code (e.g. bad_id, not_owner)")
        one.add_argument("--gateway", help="only this gateway's")
        one.add_argument("--since", type=_since, help="ISO date/time or a span back: 7d, 12h")
        one.add_argument("--id", type=int, action="append", dest="ids",
                         help="only this dead letter (repeatable)")
        one.set_defaults(handler=_dead_letters)
        if name == "list":
            one.add_argument("--limit", type=int, default=50)
        if name == "export":
            one.add_argument("--out", default="-", help="file (default: stdout)")
        if name == "replay":
            one.add_argument("--again", action="store_true",
                             help="also those replayed before")


def _register_ownership(sub: Any) -> None:
    """``commissioning``, ``pending`` and ``meters move``: who owns a meter (issue 11)."""
    com = sub.add_parser("commissioning",
                         help="let a gateway register its unknown meters for a while")
    com.add_argument("gateway")
    com.add_argument("--minutes", type=float, required=True, help="window length; 0 closes it")
    com.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    com.set_defaults(handler=_commissioning)

    pending = sub.add_parser("pending", help="unknown meters waiting for an operator")
    pending.add_argument("action", nargs="?", choices=("list", "approve", "reject"),
                         default="list")
    pending.add_argument("meter", nargs="?")
    pending.add_argument("--gateway", help="the claiming gateway (approve, reject)")
    pending.add_argument("--by", default="", help="who decides (audited)")
    pending.add_argument("--comment", default="")
    pending.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    pending.set_defaults(handler=_pending)

    meters = sub.add_parser("meters", help="registered meters: move one to another gateway")
    msub = meters.add_subparsers(dest="meters_command", required=True, metavar="ACTION")
    move = msub.add_parser("move", help="give a meter to another gateway (audited)")
    move.add_argument("meter")
    move.add_argument("--to", required=True, metavar="GATEWAY")
    move.add_argument("--by", required=True, help="who moves it")
    move.add_argument("--comment", default="")
    move.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL_ENV}")
    move.set_defaults(handler=_move)


def _commissioning(args: argparse.Namespace) -> int:
    import psycopg

    from collector import ownership

    with psycopg.connect(_database_url(args), autocommit=True) as conn:
        until = ownership.commission(conn, args.gateway, args.minutes, datetime.now(UTC))
    print(f"gateway {args.gateway} commissioning until {until.isoformat()}" if until
          else f"gateway {args.gateway}: commissioning closed")
    return 0


def _pending(args: argparse.Namespace) -> int:
    import psycopg

    from collector import ownership, read_model

    with psycopg.connect(_database_url(args), autocommit=True) as conn:
        if args.action == "list":
            for row in read_model.pending_meters(conn):
                print(f"{row['meter_id']} claimed by {row['gateway']} ({row['status']}): "
                      f"{row['readings']} reading(s) {row['first_seen']:%Y-%m-%d %H:%M}.."
                      f"{row['last_seen']:%Y-%m-%d %H:%M}")
            return 0
        if not args.meter or not args.gateway:
            raise ownership.OwnershipError(f"pending {args.action} needs METER and --gateway")
        decide = ownership.approve if args.action == "approve" else ownership.reject
        decide(conn, args.meter, args.gateway, args.by, args.comment)
    print(f"meter {args.meter} claimed by {args.gateway}: {args.action}d")
    return 0


def _move(args: argparse.Namespace) -> int:
    import psycopg

    from collector import ownership

    with psycopg.connect(_database_url(args), autocommit=True) as conn:
        old = ownership.move(conn, args.meter, args.to, args.by, args.comment)
    print(f"meter {args.meter} moved from {old} to {args.to}")
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    import psycopg

    from collector import dead_letters, read_model

    url = _database_url(args)
    which = {"code": args.code, "gateway": args.gateway, "since": args.since, "ids": args.ids}
    with psycopg.connect(url, autocommit=True) as conn:
        if args.dead_letter_command == "list":
            counts = read_model.dead_letter_counts(conn)
            print(json.dumps({"by_code": counts, "total": sum(counts.values())}))
            for row in dead_letters.rows(conn, **which, limit=args.limit):
                mark = "replayable" if dead_letters.replayable(row) else "read-only"
                print(f"#{row['id']} {row['received_at']:%Y-%m-%d %H:%M:%S} {row['code']} "
                      f"{row['gateway'] or '-'} {row['payload_length']} B {mark}: "
                      f"{row['reason'][:160]}")
            return 0
        if args.dead_letter_command == "export":
            with contextlib.ExitStack() as stack:
                out = (sys.stdout if args.out == "-"
                       else stack.enter_context(open(args.out, "w", encoding="utf-8")))
                for row in dead_letters.rows(conn, **which):
                    out.write(json.dumps(dead_letters.export_record(row)) + "\n")
            return 0
        picked = [r for r in dead_letters.rows(conn, **which)
                  if dead_letters.replayable(r) and (args.again or r["replayed_at"] is None)]
    if not picked:
        print("nothing to replay (only whole messages kept complete can be replayed)")
        return 0
    result = _replay(url, [(r["topic"], bytes(r["payload"])) for r in picked])
    with psycopg.connect(url, autocommit=True) as conn:
        dead_letters.mark_replayed(conn, [r["id"] for r in picked])
    print(json.dumps({"replayed": len(picked), "readings_stored": result.readings_stored,
                      "dead_letters": result.dead_letters}))
    return 0


def _replay(url: str, letters: list[tuple[str, bytes]]) -> Any:
    from collector.service import Collector

    config = CollectorConfig(database_url=url, mqtt=settings.MqttSettings("localhost", 1883),
                             validate_every_s=None)

    async def main() -> Any:
        return await Collector(config).replay(letters)

    return asyncio.run(main())


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
    from collector.metrics import CollectorMetrics
    from collector.service import Collector

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        collector = Collector(config)
        async with metrics_endpoint(args.metrics, lambda: CollectorMetrics(collector)):
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
