"""Poison commands never stop the gateway: each is refused with a reason (acked when it names
a well-formed command id, always reported as an event) and the next good command runs. A task
that fails is restarted and its restarts show in the status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import command, dlt_meters, gateway_config, record, send_command, wait_for

from gateway import Gateway, config_from_dict
from meterhub.settings import MqttSettings
from meterhub.supervise import Supervisor, safe_text

GOOD_SHAPE = '{"schema":1,"attempt":1,"command_id":"%s","meter":"000000000001","gateway":"gw1"'

POISONS: dict[str, bytes] = {
    # (the command id the refusal is acked to; the "-" ones are too big or too deep to read
    # or name no well-formed id, so they are only reported as events)
    "-surrogate-id": b'{"schema":1,"command_id":"\\ud800","meter":"\\udfff"}',
    "p-surrogate-param": (GOOD_SHAPE % "p-surrogate-param"
                          + ',"params":{"x":"\\ud800"}}').encode(),
    "p-bigint": (GOOD_SHAPE % "p-bigint" + ',"attempt":' + "9" * 5000 + "}").encode(),
    "p-inf": (GOOD_SHAPE % "p-inf" + ',"attempt":1e400}').encode(),
    "p-nan": (GOOD_SHAPE % "p-nan" + ',"attempt":NaN}').encode(),
    "-deep": (GOOD_SHAPE % "p-deep" + ',"params":' + "[" * 20000 + "]" * 20000 + "}").encode(),
    "-big": (GOOD_SHAPE % "p-big" + ',"params":{"pad":"' + "x" * 70_000 + '"}}').encode(),
    "p-badmeter": (GOOD_SHAPE.replace("000000000001", "m/../" + "x" * 80) % "p-badmeter"
                   + "}").encode(),
}
NAMELESS = [
    b"[" * 60_000 + b"]" * 60_000,  # deep and oversize at once
    ('{"schema":1,"command_id":"' + "x" * 65 + '"}').encode(),  # id too long
    b'{"schema":1,"command_id":"a b/c#"}',  # id outside the alphabet
    b"\xff\xfe\x00garbage",
    b"",
]


def test_safe_text_escapes_surrogates_and_bounds_length() -> None:
    assert safe_text("a\ud800b").encode() == b"a\\ud800b"
    assert len(safe_text("x" * 1000, 50)) == 50


async def test_a_failing_task_is_restarted_and_counted() -> None:
    supervisor = Supervisor(backoff_min_s=0.01, backoff_max_s=0.02)
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")

    await asyncio.wait_for(supervisor.run("flaky", flaky), 5)
    assert supervisor.as_dict() == {"flaky": {"restarts": 2, "last_error": "RuntimeError: boom 2"}}


@pytest.mark.integration
async def test_poison_commands_then_a_good_one(mqtt: MqttSettings, site: str, sim_bus: Any,
                                               tmp_path: Path) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    gateway = Gateway(config_from_dict(gateway_config(site, dlt, None, poll_s=1.0)), mqtt=mqtt,
                      state_dir=tmp_path)
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
        await asyncio.sleep(0.3)
        for payload in [*POISONS.values(), *NAMELESS]:
            await send_command(mqtt, site, "gw1", payload)
        await send_command(mqtt, site, "gw1", command("good-1", "000000000001"))
        await wait_for(lambda: any(a.stage == "done" for a in seen.acks_for("good-1")), 20,
                       "the good command's done ack")
        refused = len(POISONS) + len(NAMELESS)
        await wait_for(lambda: len([e for e in seen.events if e.kind == "security_refused"])
                       >= refused, 10, "one event per poison")
        await wait_for(lambda: any("tasks" in s.health for s in seen.statuses), 10,
                       "a status with the task report")
        assert not task.done(), "the gateway is still running"
        stop.set()
        await asyncio.wait_for(task, 15)
    assert seen.acks_for("good-1")[-1].outcome == "ok" and dlt.meters[0].relay_open
    acked = [c for c in POISONS if not c.startswith("-")]
    for command_id in acked:
        acks = seen.acks_for(command_id)
        assert [(a.stage, a.outcome) for a in acks] == [("done", "invalid")], command_id
        assert acks[0].reason and "cmd" in acks[0].reason
    named = {a.command_id for a in seen.acks} - {"good-1"}
    assert named == set(acked), "no ack to an id that is not well-formed or not readable"
    assert gateway.stats.commands_refused == refused
    assert gateway.stats.commands_failed == 0
    tasks = seen.statuses[-1].health["tasks"]
    assert {"mqtt", "batcher", "sender", "inbox", "status", "bus dlt"} <= set(tasks)
    assert all(t["restarts"] == 0 for t in tasks.values()), tasks
    assert json.dumps(tasks)
