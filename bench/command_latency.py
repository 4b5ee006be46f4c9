"""Benchmark: how long a cut-off and a restore take, billing to meter and back, at 2400 baud.

Everything is real except the meters: PostgreSQL (METERHUB_DATABASE_URL, a fresh database
created and dropped here), the broker (METERHUB_MQTT_URL, or an embedded one), the collector
(commissioning the gateway's meters), the billing engine with its defaults (fallback poll
5 s: it runs on notifications) and the gateway with its DL/T645 driver on pseudo-terminals.
The simulated DL/T645-2007 meters run in a child process with wire-time emulation (every
byte at its character time, 2400 baud 8E1, a turnaround per reply), and the gateway keeps
the bus busy polling them, so a command always meets a poll in some phase.

Each cycle takes one account dry with an adjustment (its ladder timers are zero), waits for
the cut-off to be verified, tops it up and waits for the restore to be verified, then
pauses a random fraction of a second so the next command meets the bus in another phase:

* ``cutoff_*_ms``: the cut-off command row created (``billing_commands.created_at``) ->
  its state ``verified`` (audit row: ack "done" with the relay read back open);
* ``restore_*_ms``: the top-up committed (its ledger row) -> the restore ``verified``.

The wire floor of one command is computed from the frames the gateway actually exchanged
for it (relay control 1CH and the status-word read-back, requests and replies, at the
line's character time, plus the meter's turnaround for each reply): no implementation can
be faster on that line. ``p99`` is the nearest rank (with fewer than 100 cycles, the worst).

    python bench/command_latency.py [--cycles 50] [--meters 4] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BAUD = 2400
TURNAROUND_S = 0.02
QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]
RELAY_CONTROL = 0x1C
GOAL_P99_MS = 1000.0


# ---------------------------------------------------------------------------- the meters


def serve_sim(meters: int) -> None:
    """Child process: one DL/T645 line; print its port and timing, run until stdin closes."""
    from firmware_sim.bus import SimBus
    from firmware_sim.dlt645 import Dlt645BusProtocol
    from firmware_sim.meter import SimMeter

    protocol = Dlt645BusProtocol()
    bus = SimBus(
        protocol,
        [SimMeter(f"{n:012d}", energy_kwh=100.0 + n) for n in range(1, meters + 1)],
        baud=BAUD,
        parity="E",
        turnaround_s=TURNAROUND_S,
    ).start()
    print(
        json.dumps(
            {
                "port": bus.port,
                "char_time": bus.char_time,
                "turnaround_s": bus.turnaround_s,
                "reply_preamble": protocol.reply_preamble,
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    bus.stop()


class Sim:
    def __init__(self, meters: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-sim", str(meters)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.line: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(10)


# ---------------------------------------------------------------------------- the wire floor


@dataclass
class Wire:
    """Bytes of the exchanges the gateway made for relay commands (request, reply)."""

    reply_preamble: int
    commands: list[list[int]] = field(default_factory=list)  # bytes per command's exchanges
    _open: dict[str, list[int]] = field(default_factory=dict)  # meter -> its command so far

    def wrap(self, inner: Any) -> Any:
        wire = self

        class Recorded:
            name = inner.name

            async def exchange(self, request: bytes, framer: Any, timeout_s: float) -> Any:
                reply = await inner.exchange(request, framer, timeout_s)
                wire.saw(request, len(reply.encode(wire.reply_preamble)))
                return reply

            async def send(self, request: bytes) -> None:
                await inner.send(request)

            async def close(self) -> None:
                await inner.close()

        return Recorded()

    def saw(self, request: bytes, reply_bytes: int) -> None:
        frame = request.lstrip(b"\xfe")  # preamble, then 68 A0..A5 68 C L ...
        meter, control = frame[1:7][::-1].hex(), frame[8]
        if control == RELAY_CONTROL:
            self._open[meter] = [len(request) + reply_bytes]
        elif meter in self._open:  # the status word read back right after the relay
            self._open[meter].append(len(request) + reply_bytes)
            self.commands.append(self._open.pop(meter))

    def floors_ms(self, char_time: float, turnaround_s: float) -> list[float]:
        return [(sum(c) * char_time + len(c) * turnaround_s) * 1e3 for c in self.commands]


# ---------------------------------------------------------------------------- the run


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 1)


def _ms(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() * 1e3


async def _verified(
    url: str, account: str, action: str, after: datetime, timeout: float = 30.0
) -> tuple[datetime, datetime]:
    """(created_at, verified at) of the account's ``action`` command created after ``after``."""
    import psycopg

    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = await (
                await conn.execute(
                    """SELECT c.created_at, a.at FROM billing_commands c
                   JOIN billing_command_audit a ON a.command_id = c.command_id
                   WHERE c.account_id = %s AND c.action = %s AND c.created_at > %s
                     AND a.to_state = 'verified'""",
                    (account, action, after),
                )
            ).fetchone()
            if row is not None:
                return row[0], row[1]
            await asyncio.sleep(0.01)
    raise TimeoutError(f"{action} of {account} not verified within {timeout:.0f} s")


