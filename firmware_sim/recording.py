"""A labelled recording: simulated meters read on a simulated clock while faults are injected
on a plan, with the labels the meters recorded (:mod:`firmware_sim.labels`).

Days of a thousand meters cannot go through pseudo-terminals in a benchmark's time, and need
not: the physics and the faults are the meters' own (:class:`~firmware_sim.meter.SimMeter`),
read here at the values a gateway would publish (register to 0.01 kWh, current, voltage and
the meter clock to the second). What validation makes of them is scored against the labels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from firmware_sim.labels import FaultLabel
from firmware_sim.meter import RESIDENTIAL_PROFILE, SimMeter

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Lasting faults: begun at ``at``, ended ``duration_s`` later; the others are instants.
LASTING = ("surge", "drop", "zero_with_current", "voltage", "clock_drift", "no_reply")


class SimClock:
    """Simulated time for meters built with ``now=clock``."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class Injection:
    """A fault to inject: ``size`` is the load or voltage factor, the kWh stepped back, the
    clock drift in s/day, or the register value a reset lands on. A rollover is arranged by
    starting the meter's register near its maximum; it is labelled when the register wraps."""

    meter: int
    kind: str
    at: float
    duration_s: float = 0.0
    size: float = 0.0


@dataclass(frozen=True, slots=True)
class Recording:
    """Reads sorted by (meter, t); NaN where a quantity was not read."""

    meter_ids: list[str]
    meter: I64
    t: F64
    energy: F64
    current: F64
    voltage: F64
    clock_skew: F64
    labels: list[FaultLabel]


def _begin(m: SimMeter, inj: Injection) -> None:
    match inj.kind:
        case "surge" | "drop":
            m.surge(inj.size)
        case "zero_with_current":
            m.stick_register(True)
        case "voltage":
            m.voltage_fault(inj.size)
        case "clock_drift":
            m.drift_clock(inj.size)
        case "no_reply":
            m.silence(True)
        case "reset":
            m.reset_register(inj.size)
        case "backwards":
            m.step_back(inj.size)
        case "rollover":
            pass  # the register was started near its maximum
        case _:
            raise ValueError(f"unknown fault kind {inj.kind!r}")


def _end(m: SimMeter, inj: Injection) -> None:
    match inj.kind:
        case "surge" | "drop":
            m.surge(1.0)
        case "zero_with_current":
            m.stick_register(False)
        case "voltage":
            m.voltage_fault(1.0)
        case "clock_drift":  # stopped and time-synced
            m.drift_clock(0.0)
            m.set_clock(datetime.fromtimestamp(m.now(), UTC))
        case "no_reply":
            m.silence(False)


