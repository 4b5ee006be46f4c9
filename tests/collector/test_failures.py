"""Failures that must lose nothing: a collector killed between commit and ack, a database
outage (a real TCP cut between the collector and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from collector_helpers import (
    T0,
    Publisher,
    batch_payload,
    config,
    minutes,
    reading,
    running,
    scalar,
    subscribed,
    wait_until,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from meterhub import wire

pytestmark = pytest.mark.integration
_ROOT = Path(__file__).resolve().parents[2]


def _payloads(site: str, n: int, per: int = 5) -> list[bytes]:
    return [batch_payload(site, "gw1", seq, [reading(f"m{k}", T0 + minutes(seq), seq + k)
                                             for k in range(per)]) for seq in range(n)]


async def test_killed_between_commit_and_ack_loses_nothing_and_stores_once(
    db_url, mqtt, site, pub
):
    client_id = f"crash-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crash_runner.py")), db_url, mqtt.host,
         str(mqtt.port), site, client_id],
        stdout=subprocess.PIPE, text=True, cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), *sys.path])},
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.to_thread(proc.stdout.readline) == "ready\n"
        topic = wire.topic(site, "gw1", "readings")
        for p in _payloads(site, 10):
            pub.publish(topic, p)
        assert await asyncio.to_thread(proc.stdout.readline) == "committed\n"
        assert await asyncio.to_thread(proc.wait, 20) == 17
    finally:
        if proc.poll() is None:
            proc.kill()
    committed_before_crash = scalar(db_url, "SELECT count(*) FROM readings")
    assert committed_before_crash > 0  # the dead collector did commit ...
    # ... and never acked: the same session, restarted, gets every message again.
    cfg = config(db_url, mqtt, site, client_id=client_id)
    async with running(cfg) as col:
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 50,
                         what="all 50 readings")
        await wait_until(lambda: col.stats.messages == 10, what="all ten messages redelivered")
    assert scalar(db_url, "SELECT count(*) FROM readings") == 50
    assert col.stats.readings_stored == 50 - committed_before_crash
    assert col.stats.duplicate_batches >= 1


class TcpCut:
    """A TCP relay to PostgreSQL that the test can cut, like a network or server outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            host, port = self.target
            if host.startswith("/"):  # a unix socket directory (embedded pgserver)
                up_r, up_w = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    def cut(self) -> None:
        self.up = False
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self.server:
            self.server.close()


def _via(db_url: str, port: int) -> str:
    params = conninfo_to_dict(db_url)
    params.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**params)


