"""Billing's only MQTT door: relay commands down, acks up, alerts out.

Everything else in billing talks to the database; this module turns claimed commands into
signed ``meterhub.wire`` messages on the gateway's ``cmd`` topic (QoS 1: publish returns after
the broker's PUBACK; signed with the engine's Ed25519 key for that one gateway, automatic and
operators' manual commands alike, since both are sent here), takes acks from every gateway's
``cmd/ack`` topic (only well-formed ones whose payload names the topic's gateway), and
publishes alerts as ``events`` under the pseudo-gateway ``billing`` of the account's site.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from meterhub import wire
from meterhub.security import CommandSigner
from meterhub.settings import MqttSettings

log = logging.getLogger(__name__)

ALERTS_GATEWAY = "billing"

MAX_ACK_BYTES = 64 * 1024  # an ack is a few hundred bytes; anything near this is not one
MAX_REASON_CHARS = 1000
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # command, gateway and meter ids: plain ASCII


def _text_fault(text: str) -> str | None:
    """Why ``text`` cannot be stored in PostgreSQL as it is, or None."""
    if "\x00" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def _bad_fields(ack: wire.Ack) -> list[str]:
    """The ack's fields that no gateway sends (ids with lone surrogates or kilobytes of text,
    an unstorable reason): refused here, before they can reach the database."""
    bad = [f"{name} is not 1-64 characters of [A-Za-z0-9_.:-]"
           for name in ("command_id", "gateway", "meter") if not _ID.fullmatch(getattr(ack, name))]
    if ack.reason is not None:
        fault = _text_fault(ack.reason)
        if len(ack.reason) > MAX_REASON_CHARS:
            fault = f"is longer than {MAX_REASON_CHARS} characters"
        if fault:
            bad.append(f"reason {fault}")
    return bad


class CommandLink:
    """One MQTT connection for sending commands and alerts and receiving acks.

    Use as ``async with CommandLink(...) as link``; :meth:`acks` yields decoded acks and
    logs and counts (never raises on) malformed or misaddressed ones, so one bad message
    cannot stop billing. ``refused`` counts them by reason (the engine passes its stats'
    counter, so the counts outlive a reconnect).
    """

    def __init__(self, settings: MqttSettings, client_id: str, signer: CommandSigner,
                 refused: Counter[str] | None = None) -> None:
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
        self.refused: Counter[str] = Counter() if refused is None else refused

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
        """Acks whose payload names the gateway of the topic they came on (the topic is what
        the broker's ACL lets only that gateway publish on); everything else is dropped."""
        async for message in self._client.messages:
            ack = self._check(str(message.topic), message.payload)
            if ack is not None:
                yield ack

    def _check(self, topic: str, payload: object) -> wire.Ack | None:
        def refuse(reason: str, why: str) -> None:
            self.refused[reason] += 1
            # repr keeps odd characters printable; the cut keeps a 64 KiB id out of the log
            log.warning("ack dropped", extra={"reason": reason, "topic": repr(topic[:200]),
                                              "why": why[:300]})

        if not isinstance(payload, bytes | str) or len(payload) > MAX_ACK_BYTES:
            size = len(payload) if isinstance(payload, bytes | str) else 0
            refuse("too_large", f"{size} bytes, at most {MAX_ACK_BYTES}")
            return None
        try:
            _, topic_gateway, _ = wire.parse_topic(topic)
            ack = wire.decode_ack(payload)
        except Exception as exc:
            # any decoder failure (RecursionError for deep nesting, ValueError for a
            # 5000-digit integer, UnicodeError...) is this message's fault, not billing's
            refuse("malformed", f"{type(exc).__name__}: {exc}")
            return None
        bad = _bad_fields(ack)
        if bad:
            refuse("bad_field", "; ".join(bad))
            return None
        if ack.gateway != topic_gateway:
            refuse("topic_mismatch",
                   f"payload says gateway {ack.gateway!r}, topic is {topic_gateway!r}")
            return None
        return ack


MqttError = aiomqtt.MqttError