async def run(cycles: int, meters: int, seed: int) -> dict[str, Any]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from billing import BillingConfig, BillingEngine, CreditSettings, adjust, create_account, topup
    from collector import Collector, CollectorConfig
    from gateway import Gateway, config_from_dict
    from gateway.drivers import open_driver
    from launcher.embedded import embedded_broker
    from launcher.keys import generate_key_pair
    from meterhub import db
    from meterhub.security import write_private_file
    from meterhub.settings import mqtt_settings, require_database_url

    server = require_database_url(None)
    dbname = f"meterhub_bench_latency_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    url = make_conninfo(server, dbname=dbname)
    site = f"lat{uuid.uuid4().hex[:6]}"
    rng = random.Random(seed)
    sim = Sim(meters)
    try:
        db.migrate(url)
        with contextlib.ExitStack() as stack:
            mqtt = mqtt_settings() or stack.enter_context(embedded_broker())
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            _, public_key = generate_key_pair(tmp / "billing.pem")
            write_private_file(tmp / "meter.password", b"123456\n")
            wire = Wire(sim.line["reply_preamble"])

            def driver(bus: Any) -> Any:
                d = open_driver(bus)
                d.transport = wire.wrap(d.transport)  # type: ignore[attr-defined]
                return d

            gateway = Gateway(
                config_from_dict(
                    {
                        "gateway": {"id": "gw1", "site": site, "batch_interval_s": 1.0},
                        "security": {"trusted_keys": [str(public_key)]},
                        "buses": [
                            {
                                "name": "rs485",
                                "protocol": "dlt645-2007",
                                "port": sim.line["port"],
                                "baud": BAUD,
                                "timeout_s": 1.0,
                                "retries": 1,
                                "password": {"file": str(tmp / "meter.password")},
                                "poll_interval_s": 1.0,
                                "quantities": QUANTITIES,
                                "meters": [{"address": f"{n:012d}"} for n in range(1, meters + 1)],
                            }
                        ],
                    }
                ),
                mqtt=mqtt,
                state_dir=tmp / "gateway",
                driver_factory=driver,
            )
            collector = Collector(
                CollectorConfig(
                    database_url=url,
                    mqtt=mqtt,
                    shared_group=None,
                    site=site,
                    leave_on_stop=True,
                    validate_every_s=1.0,
                    commission_unknown_meters=True,
                    client_id=f"bench-collector-{site}",
                )
            )
            billing = BillingEngine(
                BillingConfig(database_url=url, mqtt=mqtt, signing_key_path=tmp / "billing.pem")
            )
            stop = asyncio.Event()
            tasks = [asyncio.create_task(p.run(stop)) for p in (gateway, collector, billing)]
            try:
                accounts = await _open_accounts(url, site, meters, create_account, CreditSettings)
                cut, restore, to_queue = [], [], []
                for i in range(cycles):
                    account = accounts[i % len(accounts)]
                    for t in tasks:
                        if t.done():
                            t.result()  # a part died: say why
                    started = datetime.now(UTC)
                    with psycopg.connect(url, autocommit=True) as conn:
                        adjust(conn, account, "-1000.00", f"dry-{i}", reason="bench")
                    created, verified = await _verified(url, account, "relay_open", started)
                    cut.append(_ms(created, verified))
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                    with psycopg.connect(url, autocommit=True) as conn:
                        paid = topup(conn, account, "1000.00", "wechat", f"pay-{i}")
                    queued, verified = await _verified(url, account, "relay_close", started)
                    restore.append(_ms(paid.created_at, verified))
                    to_queue.append(_ms(paid.created_at, queued))
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                stats = billing.stats
                stages = _stages(url)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    finally:
        sim.close()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    floors = wire.floors_ms(sim.line["char_time"], sim.line["turnaround_s"])
    floor = statistics.median(floors)
    result: dict[str, Any] = {
        "line": f"{BAUD} 8E1",
        "meters": meters,
        "quantities": QUANTITIES,
        "cycles": cycles,
        "turnaround_ms": TURNAROUND_S * 1e3,
        "cutoff_p50_ms": _p(cut, 0.5),
        "cutoff_p99_ms": _p(cut, 0.99),
        "cutoff_max_ms": round(max(cut), 1),
        "restore_p50_ms": _p(restore, 0.5),
        "restore_p99_ms": _p(restore, 0.99),
        "restore_max_ms": round(max(restore), 1),
        "wire_floor_ms": round(floor, 1),
        "wire_floor_commands": len(floors),
        "wire_bytes_per_command": statistics.median(sum(c) for c in wire.commands),
        "ratio_cutoff_p50_to_floor": round(_p(cut, 0.5) / floor, 2),
        "ratio_restore_p50_to_floor": round(_p(restore, 0.5) / floor, 2),
        # where the time goes (medians over every command): billing's pass after the
        # top-up, billing to the gateway, the gateway's queue for the bus plus the wire
        # plus the ack back and applied
        "topup_to_queued_ms": round(statistics.median(to_queue), 1),
        **stages,
        "billing_wakeups": dict(stats.wakeups),
        "billing_acks_refused": dict(stats.acks_refused),
        "billing_ticks": stats.ticks,
        "billing_poll_interval_s": billing.config.poll_interval_s,
        "goal_cutoff_p99_ms": GOAL_P99_MS,
        "goal_restore_p99_ms": GOAL_P99_MS,
    }
    return result


