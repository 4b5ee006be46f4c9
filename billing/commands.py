"""Billing's only MQTT door: relay commands down, acks up, alerts out.

Everything else in billing talks to the database; this module turns claimed commands into
signed ``meterhub.wire`` messages on the gateway's ``cmd`` topic (QoS 1: publish returns after
the broker's PUBACK; signed with the engine's Ed25519 key for that one gateway, automatic and
operators' manual commands alike, since both are sent here), decodes acks from every gateway's ``cmd/ack`` topic, and publishes alerts as
``events`` under the pseudo-gateway ``billing`` of the account's site.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from meterhub import wire
from meterhub.security import CommandSigner
from meterhub.settings import MqttSettings

log = logging.getLogger(__name__)

ALERTS_GATEWAY = "billing"


class CommandLink:
    """One MQTT connection for sending commands and alerts and receiving acks.

    Use as ``async with CommandLink(...) as link``; :meth:`acks` yields decoded acks and
    logs (never raises on) malformed ones, so one bad gateway cannot stop billing.
    """

    def __init__(self, settings: MqttSettings, client_id: str, signer: CommandSigner) -> None:
        self._client = aiomqtt.Client(
            hostname=settings.host,
            port=settings.port,
            identifier=client_id,
            username=settings.username,
            password=settings.password,
            tls_context=settings.tls_context(),
            keepalive=30,
        )
        self._signer = signer
        self.malformed = 0

    async def __aenter__(self) -> CommandLink:
        await self._client.__aenter__()
        await self._client.subscribe(wire.subscription("cmd/ack"), qos=1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)
        # after a lost connection aiomqtt leaves the reason in a future nobody awaits; read
        # it so asyncio does not report "Future exception was never retrieved"
        lost = getattr(self._client, "_disconnected", None)
        if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
            lost.exception()

    async def send(self, site: str, gateway: str, command: wire.Command) -> None:
        """Sign ``command`` for ``gateway`` (a fresh nonce each call, so a retry is signed
        anew) and publish it on that gateway's command topic."""
        await self._client.publish(
            wire.topic(site, gateway, "cmd"),
            wire.encode_command(command, gateway, self._signer), qos=1,
        )

    async def publish_alert(
        self, site: str, kind: str, meter: str | None, detail: str, data: Mapping[str, Any]
    ) -> None:
        event = wire.Event(kind=kind, at=datetime.now(UTC), meter=meter, detail=detail,
                           data=dict(data))
        await self._client.publish(
            wire.topic(site, ALERTS_GATEWAY, "events"),
            wire.encode_events(ALERTS_GATEWAY, [event]),
            qos=1,
        )

    async def acks(self) -> AsyncIterator[wire.Ack]:
        async for message in self._client.messages:
            try:
                ack = wire.decode_ack(message.payload)  # type: ignore[arg-type]
            except wire.WireError as exc:
                self.malformed += 1
                log.warning("malformed ack dropped",
                            extra={"topic": str(message.topic), "why": str(exc)})
                continue
            yield ack


MqttError = aiomqtt.MqttError