def record(
    meters: Sequence[SimMeter],
    clock: SimClock,
    start: float,
    end: float,
    every_s: float,
    injections: Sequence[Injection] = (),
    jitter_s: float = 0.0,
    seed: int = 0,
) -> Recording:
    """Read every meter every ``every_s`` from ``start`` to ``end`` (each read up to
    ``jitter_s`` late, as a busy bus makes it), injecting the planned faults on the way."""
    rng = random.Random(seed)
    events: list[list[tuple[float, int, Injection]]] = [[] for _ in meters]
    for inj in injections:
        events[inj.meter].append((inj.at, 0, inj))
        if inj.kind in LASTING:
            events[inj.meter].append((inj.at + inj.duration_s, 1, inj))
    for ev in events:
        ev.sort(key=lambda x: (x[0], x[1]))
    due = [0] * len(meters)
    steps = int((end - start) // every_s) + 1
    n = steps * len(meters)
    meter = np.empty(n, dtype=np.int64)
    t, energy, current, voltage, skew = (np.full(n, np.nan) for _ in range(5))
    k = 0
    for step in range(steps):
        nominal = start + step * every_s
        for i, m in enumerate(meters):
            at = nominal + (rng.uniform(0, jitter_s) if jitter_s else 0.0)
            ev = events[i]
            while due[i] < len(ev) and ev[due[i]][0] <= at:
                when, ending, inj = ev[due[i]]
                clock.now = when
                (_end if ending else _begin)(m, inj)
                due[i] += 1
            clock.now = at
            if m.faults.no_reply:
                continue
            meter[k], t[k] = i, at
            energy[k] = m.value("energy_import_total")
            current[k] = m.value("current_a")
            voltage[k] = m.value("voltage_a")
            skew[k] = round((m.clock() - datetime.fromtimestamp(at, UTC)).total_seconds())
            k += 1
    order = np.lexsort((t[:k], meter[:k]))
    labels = [lb for m in meters for lb in m.labels.snapshot(until=end)]
    return Recording(
        [m.address for m in meters],
        meter[:k][order],
        t[:k][order],
        energy[:k][order],
        current[:k][order],
        voltage[:k][order],
        skew[:k][order],
        labels,
    )


def _expected_use(base_kw: float, start: float, end: float) -> float:
    """kWh a meter of this mean load uses from start to end on the default profile."""
    hours = np.arange(np.floor(start / 3600.0), np.ceil(end / 3600.0))
    cover = np.minimum(hours + 1, end / 3600.0) - np.maximum(hours, start / 3600.0)
    factor = np.array(RESIDENTIAL_PROFILE)[(hours % 24).astype(int)]
    return float(base_kw * (factor * cover).sum())


def labelled_fleet(
    n_meters: int,
    clock: SimClock,
    day_start: float,
    history_days: int,
    share: float = 0.5,
    seed: int = 1,
    kinds: Sequence[str] = (
        "surge",
        "drop",
        "zero_with_current",
        "reset",
        "rollover",
        "backwards",
        "clock_drift",
        "voltage",
        "no_reply",
    ),
) -> tuple[list[SimMeter], list[Injection]]:
    """Households with varied loads (1-3 kW mean, 15 % read-to-read noise) and, for
    ``share`` of them, one fault each on the day starting at ``day_start`` (after
    ``history_days`` healthy days), kinds taken in turn. Sizes are ones a person reviewing the
    queue would want to see: a surge of 3-6x, a drop to at most a fifth, a stuck register or a
    silence of at least 45 minutes, a voltage 10-20 % outside 220 V, a clock drifting 10-50
    minutes a day, a register stepping back 50-500 kWh."""
    rng = random.Random(seed)
    start = day_start - history_days * 86400.0
    meters: list[SimMeter] = []
    plan: list[Injection] = []
    faulty = rng.sample(range(n_meters), round(n_meters * share))
    kind_of = {i: kinds[j % len(kinds)] for j, i in enumerate(sorted(faulty))}
    for i in range(n_meters):
        base = rng.uniform(1.0, 3.0)
        energy = rng.uniform(1_000.0, 50_000.0)
        kind = kind_of.get(i)
        at = day_start + rng.uniform(1.0, 18.0) * 3600.0
        if kind == "rollover":  # the register reaches its top at about `at`
            energy = SimMeter.register_max_kwh - _expected_use(base, start, at)
        meters.append(
            SimMeter(
                address=f"m{i:05d}",
                base_load_kw=base,
                energy_kwh=energy,
                load_noise=0.15,
                seed=seed * 100_003 + i,
                now=clock,
            )
        )
        if kind is None or kind == "rollover":
            continue
        size = {
            "surge": rng.uniform(3.0, 6.0),
            "drop": rng.uniform(0.0, 0.2),
            "voltage": rng.choice((rng.uniform(0.8, 0.9), rng.uniform(1.2, 1.25))),
            "clock_drift": rng.uniform(600.0, 3000.0) * rng.choice((1, -1)),
            "backwards": rng.uniform(50.0, 500.0),
            "reset": 0.0,
        }.get(kind, 0.0)
        duration = {
            "clock_drift": rng.uniform(4.0, 6.0) * 3600.0,
            "voltage": rng.uniform(0.5, 2.0) * 3600.0,
        }.get(kind, rng.uniform(0.75, 3.0) * 3600.0)
        plan.append(Injection(i, kind, at, duration, size))
    return meters, plan
