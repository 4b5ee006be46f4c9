"""The embedded broker with a site's identities: mosquitto with the provisioned files, and
amqtt with its password-file and ACL plugins, refuse the same things.

A check that something does *not* arrive is made deterministic by an allowed follow-up
message from the same sender: once it arrives, the forbidden one (sent first) would have too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from launcher.demo import public_database_url
from launcher.embedded import BrokerLogins, site_broker
from meterhub.settings import MqttSettings

SITE = "s1"
HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@pytest.fixture(params=[
    pytest.param("mosquitto", marks=pytest.mark.skipif(not HAVE_MOSQUITTO,
                                                       reason="needs the mosquitto binary")),
    "amqtt",
])
def logins(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokerLogins]:
    monkeypatch.setenv("METERHUB_EMBEDDED_BROKER", request.param)
    with site_broker(tmp_path / "site", site=SITE, gateways=["gw-a", "gw-b"]) as found:
        yield found


@contextlib.asynccontextmanager
async def _client(settings: MqttSettings) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(settings.host, settings.port, username=settings.username,
                              password=settings.password, timeout=5) as client:
        yield client


def _topic(gateway: str, kind: str) -> str:
    return f"meterhub/v1/{SITE}/{gateway}/{kind}"


async def _first(client: aiomqtt.Client) -> tuple[str, bytes]:
    async with asyncio.timeout(5):
        async for message in client.messages:
            return str(message.topic), bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("nothing arrived")


async def test_anonymous_and_wrong_password_refused(logins: BrokerLogins) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with _client(logins.broker):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with _client(replace(logins.login("gw-a"), password="not-the-password")):
            pass
    async with _client(logins.login("gw-a")):
        pass  # the right password is let in


async def test_gateway_publishes_only_its_own_readings(logins: BrokerLogins) -> None:
    async with _client(logins.login("collector")) as collector, \
            _client(logins.login("gw-a")) as gw_a:
        await collector.subscribe("meterhub/v1/+/+/readings", qos=1)
        await gw_a.publish(_topic("gw-b", "readings"), b"forged", qos=1)
        await gw_a.publish(_topic("gw-a", "readings"), b"own", qos=1)
        assert await _first(collector) == (_topic("gw-a", "readings"), b"own")


async def test_only_billing_commands_reach_only_their_gateway(logins: BrokerLogins) -> None:
    async with _client(logins.login("gw-b")) as gw_b, \
            _client(logins.login("collector")) as collector, \
            _client(logins.login("billing")) as billing:
        # gw-b tries to read gw-a's commands; mosquitto grants and filters, amqtt refuses
        with contextlib.suppress(aiomqtt.MqttError):
            await gw_b.subscribe(_topic("gw-a", "cmd"), qos=1)
        await gw_b.subscribe(_topic("gw-b", "cmd"), qos=1)
        await collector.publish(_topic("gw-b", "cmd"), b"from-collector", qos=1)
        await billing.publish(_topic("gw-a", "cmd"), b"for-a", qos=1)
        await billing.publish(_topic("gw-b", "cmd"), b"for-b", qos=1)
        assert await _first(gw_b) == (_topic("gw-b", "cmd"), b"for-b")


def test_logins_without_credentials_share_the_given_login() -> None:
    given = MqttSettings("broker.example", 1883, username="ops", password="s3cret-pw")
    logins = BrokerLogins(given)
    assert logins.login("collector") == given
    assert logins.public_url == "mqtt://ops@broker.example:1883"


def test_public_database_url_drops_the_password() -> None:
    assert (public_database_url("postgresql://app:s3cret@db.example:5433/meterhub")
            == "postgresql://app@db.example:5433/meterhub")
    shown = public_database_url("host=/tmp/pg user=postgres password=s3cret dbname=meterhub")
    assert "s3cret" not in shown
    assert shown == "postgresql://postgres@/meterhub?host=%2Ftmp%2Fpg"
