"""Benchmark: how close the gateway gets to the wire limit of a busy RS-485 line.

Two simulated lines with wire-time emulation, each with a backlog (every meter always due):
32 DL/T645-2007 meters at 2400 baud 8E1 and 32 Modbus RTU meters at 9600 baud 8N1. The
simulators run in a child process, so this process's CPU time is the gateway's alone
(scheduler, drivers, batching, SQLite, MQTT to a real broker).

The physical limit comes from what actually crossed the wire: every byte at its character
time (start + data + parity + stop bits over the baud rate), plus the meter's turnaround per
reply, plus for Modbus RTU the 3.5-character silent interval that must close each frame
(request and reply). ``ratio_*`` = line time those transactions physically need / wall time,
which equals achieved transactions per second / the line's limit for the same frames.

    python bench/gateway_bus.py [--seconds 30] [--json] [--line dlt645|modbus]

``--line`` runs one line alone (both by default), e.g. for the CPU of one protocol.

Needs a broker: METERHUB_MQTT_URL, or a mosquitto binary for an embedded one. The last line
with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METERS = 32
QUANTITIES = ["energy_import_total", "voltage_a", "current_a", "power_active_total"]
LINES = {
    # name: (protocol, baud, parity, turnaround_s, model)
    "dlt645": ("dlt645-2007", 2400, "E", 0.020, None),
    "modbus": ("modbus", 9600, "N", 0.010, "eastron-sdm120"),
}


# ---------------------------------------------------------------------------- the meters


def serve_sim() -> None:
    """Child process: run both lines, print their ports, answer 'stats' lines on stdin."""
    from firmware_sim.bus import SimBus
    from firmware_sim.dlt645 import Dlt645BusProtocol
    from firmware_sim.meter import SimMeter
    from firmware_sim.modbus import ModbusRtuBusProtocol

    buses: dict[str, SimBus] = {}
    for name, (protocol, baud, parity, turnaround, model) in LINES.items():
        if protocol == "modbus":
            meters = [SimMeter(str(u), protocol="modbus", model=model, energy_kwh=u)
                      for u in range(1, METERS + 1)]
            wire: Any = ModbusRtuBusProtocol()
        else:
            meters = [SimMeter(f"{n:012d}", energy_kwh=n) for n in range(1, METERS + 1)]
            wire = Dlt645BusProtocol()
        buses[name] = SimBus(wire, meters, baud=baud, parity=parity,
                             turnaround_s=turnaround).start()
    print(json.dumps({n: b.port for n, b in buses.items()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "stats":
            break
        print(json.dumps({n: {"requests": b.stats.requests, "replies": b.stats.replies,
                              "bytes_in": b.stats.bytes_in, "bytes_out": b.stats.bytes_out,
                              "char_time": b.char_time, "turnaround_s": b.turnaround_s}
                          for n, b in buses.items()}), flush=True)
    for bus in buses.values():
        bus.stop()


class Sim:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        lines = [arg for name in LINES for arg in ("--line", name)]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-sim", *lines], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ports: dict[str, str] = json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, dict[str, float]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(10)


# ---------------------------------------------------------------------------- the limit


def line_time(name: str, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds of line occupancy the transactions between two snapshots physically need."""
    ct = after["char_time"]
    requests = after["requests"] - before["requests"]
    replies = after["replies"] - before["replies"]
    wire_bytes = (after["bytes_in"] - before["bytes_in"]) + (after["bytes_out"]
                                                              - before["bytes_out"])
    turnaround = after["turnaround_s"]
    if name == "modbus":
        # t3.5 closes every frame (Modbus over serial line 2.5.1.1; a fixed 1.75 ms above
        # 19200 baud): the meter may answer only after the request's t3.5, so its turnaround
        # counts from the request's end but is at least t3.5; the next request may start only
        # t3.5 after the reply.
        t35 = 1.75e-3 if LINES[name][1] > 19200 else 3.5 * ct
        turnaround = max(turnaround, t35)
        silent = replies * t35
    else:
        silent = 0.0  # DL/T645 has no silent interval; the turnaround is the meter's delay
    busy = wire_bytes * ct + replies * turnaround + silent
    return {"requests": requests, "replies": replies, "bytes": wire_bytes,
            "wire_s": wire_bytes * ct, "silent_s": silent,
            "turnaround_s": replies * turnaround, "physical_busy_s": busy}


