"""A tiny gateway peer for billing tests: answers commands over the real broker the way the
wire contract says (ack "accepted", then "done" with the relay read back). It is a test
peer on the other side of MQTT, not a stand-in for any billing code.

It verifies every command against a keyring of the test's billing key, as a real gateway
does, and refuses (ack "done"/"rejected" with the reason code) what it cannot verify, so a
billing test that gets a command executed proves billing signed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt

from meterhub import wire
from meterhub.security import Keyring, SignatureRefused
from meterhub.settings import MqttSettings


@dataclass
class FakeGateway:
    mqtt: MqttSettings
    site: str
    keyring: Keyring  # the public keys this gateway trusts
    gateway: str = "gw1"
    silent_first: int = 0  # ignore this many deliveries per command id (lost on the way)
    press_button: bool = False  # close-permitted: customer presses at once
    relay: dict[str, str] = field(default_factory=dict)
    received: list[wire.Command] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # reason codes of refused commands
    executed: Counter[tuple[str, str]] = field(default_factory=Counter)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with aiomqtt.Client(self.mqtt.host, self.mqtt.port,
                                  identifier=f"fake-{self.site}-{self.gateway}") as client:
            await client.subscribe(wire.topic(self.site, self.gateway, "cmd"), qos=1)
            self.ready.set()
            async for msg in client.messages:
                try:
                    signed = wire.decode_command(
                        msg.payload, self.keyring,  # type: ignore[arg-type]
                        gateway=self.gateway, now=datetime.now(UTC))
                except SignatureRefused as exc:
                    self.refused.append(exc.reason.value)
                    continue
                cmd = signed.command
                self.received.append(cmd)
                seen = sum(1 for c in self.received if c.command_id == cmd.command_id)
                if seen <= self.silent_first:
                    continue
                await self._ack(client, cmd, "accepted", None)
                if cmd.expired(datetime.now(UTC)):
                    await self._ack(client, cmd, "done", "expired")
                    continue
                # idempotent like a real gateway: the same command twice changes nothing
                if (cmd.command_id, cmd.action) not in self.executed:
                    if cmd.action == "relay_open":
                        self.relay[cmd.meter] = "open"
                    elif cmd.action == "relay_close" or (
                        cmd.action == "relay_close_permitted" and self.press_button
                    ):
                        self.relay[cmd.meter] = "closed"
                self.executed[(cmd.command_id, cmd.action)] += 1
                await self._ack(client, cmd, "done", "ok")

    async def _ack(self, client: aiomqtt.Client, cmd: wire.Command, stage: str,
                   outcome: str | None) -> None:
        ack = wire.Ack(command_id=cmd.command_id, gateway=self.gateway, meter=cmd.meter,
                       stage=stage, at=datetime.now(UTC), outcome=outcome,  # type: ignore[arg-type]
                       relay=self.relay.get(cmd.meter, "closed") if stage == "done" else None)
        await client.publish(wire.topic(self.site, self.gateway, "cmd/ack"),
                             wire.encode_ack(ack), qos=1)


@contextlib.asynccontextmanager
async def running(gw: FakeGateway):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(gw.run())
    await asyncio.wait_for(gw.ready.wait(), 10)
    try:
        yield gw
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
