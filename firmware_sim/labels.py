"""What a simulated meter was made to do wrong, and when: the ground truth of a labelled run.

Every physics fault a :class:`~firmware_sim.meter.SimMeter` takes on (a surge, a stuck
register, a sagging voltage, a drifting clock ...) is written here with its simulated start
and end, so a run of simulated meters can be scored against what validation flagged: which
flags were real faults (precision) and which faults were flagged (recall). An instant fault
(a reset, a rollover, a backward step) has ``end == start``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

#: Fault kinds a labelled run can hold, with what each one means on the meter.
KINDS: dict[str, str] = {
    "surge": "load multiplied by a factor above 1",
    "drop": "load multiplied by a factor below 1 (0: gone)",
    "zero_with_current": "energy register stuck while current flows",
    "reset": "register set back to (near) zero",
    "rollover": "register wrapped past its maximum",
    "backwards": "register set back by an amount, landing near neither zero nor the maximum",
    "clock_drift": "meter clock drifting from true time",
    "voltage": "supply voltage out of its normal band",
    "no_reply": "meter silent on the bus",
}


@dataclass(frozen=True, slots=True)
class FaultLabel:
    """One injected fault of one meter; ``end`` is None while it lasts."""

    meter: str
    kind: str
    start: float  # simulated epoch seconds
    end: float | None
    detail: tuple[tuple[str, Any], ...] = ()

    def closed(self, at: float) -> FaultLabel:
        return FaultLabel(self.meter, self.kind, self.start, at, self.detail)


@dataclass
class FaultLog:
    """The labels of one meter, appended as faults begin and end (thread-safe)."""

    meter: str = ""
    labels: list[FaultLabel] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def begin(self, kind: str, at: float, **detail: Any) -> None:
        """A lasting fault starts (an open one of the same kind ends first)."""
        self.end(kind, at)
        self._append(FaultLabel(self.meter, kind, at, None, tuple(sorted(detail.items()))))

    def end(self, kind: str, at: float) -> None:
        """The open fault of this kind, if any, ends at ``at``."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            for i in range(len(self.labels) - 1, -1, -1):
                label = self.labels[i]
                if label.kind == kind and label.end is None:
                    self.labels[i] = label.closed(at)
                    return

    def instant(self, kind: str, at: float, **detail: Any) -> None:
        """A fault that happens at one moment (a reset, a rollover)."""
        self._append(FaultLabel(self.meter, kind, at, at, tuple(sorted(detail.items()))))

    def _append(self, label: FaultLabel) -> None:
        if label.kind not in KINDS:
            raise ValueError(f"unknown fault kind {label.kind!r}")
        with self._lock:
            self.labels.append(label)

    def snapshot(self, until: float | None = None) -> list[FaultLabel]:
        """Every label, open ones closed at ``until`` when given."""
        with self._lock:
            return [
                lb.closed(until) if lb.end is None and until is not None else lb
                for lb in self.labels
            ]
