"""Commands over a real broker to simulated meters through the real drivers: each case gets
the right ack, a repeated command id never touches the meter again, and nothing but a command
signed by a trusted key for this gateway, fresh and never seen before, moves a relay."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import (
    Recorder,
    command,
    dlt_meters,
    gateway_config,
    record,
    rtu_meters,
    send_command,
    signer_for,
    trusted_key_file,
    wait_for,
)

from firmware_sim.bus import SimBus
from firmware_sim.dlt645 import Dlt645BusProtocol
from firmware_sim.meter import SimMeter
from gateway import Gateway, config_from_dict
from meterhub import wire
from meterhub.security import write_private_file
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration


class Running:
    def __init__(self, gateway: Gateway, seen: Recorder, mqtt: MqttSettings, site: str,
                 meters: dict[str, SimMeter]) -> None:
        self.gateway, self.seen, self.mqtt, self.site, self.meters = (
            gateway, seen, mqtt, site, meters)

    async def send(self, payload: bytes) -> None:
        await send_command(self.mqtt, self.site, "gw1", payload)

    async def done(self, command_id: str, count: int = 1) -> list[wire.Ack]:
        def finished() -> bool:
            return len([a for a in self.seen.acks_for(command_id) if a.stage == "done"]) >= count

        await wait_for(finished, 15, f"{count} done ack(s) for {command_id}")
        return self.seen.acks_for(command_id)


@pytest.fixture
async def running(mqtt: MqttSettings, site: str, sim_bus: Any,
                  tmp_path: Path) -> AsyncIterator[Running]:
    dlt = sim_bus("dlt645", dlt_meters(2))
    rtu = sim_bus("modbus", rtu_meters(1))
    dlt.meters[1].faults.no_reply = True  # 000000000002 is silent
    data = gateway_config(site, dlt, rtu, poll_s=0.3)
    data["buses"][0]["report_relay_every"] = 1  # readings carry the relay state
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    stop = asyncio.Event()
    meters = {m.address: m for m in [*dlt.meters]} | {"gw1-rtu-1": rtu.meters[0]}
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
        await asyncio.sleep(0.3)  # its subscription is in place
        yield Running(gateway, seen, mqtt, site, meters)
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_relay_open_is_accepted_done_and_read_back(running: Running) -> None:
    meter = running.meters["000000000001"]
    await running.send(command("open-1", "000000000001"))
    acks = await running.done("open-1")
    assert [a.stage for a in acks] == ["accepted", "done"]
    assert (acks[1].outcome, acks[1].relay) == ("ok", "open")
    assert meter.relay_open
    seen = running.seen
    await wait_for(lambda: any(r.meter == "000000000001" and r.relay == "open"
                               for r in seen.readings), 10, "a reading with the relay open")
    await wait_for(lambda: any(e.kind == "relay_changed" for e in seen.events), 10,
                   "the relay_changed event")
    assert {r.relay for r in seen.readings if r.meter == "000000000001"} == {"closed", "open"}

    await running.send(command("close-1", "000000000001", "relay_close"))
    assert (await running.done("close-1"))[-1].relay == "closed"
    assert not meter.relay_open


async def test_modbus_relay_and_status(running: Running) -> None:
    await running.send(command("rtu-open", "gw1-rtu-1"))
    assert (await running.done("rtu-open"))[-1].relay == "open"
    assert running.meters["gw1-rtu-1"].relay_open
    await running.send(command("rtu-status", "gw1-rtu-1", "relay_status"))
    done = (await running.done("rtu-status"))[-1]
    assert (done.outcome, done.relay) == ("ok", "open")


async def test_time_sync_runs_where_the_driver_can_and_is_invalid_where_it_cannot(
    running: Running,
) -> None:
    meter = running.meters["000000000001"]
    meter.set_clock(meter.clock() + timedelta(seconds=300))
    await running.send(command("sync-1", "000000000001", "time_sync"))
    acks = await running.done("sync-1")
    assert [(a.stage, a.outcome) for a in acks] == [("accepted", None), ("done", "ok")]
    # verified by reading the clock back: the ack carries it, on time again
    assert acks[1].clock is not None and abs(acks[1].clock.drift_s) < 2.0
    await running.send(command("sync-rtu", "gw1-rtu-1", "time_sync"))
    done = (await running.done("sync-rtu"))[-1]
    assert (done.outcome, done.reason) == ("invalid", "modbus meters have no time sync")


async def test_repeated_command_id_returns_first_result_without_touching_meter(
    running: Running,
) -> None:
    meter = running.meters["000000000001"]
    await running.send(command("dup-1", "000000000001"))
    first = (await running.done("dup-1"))[-1]
    assert meter.relay_open
    meter.close_relay()  # someone closed it on site; a redelivered cut-off must not reopen it
    await running.send(command("dup-1", "000000000001"))
    acks = await running.done("dup-1", count=2)
    assert [a.stage for a in acks] == ["accepted", "done", "done"]
    assert acks[2] == first, "the first result, byte for byte"
    assert not meter.relay_open, "the meter was not touched again"
    assert running.gateway.stats.commands_repeated == 1


async def test_expired_command_is_not_executed(running: Running) -> None:
    await running.send(command("old-1", "000000000001", issued_in_s=-60, expires_in_s=-1))
    acks = await running.done("old-1")
    assert [(a.stage, a.outcome) for a in acks] == [("done", "rejected")]
    assert (acks[0].reason or "").startswith("expired")
    assert not running.meters["000000000001"].relay_open


async def test_unknown_meter(running: Running) -> None:
    await running.send(command("who-1", "999999999999"))
    acks = await running.done("who-1")
    assert [(a.stage, a.outcome) for a in acks] == [("done", "unknown_meter")]
    assert "999999999999" in (acks[0].reason or "")


async def test_meter_that_does_not_answer(running: Running) -> None:
    await running.send(command("mute-1", "000000000002"))
    acks = await running.done("mute-1")
    assert [a.stage for a in acks] == ["accepted", "done"]
    assert (acks[1].outcome, acks[1].relay) == ("no_answer", None)
    assert "000000000002" in (acks[1].reason or "")


async def test_invalid_command_is_acked_invalid(running: Running) -> None:
    await running.send(command("bad-1", "000000000001", "explode"))
    acks = await running.done("bad-1")
    assert [(a.stage, a.outcome) for a in acks] == [("done", "invalid")]
    assert "action" in (acks[0].reason or "")


async def test_meter_that_rejects_the_command(mqtt: MqttSettings, site: str, sim_bus: Any,
                                              tmp_path: Path) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    data = gateway_config(site, dlt, None, poll_s=1.0)
    data["buses"][0]["password"] = "000000"  # the meter wants 123456
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
        await asyncio.sleep(0.3)
        await send_command(mqtt, site, "gw1", command("pw-1", "000000000001"))
        await wait_for(lambda: len(seen.acks_for("pw-1")) >= 2, 15, "the done ack")
        stop.set()
        await asyncio.wait_for(task, 15)
    done = seen.acks_for("pw-1")[-1]
    assert (done.stage, done.outcome) == ("done", "rejected")
    assert not dlt.meters[0].relay_open


# ---------------------------------------------------------------------------- signed commands


def _tampered() -> bytes:
    obj = json.loads(command("forged-1", "000000000002"))
    obj["meter"] = "000000000001"  # the signature covered meter ...02
    return json.dumps(obj).encode()


REFUSALS = {
    "unsigned": lambda: json.dumps({
        "schema": 1, "command_id": "forged-1", "meter": "000000000001", "action": "relay_open",
        "gateway": "gw1", "params": {}, "issued_at": "2030-01-01T00:00:00.000Z",
        "expires_at": "2030-01-01T01:00:00.000Z", "nonce": "n"}).encode(),
    "unknown_key": lambda: command("forged-1", "000000000001", signer=signer_for("outsider")),
    "bad_signature": _tampered,
    "wrong_gateway": lambda: command("forged-1", "000000000001", gateway="gw2"),
    "expired": lambda: command("forged-1", "000000000001", issued_in_s=-60, expires_in_s=-1),
    "issued_in_future": lambda: command("forged-1", "000000000001", issued_in_s=600,
                                        expires_in_s=900),
}


async def assert_refused(running: Running, payload: bytes, command_id: str, reason: str,
                         meter: str = "000000000001") -> None:
    """Refused with ``reason`` in the ack and a security event; the relay did not move."""
    sim = running.meters[meter]
    before = sim.relay_open
    earlier = [a for a in running.seen.acks_for(command_id) if a.stage == "done"]
    await running.send(payload)
    acks = await running.done(command_id, count=len(earlier) + 1)
    assert [(a.stage, a.outcome) for a in acks][-1] == ("done", "rejected")
    assert (acks[-1].reason or "").startswith(reason), acks[-1].reason
    await wait_for(lambda: any(e.kind == "security_refused" and e.data.get("reason") == reason
                               for e in running.seen.events), 10, f"a {reason} event")
    assert sim.relay_open == before, "a refused command reached the meter"


@pytest.mark.parametrize("reason", list(REFUSALS))
async def test_command_refused(running: Running, reason: str) -> None:
    await assert_refused(running, REFUSALS[reason](), "forged-1", reason)
    assert running.gateway.stats.commands_refused == 1
    assert running.gateway.stats.commands_done == 0


async def test_replayed_command_is_refused(running: Running) -> None:
    meter = running.meters["000000000001"]
    captured = command("cut-1", "000000000001")
    await running.send(captured)
    assert (await running.done("cut-1"))[-1].outcome == "ok"
    meter.close_relay()
    await assert_refused(running, captured, "cut-1", "replayed")
    assert not meter.relay_open
    # billing's retry is signed anew (new nonce): the first result, meter untouched
    await running.send(command("cut-1", "000000000001"))
    acks = await running.done("cut-1", count=3)
    assert acks[-1].outcome == "ok" and not meter.relay_open


async def test_unknown_meter_raises_a_security_event(running: Running) -> None:
    await running.send(command("who-2", "999999999999"))
    await running.done("who-2")
    await wait_for(lambda: any(e.kind == "security_refused" and e.meter == "999999999999"
                               for e in running.seen.events), 10, "the security event")


async def _run_gateway(mqtt: MqttSettings, site: str, data: dict[str, Any], state: Path,
                       payloads: list[tuple[str, bytes]]) -> Recorder:
    """Start a gateway, send ``payloads`` one by one (each waits for its done ack), stop."""
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=state)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
        await asyncio.sleep(0.3)
        for command_id, payload in payloads:
            count = len([a for a in seen.acks_for(command_id) if a.stage == "done"]) + 1
            await send_command(mqtt, site, "gw1", payload)
            await wait_for(lambda c=command_id, n=count: len(  # type: ignore[misc]
                [a for a in seen.acks_for(c) if a.stage == "done"]) >= n, 15, command_id)
        stop.set()
        await asyncio.wait_for(task, 15)
    return seen


async def test_replay_after_a_restart_is_refused(mqtt: MqttSettings, site: str, sim_bus: Any,
                                                 tmp_path: Path) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    data = gateway_config(site, dlt, None, poll_s=1.0)
    captured = command("cut-r", "000000000001")
    first = await _run_gateway(mqtt, site, data, tmp_path, [("cut-r", captured)])
    assert first.acks_for("cut-r")[-1].outcome == "ok"
    dlt.meters[0].close_relay()
    again = await _run_gateway(mqtt, site, data, tmp_path, [("cut-r", captured)])
    done = again.acks_for("cut-r")[-1]
    assert (done.outcome, (done.reason or "").split(":")[0]) == ("rejected", "replayed")
    assert not dlt.meters[0].relay_open


async def test_key_rotation_and_no_trusted_keys(mqtt: MqttSettings, site: str, sim_bus: Any,
                                                tmp_path: Path) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    data = gateway_config(site, dlt, None, poll_s=1.0)
    data["security"]["trusted_keys"] = [trusted_key_file(), trusted_key_file("billing-2025")]
    seen = await _run_gateway(mqtt, site, data, tmp_path / "a", [
        ("old-key", command("old-key", "000000000001")),
        ("new-key", command("new-key", "000000000001", "relay_close",
                            signer=signer_for("billing-2025"))),
    ])
    assert [seen.acks_for(c)[-1].outcome for c in ("old-key", "new-key")] == ["ok", "ok"]
    data["security"]["trusted_keys"] = []  # a gateway that trusts nobody obeys nobody
    seen = await _run_gateway(mqtt, site, data, tmp_path / "b",
                              [("nobody", command("nobody", "000000000001"))])
    assert seen.acks_for("nobody")[-1].outcome == "rejected"
    assert not dlt.meters[0].relay_open


async def test_secrets_stay_out_of_status_and_logs(
    mqtt: MqttSettings, site: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meter_password, mqtt_password = "730519", "mqtt-pw-Zq81xv"
    secret = tmp_path / "meter.password"
    write_private_file(secret, f"{meter_password}\n".encode())
    monkeypatch.setenv("GW_TEST_MQTT_PASSWORD", mqtt_password)
    with SimBus(Dlt645BusProtocol(password=meter_password), dlt_meters(1), baud=9600,
                parity="E") as dlt:
        data = gateway_config(site, dlt, None, poll_s=0.3)
        data["buses"][0]["password"] = {"file": str(secret)}
        data["buses"][0]["read_status"] = True
        data["mqtt"] = {"url": mqtt.url, "username": "gw1",
                        "password": {"env": "GW_TEST_MQTT_PASSWORD"}}
        caplog.set_level(logging.DEBUG)
        gateway = Gateway(config_from_dict(data), state_dir=tmp_path)  # broker from the config
        assert gateway.mqtt.password == mqtt_password
        stop = asyncio.Event()
        async with record(mqtt, site) as seen:
            task = asyncio.create_task(gateway.run(stop))
            await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
            await asyncio.sleep(0.3)
            await send_command(mqtt, site, "gw1", command("pw-ok", "000000000001"))
            await wait_for(lambda: len(seen.acks_for("pw-ok")) >= 2, 15, "the done ack")
            await wait_for(lambda: len(seen.statuses) >= 2, 10, "statuses")
            stop.set()
            await asyncio.wait_for(task, 15)
    assert seen.acks_for("pw-ok")[-1].outcome == "ok", "the file's password opened the relay"
    published = repr([seen.statuses, seen.events, seen.acks])
    for value in (meter_password, mqtt_password):
        assert value not in published
        assert value not in caplog.text


async def test_a_meter_without_a_relay_refuses_relay_commands_and_says_so(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    data = gateway_config(site, dlt, None, poll_s=0.3)
    data["buses"][0]["meters"][0]["has_relay"] = False  # a 2007 model without a relay
    data["buses"][0]["clock_check_s"] = 10
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        try:
            await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
            await asyncio.sleep(0.3)
            await send_command(mqtt, site, "gw1", command("open-x", "000000000001"))
            await wait_for(lambda: any(a.stage == "done" for a in seen.acks_for("open-x")), 15,
                           "the refusal")
            [done] = [a for a in seen.acks_for("open-x") if a.stage == "done"]
            assert done.outcome == "invalid" and "has no relay" in (done.reason or "")
            assert not dlt.meters[0].relay_open
            # the status says what the meter can do; the readings carry its clock, no relay
            await wait_for(lambda: any(r.clock is not None for r in seen.readings), 10,
                           "a reading with a clock check")
            assert all(r.relay is None for r in seen.readings)
            await wait_for(lambda: bool(seen.statuses), 10, "a status")
            caps = seen.statuses[-1].health["meters"]["000000000001"]["capabilities"]
            assert caps == {"relay": False, "time_sync": True, "clock": True}
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