async def test_database_outage_is_survived_without_loss(db_url, mqtt, site, pub):
    params = conninfo_to_dict(db_url)
    relay = TcpCut(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    port = await relay.start()
    try:
        topic = wire.topic(site, "gw1", "readings")
        payloads = _payloads(site, 6)
        cfg = config(_via(db_url, port), mqtt, site, db_retry_max_s=0.5)
        async with running(cfg) as col:
            await subscribed(col)
            pub.publish(topic, payloads[0])
            await wait_until(lambda: col.stats.messages == 1, what="first message")
            relay.cut()
            for p in payloads[1:4]:
                pub.publish(topic, p)
            await wait_until(lambda: col.stats.db_errors >= 2, what="failed retries")
            assert scalar(db_url, "SELECT count(*) FROM readings") == 5
            relay.restore()
            for p in payloads[4:]:
                pub.publish(topic, p)
            await wait_until(lambda: col.stats.messages == 6, what="catch-up", timeout=20)
        assert scalar(db_url, "SELECT count(*) FROM readings") == 30
        assert col.stats.readings_stored == 30
    finally:
        await relay.close()


async def test_stopping_during_an_outage_leaves_messages_for_redelivery(db_url, mqtt, site, pub):
    params = conninfo_to_dict(db_url)
    relay = TcpCut(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    port = await relay.start()
    client_id = f"out-{uuid.uuid4().hex[:8]}"
    try:
        topic = wire.topic(site, "gw1", "readings")
        payloads = _payloads(site, 3)
        cfg = config(_via(db_url, port), mqtt, site, db_retry_max_s=0.2, client_id=client_id,
                     leave_on_stop=False)
        async with running(cfg) as col:
            await subscribed(col)
            relay.cut()
            for p in payloads:
                pub.publish(topic, p)
            await wait_until(lambda: col.stats.db_errors >= 1, what="a failed write")
        assert col.stats.messages == 0
        relay.restore()
        async with running(cfg) as col2:
            await wait_until(lambda: col2.stats.messages == 3, what="redelivered after restart")
        assert scalar(db_url, "SELECT count(*) FROM readings") == 15
    finally:
        await relay.close()


@pytest.fixture
def broker_dir():
    # mosquitto started as root drops to the `mosquitto` user: its persistence directory must
    # be writable by that user, or the session (subscriptions, queued messages) is not saved
    path = Path(tempfile.mkdtemp(prefix="collector-broker-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("shared", [True, False])
async def test_broker_restart_loses_nothing(db_url, site, broker_dir, shared):
    """A broker of the test's own (mosquitto with persistence) stops and starts again on the
    same port under a running collector; messages published meanwhile are all stored."""
    from launcher.embedded import free_port, mosquitto_broker

    port = free_port()
    workdir = broker_dir
    payloads = _payloads(site, 6)
    topic = wire.topic(site, "gw1", "readings")
    with contextlib.ExitStack() as first:
        mqtt = first.enter_context(mosquitto_broker(workdir, port))
        cfg = config(db_url, mqtt, site, client_id=f"restart-{uuid.uuid4().hex[:6]}",
                     leave_on_stop=False, **({} if shared else {"shared_group": None}))
        async with running(cfg) as col:
            await subscribed(col)
            pub = Publisher(mqtt)
            for p in payloads[:3]:
                pub.publish(topic, p)
            await wait_until(lambda: col.stats.messages == 3, what="first three")
            pub.close()
            first.close()  # the broker goes away under the running collector
            await wait_until(lambda: not col.ready.is_set(), what="collector sees the outage")
            with mosquitto_broker(workdir, port) as again:
                back = time.monotonic()
                if shared:
                    # Mosquitto 2.0 restores plain subscriptions from its persistence file but
                    # not $share ones: until the collector has subscribed again, messages for a
                    # shared group are dropped by the broker. Publish once it has.
                    await wait_until(col.ready.is_set, what="resubscribed", timeout=30)
                    # fast reconnect: first retry within 0.5 s, doubling from there
                    assert time.monotonic() - back < 5.0
                pub = Publisher(again)
                for p in payloads[3:]:
                    pub.publish(topic, p)  # plain: queued for the collector's session
                # acks racing the shutdown may make the broker hand some back: stored once
                await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 30,
                                 what="all 30 readings after the restart", timeout=30)
                # the counters move after the commit the count above already sees
                await wait_until(lambda: col.stats.messages >= 6, what="six messages counted")
                pub.close()
    assert scalar(db_url, "SELECT count(*) FROM readings") == 30


def test_reconnect_backoff_starts_fast_and_jittered(mqtt, site):
    """paho's first retry comes within 0.5 s, at a different moment for each collector, and
    a lost connection starts the backoff over (issue 12 item 5)."""
    from collector._mqtt import Consumer

    loop = asyncio.new_event_loop()
    try:
        consumers = [Consumer(config("postgresql://unused", mqtt, site), loop) for _ in range(8)]
        first = [c._client._reconnect_min_delay for c in consumers]
        assert all(0 < d <= 0.5 for d in first) and len(set(first)) > 1
        one = consumers[0]
        one._client._reconnect_delay = 8  # deep in a backoff ...
        one._on_disconnect(one._client, None, None, 7)  # ... then connected and lost again
        assert one._client._reconnect_delay is None
        assert 0 < one._client._reconnect_min_delay <= 0.5
    finally:
        loop.close()
