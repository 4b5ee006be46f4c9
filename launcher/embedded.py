"""Embedded defaults for a laptop with nothing installed: a broker and a PostgreSQL.

Broker: a ``mosquitto`` binary on PATH is preferred (MQTT 5, shared subscriptions); otherwise
amqtt 0.12 runs in a thread of this process (MQTT 3.1.1 only, so collectors fall back to a
plain subscription and a single instance). Database: pgserver, a PostgreSQL packaged on PyPI.
Real services replace both through ``METERHUB_MQTT_URL`` / ``METERHUB_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meterhub import settings
from meterhub.settings import MqttSettings

log = logging.getLogger(__name__)


class EmbeddedServiceError(RuntimeError):
    """An embedded service would not start; the message says what to try instead."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServiceError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@contextlib.contextmanager
def mosquitto_broker(workdir: Path, port: int | None = None) -> Iterator[MqttSettings]:
    """Run the ``mosquitto`` binary on a free port (persistence on, so QoS 1 sessions
    survive a broker restart on the same port)."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if binary is None:
        raise EmbeddedServiceError("no mosquitto binary found")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        # started as root, mosquitto would switch to user "mosquitto" and could not write
        # its persistence file here; stay the user who owns the folder
        f"user {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {workdir}/\n"
        "max_queued_messages 100000\n"
        "log_type error\n"
        "log_dest stderr\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield MqttSettings("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def amqtt_broker(port: int | None = None) -> Iterator[MqttSettings]:
    """amqtt in a thread with its own event loop, so a busy caller cannot starve it."""
    from amqtt.broker import Broker

    port = port or free_port()
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        # anonymous clients, no $SYS publishing, no per-packet logging
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Future[None] | None = None
    errors: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop
        stop = loop.create_future()
        broker = Broker(config)
        try:
            await broker.start()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
            started.set()
            return
        started.set()
        await stop
        await broker.shutdown()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    # amqtt logs every probe connection (ours, from wait_for_port) as an error
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    thread.start()
    started.wait(15)
    if errors:
        raise EmbeddedServiceError(f"amqtt did not start: {errors[0]}")
    try:
        wait_for_port("127.0.0.1", port)
        yield MqttSettings("127.0.0.1", port)
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


@contextlib.contextmanager
def embedded_broker(workdir: Path | None = None) -> Iterator[MqttSettings]:
    """Mosquitto when the binary exists, amqtt otherwise (``METERHUB_EMBEDDED_BROKER=amqtt``
    forces amqtt, to try what a laptop without mosquitto gets)."""
    choice = os.environ.get("METERHUB_EMBEDDED_BROKER", "")
    if choice not in ("", "mosquitto", "amqtt"):
        raise EmbeddedServiceError(
            f"METERHUB_EMBEDDED_BROKER: {choice!r} is not 'mosquitto' or 'amqtt'"
        )
    have_binary = shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()
    if choice != "amqtt" and have_binary:
        with (
            tempfile.TemporaryDirectory(prefix="meterhub-mqtt-") as tmp,
            mosquitto_broker(workdir or Path(tmp)) as settings,
        ):
            yield settings
    else:
        with amqtt_broker() as settings:
            yield settings


@contextlib.contextmanager
def embedded_postgres(datadir: Path) -> Iterator[str]:
    """pgserver in ``datadir``; yields a conninfo for a ``meterhub`` database."""
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # platformdirs complains about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import pgserver

            server = pgserver.get_server(str(datadir), cleanup_mode="stop")
    except Exception as exc:
        raise EmbeddedServiceError(
            f"embedded PostgreSQL (pgserver) did not start in {datadir}: {exc}; "
            "set METERHUB_DATABASE_URL to a PostgreSQL instead"
        ) from exc
    import psycopg

    uri = server.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'meterhub'").fetchone():
            conn.execute("CREATE DATABASE meterhub")
    try:
        yield server.get_uri("meterhub")
    finally:
        server.cleanup()


def database_or_embedded(url: str | None, stack: contextlib.ExitStack) -> str:
    """``url`` when one is given, else an embedded PostgreSQL that runs until ``stack`` closes.

    The launcher resolves "no URL" here and hands the part a URL, so no part needs to know
    about embedded services (and none imports the launcher).
    """
    if url:
        return url
    print("starting embedded PostgreSQL (pgserver) ...", file=sys.stderr, flush=True)
    return str(stack.enter_context(embedded_postgres(settings.data_dir() / "demo-postgres")))
