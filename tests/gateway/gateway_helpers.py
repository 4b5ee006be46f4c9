"""Helpers for the gateway's tests: simulated buses on pseudo-terminals, a gateway config for
them, and a subscriber that records what the gateway publishes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_sim.bus import SimBus
from firmware_sim.dlt645 import Dlt645BusProtocol
from firmware_sim.meter import SimMeter
from firmware_sim.modbus import ModbusRtuBusProtocol
from meterhub import wire
from meterhub.security import (
    CommandSigner,
    generate_private_key,
    write_private_file,
    write_public_key,
)
from meterhub.settings import MqttSettings

SIM_MODEL = "sim-prepaid-1p"
QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]


def signer_for(name: str = "billing") -> CommandSigner:
    """A signing key for the tests (one per name and test session), its public half in a
    file (:func:`trusted_key_file`) the test gateways trust."""
    return _key_files(name)[0]


def trusted_key_file(name: str = "billing") -> str:
    return _key_files(name)[1]


@functools.cache
def _key_files(name: str) -> tuple[CommandSigner, str]:
    folder = Path(tempfile.mkdtemp(prefix="meterhub-test-keys-"))
    signer = CommandSigner(generate_private_key(folder / f"{name}.key"))
    write_public_key(folder / f"{name}.pub", signer.public_key)
    return signer, str(folder / f"{name}.pub")


SIM_PASSWORD = "123456"  # what firmware_sim's DL/T645 meters want


@functools.cache
def meter_password_file() -> str:
    """A 0600 file with the simulated meters' relay password, for ``{file = ...}``."""
    path = Path(tempfile.mkdtemp(prefix="meterhub-test-secrets-")) / "meter.password"
    write_private_file(path, f"{SIM_PASSWORD}\n".encode())
    return str(path)


def command(command_id: str, meter: str, action: str = "relay_open", *,
            expires_in_s: float = 30.0, issued_in_s: float = 0.0, gateway: str = "gw1",
            signer: CommandSigner | None = None, nonce: str | None = None) -> bytes:
    """A command signed with the test key (or ``signer``), as billing would send it."""
    now = datetime.now(UTC) + timedelta(seconds=issued_in_s)
    cmd = wire.Command(command_id, meter, action, now,  # type: ignore[arg-type]
                       now + timedelta(seconds=expires_in_s - issued_in_s))
    return wire.encode_command(cmd, gateway, signer or signer_for(), nonce=nonce)


def dlt_meters(n: int, first: int = 1) -> list[SimMeter]:
    return [SimMeter(f"{i:012d}", energy_kwh=100.0 + i) for i in range(first, first + n)]


def rtu_meters(n: int, first: int = 1) -> list[SimMeter]:
    return [SimMeter(str(u), protocol="modbus", model=SIM_MODEL, energy_kwh=50.0 + u)
            for u in range(first, first + n)]


@pytest.fixture
def sim_bus() -> Iterator[Callable[..., SimBus]]:
    """Start simulated buses (``protocol`` "dlt645" or "modbus"); all stop after the test."""
    started: list[SimBus] = []

    def start(protocol: str, meters: list[SimMeter], *, baud: int = 9600,
              turnaround_s: float = 0.005) -> SimBus:
        wire_protocol: Any = Dlt645BusProtocol() if protocol == "dlt645" else \
            ModbusRtuBusProtocol()
        parity = "E" if protocol == "dlt645" else "N"
        bus = SimBus(wire_protocol, meters, baud=baud, parity=parity, turnaround_s=turnaround_s)
        started.append(bus.start())
        return bus

    yield start
    for bus in started:
        bus.stop()


@dataclass
class Recorder:
    """Everything published under one site, decoded, in arrival order."""

    batches: list[wire.ReadingsBatch] = field(default_factory=list)
    raw_batches: list[bytes] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # monotonic time of each batch
    acks: list[wire.Ack] = field(default_factory=list)
    statuses: list[wire.Status] = field(default_factory=list)
    events: list[wire.Event] = field(default_factory=list)

    @property
    def readings(self) -> list[wire.Reading]:
        return [r for b in self.batches for r in b.readings]

    def seqs(self) -> list[int]:
        return [b.seq for b in self.batches]

    def acks_for(self, command_id: str) -> list[wire.Ack]:
        return [a for a in self.acks if a.command_id == command_id]


@contextlib.asynccontextmanager
async def record(mqtt: MqttSettings, site: str, *,
                 confirm: bool = True) -> AsyncIterator[Recorder]:
    """Subscribe (QoS 1) to every topic of ``site`` and record until the block ends. With
    ``confirm``, act as the collector too: a receipt for every batch received."""
    recorder = Recorder()
    async with aiomqtt.Client(mqtt.host, mqtt.port) as client:
        await client.subscribe(f"{wire.TOPIC_ROOT}/{site}/#", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                kind = wire.parse_topic(message.topic.value)[2]
                if kind == "readings":
                    recorder.raw_batches.append(payload)
                    recorder.arrived.append(time.monotonic())
                    batch = wire.decode_readings(payload)
                    recorder.batches.append(batch)
                    if confirm:
                        await client.publish(
                            wire.topic(batch.site, batch.gateway, "receipt"),
                            wire.encode_receipt(batch.gateway, batch.site,
                                                [(batch.seq, batch.seq)], datetime.now(UTC)),
                            qos=1)
                elif kind == "cmd/ack":
                    recorder.acks.append(wire.decode_ack(payload))
                elif kind == "status":
                    recorder.statuses.append(wire.decode_status(payload))
                elif kind == "events":
                    recorder.events.extend(wire.decode_events(payload)[1])

        task = asyncio.create_task(listen())
        try:
            yield recorder
            await asyncio.sleep(0.3)  # let the last messages arrive
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def send_command(mqtt: MqttSettings, site: str, gateway_id: str,
                       payload: bytes) -> None:
    async with aiomqtt.Client(mqtt.host, mqtt.port) as client:
        await client.publish(wire.topic(site, gateway_id, "cmd"), payload, qos=1)


def gateway_config(site: str, dlt: SimBus | None, rtu: SimBus | None, *,
                   poll_s: float = 0.3, batch_s: float = 0.5, **gateway: Any) -> dict[str, Any]:
    buses: list[dict[str, Any]] = []
    if dlt is not None:
        buses.append({"name": "dlt", "protocol": "dlt645-2007", "port": dlt.port,
                      "baud": dlt.baud, "timeout_s": 0.3, "retries": 0,
                      "password": {"file": meter_password_file()},
                      "poll_interval_s": poll_s, "quantities": QUANTITIES,
                      "meters": [{"address": m.address} for m in dlt.meters]})
    if rtu is not None:
        buses.append({"name": "rtu", "protocol": "modbus", "port": rtu.port, "baud": rtu.baud,
                      "timeout_s": 0.3, "retries": 0, "model": SIM_MODEL,
                      "poll_interval_s": poll_s, "quantities": QUANTITIES,
                      "meters": [{"unit": int(m.address)} for m in rtu.meters]})
    return {"gateway": {"id": "gw1", "site": site, "batch_interval_s": batch_s,
                        "status_interval_s": 0.5, **gateway},
            "security": {"trusted_keys": [trusted_key_file()]},
            "buses": buses}
