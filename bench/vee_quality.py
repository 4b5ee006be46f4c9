"""Benchmark: precision and recall of every validation rule on a labelled day of simulated meters.

A fleet of simulated households (``firmware_sim.recording.labelled_fleet``: 1-3 kW mean load,
15 % read-to-read noise, registers to 0.01 kWh) is read every 15 minutes on a simulated clock
for ``--history-days`` healthy days and one labelled day on which half of the meters get one
fault each, the nine kinds in turn (surge, drop, zero-with-current, reset, rollover, backwards
step, clock drift, voltage, no reply). The simulator records each fault as a label. Every rule
then judges the whole span at once (``collector.vee.quality.judge_reads``: the same
composition a validation pass runs, ``collector.vee.judge``), and the flags of the labelled day
are scored against the labels (``collector.vee.quality.score``: a flag is true when a fault
that makes its rule fire overlaps the interval, give or take one read; a fault is found when
its rule flags it).

Second check, the false alarm of issue 17: the demo's fleet (1.2, 0.8 and 0.8 kW, no
faults) read every 2 s into 5-second intervals for 4 minutes must open no review item. The
same run judged with the evidence windows switched off (one register step of evidence, no
power-factor margin, no sustained-window test) shows what the queue got before.

No database and no broker: the rules are pure; the database pass around them is tested in
``tests/collector/test_vee_quality.py``. The last line printed is one JSON object: per rule
``ratio_precision_<rule>`` and ``ratio_recall_<rule>`` (null when the rule never fired / had
no fault to find), ``goal_ratio_min`` (0.95, the issue's goal for each), the healthy demo's
review items, and the rates of the simulation and of judging.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# run as a script this file's folder comes first on sys.path: put the project root there
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from collector.config import ValidationConfig  # noqa: E402
from collector.vee import judge, quality  # noqa: E402
from firmware_sim.meter import SimMeter  # noqa: E402
from firmware_sim.recording import Recording, SimClock, labelled_fleet, record  # noqa: E402

DAY = 1772928000.0  # 2026-03-08 00:00 UTC
GOAL = 0.95


def _judged(rec: Recording, interval_s: int, cfg: ValidationConfig) -> judge.Verdict:
    verdict, _ = quality.judge_recording(rec, interval_s, cfg)
    if verdict is None:
        raise SystemExit("no interval came out of the recording")
    return verdict


def labelled_day(
    meters: int, history_days: int, every_s: int, seed: int, cfg: ValidationConfig, say: Any
) -> dict[str, Any]:
    clock = SimClock(DAY - history_days * 86400.0)
    fleet, plan = labelled_fleet(meters, clock, DAY, history_days, seed=seed)
    t0 = time.perf_counter()
    rec = record(fleet, clock, clock.now, DAY + 86400.0, every_s, plan, jitter_s=5.0, seed=seed)
    t1 = time.perf_counter()
    verdict, labels = quality.judge_recording(rec, every_s, cfg)
    t2 = time.perf_counter()
    if verdict is None:
        raise SystemExit("no interval came out of the recording")
    scores = quality.score(verdict.iv, labels, every_s, float(every_s), (DAY, DAY + 86400.0))
    say(
        f"{meters} meters, {history_days} + 1 days read every {every_s} s: {len(rec.t)} reads "
        f"simulated in {t1 - t0:.1f} s, {len(verdict.iv)} intervals judged in {t2 - t1:.2f} s"
    )
    say(
        f"{'rule':<22} {'flags':>6} {'true':>6} {'faults':>6} {'found':>6} "
        f"{'precision':>9} {'recall':>7}"
    )
    out: dict[str, Any] = {}
    for rule, s in scores.items():
        p = "-" if s.precision is None else f"{s.precision:.3f}"
        r = "-" if s.recall is None else f"{s.recall:.3f}"
        say(f"{rule:<22} {s.flags:>6} {s.true_flags:>6} {s.faults:>6} {s.found:>6} {p:>9} {r:>7}")
        out[f"ratio_precision_{rule}"] = None if s.precision is None else round(s.precision, 4)
        out[f"ratio_recall_{rule}"] = None if s.recall is None else round(s.recall, 4)
        out[f"flags_{rule}"] = s.flags
        out[f"faults_{rule}"] = s.faults
    out["reads_simulated_per_s"] = round(len(rec.t) / (t1 - t0))
    out["intervals_judged_per_s"] = round(len(verdict.iv) / (t2 - t1))
    out["labelled_meters"] = meters
    out["history_days"] = history_days
    out["faults_injected"] = len(plan)
    return out


def healthy_demo(cfg: ValidationConfig) -> tuple[dict[str, int], dict[str, int]]:
    """Review items of the demo's fleet over 4 minutes (2 s reads, 5 s intervals), with the
    evidence rules and without them."""
    start = DAY + 10 * 3600.0
    clock = SimClock(start)
    # the demo's healthy meters (launcher/demo.py _fleet_spec): no noise, no faults
    fleet = [
        SimMeter(address=f"demo{i}", base_load_kw=kw, energy_kwh=1000.0 + 250 * i, now=clock)
        for i, kw in enumerate((1.2, 0.8, 0.8))
    ]
    rec = record(fleet, clock, start, start + 240.0, 2.0, jitter_s=0.5)
    with_evidence = quality.review_items(_judged(rec, 5, cfg).iv, 5)
    bare = replace(cfg, evidence_steps=1e-9, zero_min_power_factor=1.0, max_window_intervals=1)
    without = quality.review_items(_judged(rec, 5, bare).iv, 5)
    return with_evidence, without


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument(
        "--history-days",
        type=int,
        default=7,
        help="healthy days before the labelled one (the surge/drop baseline)",
    )
    ap.add_argument("--every", type=int, default=900, help="read interval = interval (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    args = ap.parse_args(argv)
    if args.meters < 10 or args.history_days < 2 or 86400 % args.every:
        ap.error("--meters >= 10, --history-days >= 2, --every must divide a day")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    cfg = ValidationConfig()
    result = labelled_day(args.meters, args.history_days, args.every, args.seed, cfg, say)
    judged = [v for k, v in result.items() if k.startswith("ratio_") and v is not None]
    result["ratio_worst"] = min(judged) if judged else None
    result["goal_ratio_min"] = GOAL
    items, before = healthy_demo(cfg)
    result["healthy_demo_review_items"] = sum(items.values())
    result["healthy_demo_review_items_without_evidence"] = sum(before.values())
    say(
        f"healthy demo fleet, 4 min: {sum(items.values())} review items "
        f"({sum(before.values())} without the evidence rules: {before})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
