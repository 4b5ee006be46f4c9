"""``meterhub sim``: run a fleet of simulated meters until interrupted, saying where they are."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from firmware_sim.fleet import Fleet
from firmware_sim.meter import Faults
from meterhub.i18n import N_, _

_FAULTS = sorted(
    name for name in Faults.__dataclass_fields__ if not name.endswith("_once")
    and name != "slow_reply_s"
)
_PHYSICS = ("surge", "drop", "reset", "rollover", "replace", "stuck", "sag", "swell", "backwards",
            "drift")

# What the simulator tells its user, in one place (translated where printed: _()).
MSG_BUS = N_("bus {name}: {protocol} at {line} on {port}{pty}")
MSG_PTY = N_("  (pseudo-terminal {pty})")
MSG_METER = N_("  {what} {address}{model}")
MSG_READY = N_("{buses} buses, {meters} meters simulated. Ctrl-C to stop.")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="run simulated meters on simulated RS-485 buses (pseudo-terminals) or TCP",
        description="Run a fleet of simulated DL/T645 and Modbus meters from a TOML file and "
        "print where each bus is. Faults can be set here, in the file, or from Python.",
    )
    p.add_argument("--config", type=Path, required=True, help="fleet TOML (see configs/)")
    p.add_argument("--link-dir", type=Path, default=None,
                   help="give every serial bus without a 'port' a stable name here: a symlink "
                   "DIR/<bus name> to its pseudo-terminal")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ADDRESS:KIND",
        help=f"inject a fault: KIND is one of {', '.join(_FAULTS + list(_PHYSICS))} "
        "or slow=SECONDS",
    )
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="on exit, write the physics faults injected (firmware_sim.labels) as "
                   "JSON lines: meter, kind, start, end (epoch s), detail")
    p.set_defaults(handler=_run)


def apply_fault(fleet: Fleet, spec: str) -> None:
    """``ADDRESS:KIND`` -> the fault set on that meter (ValueError says what is wrong)."""
    address, _, kind = spec.partition(":")
    try:
        meter = fleet.meter(address)
    except KeyError:
        raise ValueError(f"--fault {spec!r}: no meter {address!r} in the fleet") from None
    if kind == "no_reply":
        meter.silence()
    elif kind in _FAULTS:
        setattr(meter.faults, kind, True)
    elif kind.startswith("slow="):
        meter.faults.slow_reply_s = float(kind.removeprefix("slow="))
    elif kind == "surge":
        meter.surge(5.0)
    elif kind == "drop":
        meter.surge(0.0)
    elif kind == "reset":
        meter.reset_register()
    elif kind == "rollover":
        meter.near_rollover()
    elif kind == "replace":
        meter.replace()
    elif kind == "stuck":  # the register stops while current flows: zero_with_current
        meter.stick_register()
    elif kind in ("sag", "swell"):
        meter.voltage_fault(0.85 if kind == "sag" else 1.2)
    elif kind == "backwards":
        meter.step_back(100.0)
    elif kind == "drift":
        meter.drift_clock(600.0)
    else:
        raise ValueError(f"--fault {spec!r}: unknown kind {kind!r}")


def _run(args: argparse.Namespace) -> int:
    fleet = Fleet.load(args.config, link_dir=args.link_dir)
    done = threading.Event()
    # both set here: a process started in the background of a script inherits SIGINT ignored,
    # and Python then raises no KeyboardInterrupt for Ctrl-C
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with fleet:
        for spec in args.fault:
            apply_fault(fleet, spec)
        print(describe(fleet), flush=True)
        while not done.wait(0.5):  # wakes up: a signal is seen at once, whatever the load
            pass
    if args.labels:
        now = time.time()
        with args.labels.open("w", encoding="utf-8") as out:
            for m in fleet.meters():
                for lb in m.labels.snapshot(until=now):
                    out.write(json.dumps({"meter": lb.meter, "kind": lb.kind, "start": lb.start,
                                          "end": lb.end, "detail": dict(lb.detail)}) + "\n")
    return 0


def describe(fleet: Fleet) -> str:
    """Every bus (port, protocol, line settings) and its meters, and how to stop."""
    lines = []
    for name, protocol, port, _kind in fleet.describe():
        pty = fleet.port(name)
        lines.append(_(MSG_BUS, name=name, protocol=protocol, line=fleet.bus_line(name),
                                    port=port,
                                    pty=_(MSG_PTY, pty=pty) if pty != port else ""))
        for meter in fleet.meters(name):
            lines.append(_(MSG_METER,
                what="unit" if protocol == "modbus" else "address", address=meter.address,
                model=f" ({meter.model})" if meter.model else ""))
    lines.append(_(MSG_READY, buses=len(fleet.describe()), meters=len(fleet.meters())))
    return "\n".join(lines)
