"""The ``meterhub`` command: one subcommand per part, each registered by the part itself.

The launcher also resolves what a part must not decide for itself: a subcommand listed in
``EMBEDDED_DATABASE`` that is given no database URL gets an embedded PostgreSQL, started here
and handed to the part as ``args.database_url``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from launcher.embedded import database_or_embedded
from meterhub import i18n, wire
from meterhub.i18n import _
from meterhub.logs import setup_logging

# (module, subcommand): each module exposes ``register(subparsers)``; a part that is not
# installed simply has no subcommand.
_PARTS = (
    ("launcher.demo", "demo"),
    ("firmware_sim.cli", "sim"),
    ("gateway.cli", "gateway"),
    ("collector.cli", "collector"),
    ("billing.cli", "billing"),
    ("notify.cli", "notify"),
    ("web.cli", "web"),
    ("launcher.broker", "broker"),
    ("launcher.keys", "keys"),
)

# subcommands that fall back to an embedded PostgreSQL when no --database-url /
# $METERHUB_DATABASE_URL is given (the others refuse to start without one)
EMBEDDED_DATABASE = frozenset({"web"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterhub",
        description="Smart-meter gateway and prepaid metering backend.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines")
    parser.add_argument("--lang", choices=i18n.LANGUAGES, default=None,
                        help=f"language of messages (default ${i18n.LANG_ENV}, LC_ALL, LANG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, _command in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


# Longer than any id, reason or path a person types; shorter than what would flood a log.
MAX_ARGUMENT_CHARS = 4096


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, naming the option, text no command should take: NUL, a lone surrogate (what
    a broken terminal or a hostile script passes; PostgreSQL and UTF-8 files refuse both,
    deeper and less clearly) or more than MAX_ARGUMENT_CHARS characters."""
    for key, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str | os.PathLike):
                continue
            text = os.fspath(item)
            if not isinstance(text, str):
                continue
            option = "--" + key.replace("_", "-")
            if "\x00" in text:
                parser.error(f"argument {option}: contains a NUL character")
            if wire.has_lone_surrogate(text):
                parser.error(f"argument {option}: contains a lone surrogate (not UTF-8 text)")
            if len(text) > MAX_ARGUMENT_CHARS:
                parser.error(f"argument {option}: {len(text)} characters, more than "
                             f"{MAX_ARGUMENT_CHARS}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    # the language for this run only (a test calling main() leaves its own unchanged)
    with i18n.language(args.lang or i18n.from_environment()):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    setup_logging(verbosity=args.verbose, json_lines=args.log_json)
    try:
        with contextlib.ExitStack() as stack:
            if args.command in EMBEDDED_DATABASE:
                args.database_url = database_or_embedded(args.database_url, stack)
            return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for known failures, traceback with -vv
        if args.verbose >= 2:
            raise
        logging.getLogger("meterhub").debug("fatal", exc_info=True)
        print(_("meterhub {command}: error: {error}", command=args.command, error=exc),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
