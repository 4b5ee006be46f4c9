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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher.broker import PlainListener, load_record, provision
from meterhub import settings
from meterhub.security.files import read_private_file
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


def _mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


@contextlib.contextmanager
def _run_mosquitto(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``mosquitto -c config`` until the block ends; ready once ``port`` accepts."""
    binary = _mosquitto_binary()
    if binary is None:
        raise EmbeddedServiceError("no mosquitto binary found")
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def mosquitto_broker(workdir: Path, port: int | None = None) -> Iterator[MqttSettings]:
    """Run the ``mosquitto`` binary on a free port, anonymous (what the tests use); persistence
    on (saved when the broker stops), so QoS 1 sessions survive a restart on the same port.
    The provisioned :func:`site_broker` also saves on change."""
    with mosquitto_process(workdir, port) as (settings, _):
        yield settings


@contextlib.contextmanager
def mosquitto_process(
    workdir: Path, port: int | None = None
) -> Iterator[tuple[MqttSettings, subprocess.Popen[bytes]]]:
    """:func:`mosquitto_broker` and its process, for fault tests that kill it (SIGKILL)."""
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
    with _run_mosquitto(conf, port) as proc:
        yield MqttSettings("127.0.0.1", port), proc


@contextlib.contextmanager
def amqtt_broker(
    port: int | None = None, *, plugins: dict[str, Any] | None = None
) -> Iterator[MqttSettings]:
    """amqtt in a thread with its own event loop, so a busy caller cannot starve it.

    ``plugins`` replaces the default (anonymous clients) with, say, a site's password file
    and ACLs (:func:`launcher.amqtt_site.amqtt_plugins`). Listed plugins only: no $SYS
    publishing, no per-packet logging.
    """
    from amqtt.broker import Broker

    port = port or free_port()
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": plugins
        or {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
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


def _embedded_choice() -> str:
    """'mosquitto' or 'amqtt': the binary when it exists, unless ``METERHUB_EMBEDDED_BROKER=amqtt``
    forces amqtt (to try what a laptop without mosquitto gets)."""
    choice = os.environ.get("METERHUB_EMBEDDED_BROKER", "")
    if choice not in ("", "mosquitto", "amqtt"):
        raise EmbeddedServiceError(
            f"METERHUB_EMBEDDED_BROKER: {choice!r} is not 'mosquitto' or 'amqtt'"
        )
    return "mosquitto" if choice != "amqtt" and _mosquitto_binary() else "amqtt"


@contextlib.contextmanager
def embedded_broker(workdir: Path | None = None) -> Iterator[MqttSettings]:
    """An anonymous embedded broker (the test fixtures' default): mosquitto when the binary
    exists, amqtt otherwise. A site that should refuse strangers uses :func:`site_broker`."""
    if _embedded_choice() == "mosquitto":
        with (
            tempfile.TemporaryDirectory(prefix="meterhub-mqtt-") as tmp,
            mosquitto_broker(workdir or Path(tmp)) as settings,
        ):
            yield settings
    else:
        with amqtt_broker() as settings:
            yield settings


@dataclass(frozen=True)
class BrokerLogins:
    """A broker and how each process logs in to it.

    With ``credentials`` (identity -> 0600 password file, from ``meterhub broker provision``)
    every process gets its own identity; without, all share ``broker`` as given (an anonymous
    broker, or the user name and password of a ``--mqtt-url``).
    """

    broker: MqttSettings
    credentials: Mapping[str, Path] = field(default_factory=dict)

    def login(self, identity: str) -> MqttSettings:
        """Settings for the process ``identity``; its password is read from its file now."""
        path = self.credentials.get(identity)
        if path is None:
            if self.credentials:
                raise EmbeddedServiceError(f"no credential for identity {identity!r}")
            return self.broker
        password = read_private_file(path, f"MQTT password of {identity}").decode().strip()
        return replace(self.broker, username=identity, password=password)

    @property
    def public_url(self) -> str:
        """The broker's URL for people to read: a user name at most, never a password."""
        user = f"{self.broker.username}@" if self.broker.username else ""
        scheme, rest = self.broker.url.split("://", 1)
        return f"{scheme}://{user}{rest}"


@contextlib.contextmanager
def site_broker(site_dir: Path, *, site: str, gateways: Iterable[str]) -> Iterator[BrokerLogins]:
    """An embedded broker that enforces a site's identities and ACLs.

    ``site_dir`` is provisioned like ``meterhub broker provision`` does (password file, ACL,
    no anonymous clients, persistence saved on change) with a plain listener on a free
    loopback port. Mosquitto runs those files as they are; amqtt gets the same identities
    and rules through its plugins and logs once what it cannot enforce.
    """
    port = free_port()
    paths = provision(site_dir, site=site, gateways=gateways, tls=None,
                      plain=PlainListener(port=port, bind="127.0.0.1"))
    identities = load_record(site_dir).identities
    logins = {name: paths.credential(name) for name in identities}
    if _embedded_choice() == "mosquitto":
        with _run_mosquitto(paths.config, port):
            yield BrokerLogins(MqttSettings("127.0.0.1", port), logins)
        return
    from launcher.amqtt_site import LIMITS, amqtt_plugins

    log.warning(LIMITS)
    with amqtt_broker(port, plugins=amqtt_plugins(paths, site, identities)) as settings:
        yield BrokerLogins(settings, logins)


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
        server.cleanup()  # stops it unless another process still uses it
        print(_postgres_left(datadir), file=sys.stderr, flush=True)


def _postgres_left(datadir: Path) -> str:
    """What became of the embedded PostgreSQL: stopped, or still running and how to stop it."""
    if not (datadir / "postmaster.pid").exists():
        return f"embedded PostgreSQL stopped (data kept in {datadir})"
    from pgserver._commands import POSTGRES_BIN_PATH

    return (f"embedded PostgreSQL in {datadir} keeps running: another meterhub process "
            f"uses it; to stop it: {POSTGRES_BIN_PATH / 'pg_ctl'} -D {datadir} stop")


def database_or_embedded(url: str | None, stack: contextlib.ExitStack) -> str:
    """``url`` when one is given, else an embedded PostgreSQL that runs until ``stack`` closes.

    The launcher resolves "no URL" here and hands the part a URL, so no part needs to know
    about embedded services (and none imports the launcher).
    """
    if url:
        return url
    print(f"starting embedded PostgreSQL (pgserver, data in {settings.data_dir()}"
          "/demo-postgres; stopped when this command ends) ...", file=sys.stderr, flush=True)
    return str(stack.enter_context(embedded_postgres(settings.data_dir() / "demo-postgres")))
