"""A relay command waits for nothing it need not: at 2400 baud, through the real DL/T645
driver and a simulated bus on a pty, it goes between two exchanges of the poll it arrives in
(which then carries on), before the cycle's other meters are polled; and its acks leave at
once, not behind a backlog of batches being replayed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import command, dlt_meters, gateway_config, record, send_command, wait_for

from gateway import Gateway, config_from_dict
from gateway.config import BusConfig
from gateway.drivers import Driver, open_driver
from gateway.drivers.dlt645 import Dlt645Driver
from gateway.transport import Framer, Transport
from meterhub.settings import MqttSettings

pytestmark = pytest.mark.integration
RELAY_CONTROL = 0x1C


@dataclass(frozen=True)
class Exchange:
    at: float
    meter: str
    control: int


class LineLog:
    """The DL/T645 requests a driver put on the line, in order (read from the frames)."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.watch: tuple[str, asyncio.Event] | None = None

    def wrap(self, inner: Transport) -> Transport:
        log = self

        class Logged:
            name = inner.name

            async def exchange(self, request: bytes, framer: Framer[Any], timeout_s: float) -> Any:
                log.saw(request)
                return await inner.exchange(request, framer, timeout_s)

            async def send(self, request: bytes) -> None:
                await inner.send(request)

            async def close(self) -> None:
                await inner.close()

        return Logged()

    def saw(self, request: bytes) -> None:
        frame = request.lstrip(b"\xfe")  # preamble, then 68 A0..A5 68 C L ...
        meter = frame[1:7][::-1].hex()
        self.exchanges.append(Exchange(time.monotonic(), meter, frame[8]))
        if self.watch is not None and self.watch[0] == meter:
            self.watch[1].set()


async def test_a_command_goes_between_two_exchanges_of_the_poll_in_progress(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    dlt = sim_bus("dlt645", dlt_meters(4), baud=2400, turnaround_s=0.02)
    data = gateway_config(site, dlt, None, poll_s=5.0)  # a cycle takes about 4 x 1 s
    data["buses"][0]["report_relay_every"] = 1  # each poll ends with the status word
    line = LineLog()

    def logged_driver(bus: BusConfig) -> Driver:
        driver = open_driver(bus)
        assert isinstance(driver, Dlt645Driver)
        driver.transport = line.wrap(driver.transport)
        return driver

    gateway = Gateway(
        config_from_dict(data), mqtt=mqtt, state_dir=tmp_path, driver_factory=logged_driver
    )
    first, last = (m.address for m in (dlt.meters[0], dlt.meters[-1]))
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: gateway.connected, 10, "the gateway to connect")
        await wait_for(lambda: len(seen.readings) >= 4, 20, "the first cycle")
        await asyncio.sleep(0.3)  # the gateway's subscription is in place by now
        # in the second cycle, the command goes out as soon as the poll of the first meter
        # puts its first request on the line
        polling = asyncio.Event()
        line.watch = (first, polling)
        started = len(line.exchanges)
        await asyncio.wait_for(polling.wait(), 10)
        await send_command(mqtt, site, "gw1", command("cut-1", last))
        await wait_for(
            lambda: any(a.stage == "done" for a in seen.acks_for("cut-1")),
            15,
            "the command's done ack",
        )
        await wait_for(lambda: len(seen.readings) >= 8, 20, "the second cycle")
        stop.set()
        await asyncio.wait_for(task, 15)
    done = next(a for a in seen.acks_for("cut-1") if a.stage == "done")
    assert (done.outcome, done.relay) == ("ok", "open")
    cycle = line.exchanges[started:]
    relay = next(i for i, x in enumerate(cycle) if x.control == RELAY_CONTROL)
    # relay control and its read-back, both to the last meter, inside the first meter's poll
    assert [x.meter for x in cycle[relay : relay + 2]] == [last, last]
    before, after = cycle[:relay], cycle[relay + 2 :]
    assert before and {x.meter for x in before} == {first}, before
    assert after[0].meter == first, after[:2]  # the interrupted poll carries on
    assert len(before) <= 2, before  # it waited for at most the exchange in flight (or so)
    # the cycle's other meters were all polled after the command
    assert {x.meter for x in after} == {m.address for m in dlt.meters}


async def test_acks_do_not_wait_behind_a_paced_backlog(
    mqtt: MqttSettings, site: str, sim_bus: Any, tmp_path: Path
) -> None:
    dlt = sim_bus("dlt645", dlt_meters(1))
    meter = dlt.meters[0].address
    data = gateway_config(site, dlt, None, poll_s=0.05, batch_s=0.05)
    # one batch every 5 s: batches pile up and the batch sender is always pacing
    data["buffer"] = {"replay_rate": 0.2, "publish_timeout_s": 1.0}
    gateway = Gateway(config_from_dict(data), mqtt=mqtt, state_dir=tmp_path)
    took: list[float] = []
    stop = asyncio.Event()
    async with record(mqtt, site) as seen:
        task = asyncio.create_task(gateway.run(stop))
        await wait_for(lambda: len(seen.batches) >= 1, 10, "the first batch")
        await asyncio.sleep(0.5)  # the gateway's subscription is in place by now
        for i, action in enumerate(["relay_open", "relay_close", "relay_open"]):
            started = time.monotonic()
            await send_command(mqtt, site, "gw1", command(f"c{i}", meter, action))
            await wait_for(
                lambda i=i: any(a.stage == "done" for a in seen.acks_for(f"c{i}")),
                10,
                f"the done ack of c{i}",
            )
            took.append(time.monotonic() - started)
        backlog = (await asyncio.to_thread(gateway._store.depth))[0]  # type: ignore[union-attr]
        published = len(seen.batches)
        stop.set()
        await asyncio.wait_for(task, 15)
    assert max(took) < 1.5, took  # not up to 5 s behind the next paced batch
    assert backlog >= 2, (backlog, published)  # the batch sender was pacing a backlog