# ---------------------------------------------------------------------------- the gateway


async def run(seconds: float, warmup: float) -> dict[str, Any]:
    from gateway import Gateway, config_from_dict
    from launcher.embedded import embedded_broker
    from meterhub.settings import mqtt_settings

    sim = Sim()
    try:
        buses = []
        for name, (protocol, baud, parity, _, model) in LINES.items():
            bus: dict[str, Any] = {
                "name": name, "protocol": protocol, "port": sim.ports[name], "baud": baud,
                "parity": parity, "timeout_s": 1.0, "retries": 1, "poll_interval_s": 1.0,
                "quantities": QUANTITIES,
                # the bench measures polling: no relay reads between polls, no relay commands
                "relay_control": False, "report_relay_every": 0}
            if protocol == "modbus":
                bus["model"] = model
                bus["meters"] = [{"unit": u} for u in range(1, METERS + 1)]
            else:
                bus["meters"] = [{"address": f"{n:012d}"} for n in range(1, METERS + 1)]
            buses.append(bus)
        config = config_from_dict({"gateway": {"id": "bench", "site": f"bench{os.getpid()}",
                                               "batch_interval_s": 5.0}, "buses": buses})
        with contextlib.ExitStack() as stack:
            mqtt = mqtt_settings() or stack.enter_context(embedded_broker())
            state = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            gateway = Gateway(config, mqtt=mqtt, state_dir=state)
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            await asyncio.sleep(warmup)
            before = sim.stats()
            readings_before = gateway.stats.readings_taken
            cpu_before, wall_before = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            cpu = time.process_time() - cpu_before
            wall = time.monotonic() - wall_before
            after = sim.stats()
            readings = gateway.stats.readings_taken - readings_before
            stop.set()
            await asyncio.wait_for(task, 30)
            published = gateway.stats.readings_published
            taken = gateway.stats.readings_taken
    finally:
        sim.close()

    result: dict[str, Any] = {"seconds": round(wall, 2), "meters_per_line": METERS,
                              "quantities": QUANTITIES}
    for name, (protocol, baud, parity, turnaround, _) in LINES.items():
        t = line_time(name, before[name], after[name])
        achieved = t["requests"] / wall
        limit = t["requests"] / t["physical_busy_s"] if t["physical_busy_s"] else 0.0
        result[name] = {
            "protocol": protocol, "line": f"{baud} 8{parity}1", "turnaround_ms": turnaround * 1e3,
            "transactions": int(t["requests"]),
            # a reply in flight at a snapshot shifts this by one either way
            "unanswered": max(0, int(t["requests"] - t["replies"])),
            "bytes_per_transaction": round(t["bytes"] / max(t["requests"], 1), 1),
            "tps_achieved": round(achieved, 2), "tps_limit": round(limit, 2),
            "wire_s": round(t["wire_s"], 2), "silent_s": round(t["silent_s"], 2),
            "turnaround_s": round(t["turnaround_s"], 2),
        }
        result[f"ratio_{name}"] = round(achieved / limit, 3) if limit else 0.0
    result["readings"] = readings
    result["readings_published_total"] = published
    result["readings_taken_total"] = taken
    result["gateway_cpu_s"] = round(cpu, 3)
    result["cpu_s_per_1000_readings"] = round(cpu / readings * 1000, 3) if readings else None
    # the goal's unit: share of one core when reading 1,000 readings per minute
    result["core_share_at_1000_readings_per_min"] = (
        round(cpu / readings * 1000 / 60, 4) if readings else None)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--line", action="append", choices=list(LINES),
                        help="run only this line (repeatable; default: all)")
    parser.add_argument("--serve-sim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in list(LINES):
        if args.line and name not in args.line:
            del LINES[name]
    if args.serve_sim:
        serve_sim()
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    result = asyncio.run(run(args.seconds, args.warmup))
    for name in LINES:
        r = result[name]
        print(f"{name:7} {r['line']:>9}: {r['tps_achieved']:6.2f} tx/s of {r['tps_limit']:6.2f} "
              f"physical ({r['bytes_per_transaction']} B/tx, turnaround {r['turnaround_ms']} "
              f"ms) ratio {result['ratio_' + name]:.3f}")
    print(f"gateway CPU {result['cpu_s_per_1000_readings']} s per 1000 readings = "
          f"{result['core_share_at_1000_readings_per_min']:.2%} of a core at 1000 readings/min")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