def _stages(url: str) -> dict[str, float]:
    """Median milliseconds between the states of the commands (from their audit rows)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT c.created_at,
                      min(a.at) FILTER (WHERE a.to_state = 'sent'),
                      min(a.at) FILTER (WHERE a.to_state = 'accepted'),
                      min(a.at) FILTER (WHERE a.to_state = 'verified')
               FROM billing_commands c JOIN billing_command_audit a USING (command_id)
               GROUP BY c.command_id, c.created_at"""
        ).fetchall()
    done = [r for r in rows if None not in r]
    names = ("queued_to_sent_ms", "sent_to_accepted_ms", "accepted_to_verified_ms")
    return {
        name: round(statistics.median(_ms(r[i], r[i + 1]) for r in done), 1)
        for i, name in enumerate(names)
    }


async def _open_accounts(
    url: str, site: str, meters: int, create_account: Any, credit: Any
) -> list[str]:
    """One account per meter once the collector has commissioned them all; its ladder has
    no waiting, so the cut-off follows the adjustment at once."""
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        with psycopg.connect(url) as conn:
            known = conn.execute(
                "SELECT count(*) FROM meter_contract WHERE site = %s", (site,)
            ).fetchone()
        if known is not None and known[0] >= meters:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the collector did not commission the meters within 60 s")
        await asyncio.sleep(0.2)
    settings = credit(alert_thresholds=(), warning_to_final_s=0.0, final_to_cutoff_s=0.0)
    accounts = [f"acc-{n}" for n in range(1, meters + 1)]
    with psycopg.connect(url, autocommit=True) as conn:
        for n, account in enumerate(accounts, 1):
            create_account(
                conn,
                account,
                meters=[f"{n:012d}"],
                tariff="residential-flat",
                credit=settings,
                opening_balance="100.00",
                charge_from=datetime.now(UTC),
            )
    return accounts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=50, help="cut-off + restore cycles")
    ap.add_argument("--meters", type=int, default=4, help="meters on the 2400 baud line")
    ap.add_argument("--seed", type=int, default=1, help="of the random pauses")
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("--serve-sim", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sim:
        serve_sim(args.serve_sim)
        return
    result = asyncio.run(run(args.cycles, args.meters, args.seed))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
