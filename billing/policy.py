"""Pure credit policy: alerts, the warn -> final warning -> cut-off ladder, restore, forecast
and risk grade. No I/O here: the engine gathers the facts, these functions decide, so every
rule can be tested as a table of cases.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class PolicyError(ValueError):
    """Credit settings or a window calendar that cannot be used; says which key and why."""


class Phase(enum.StrEnum):
    """Where an account stands on the disconnect ladder."""

    NORMAL = "normal"
    WARNED = "warned"  # below the cut-off limit, first warning sent
    FINAL = "final"  # final warning sent; cut-off due ``final_to_cutoff_s`` later
    CUT = "cut"  # cut-off decided (relay wanted open) until a top-up restores


@dataclass(frozen=True, slots=True)
class CreditSettings:
    """Per-account credit rules (yuan). Cut-off applies below ``cutoff_threshold`` minus
    ``emergency_credit``; restore once the balance is above ``restore_threshold``."""

    alert_thresholds: tuple[Decimal, ...] = (Decimal(50), Decimal(20), Decimal(0))
    cutoff_threshold: Decimal = Decimal(0)
    emergency_credit: Decimal = Decimal(0)
    restore_threshold: Decimal = Decimal(0)
    warning_to_final_s: float = 3600.0
    final_to_cutoff_s: float = 1800.0  # the "30 minutes" notice before a cut-off
    renotice_after_s: float = 86400.0  # a final warning older than this is given again

    @property
    def cutoff_limit(self) -> Decimal:
        return self.cutoff_threshold - self.emergency_credit

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_thresholds": [str(t) for t in self.alert_thresholds],
            "cutoff_threshold": str(self.cutoff_threshold),
            "emergency_credit": str(self.emergency_credit),
            "restore_threshold": str(self.restore_threshold),
            "warning_to_final_s": self.warning_to_final_s,
            "final_to_cutoff_s": self.final_to_cutoff_s,
            "renotice_after_s": self.renotice_after_s,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CreditSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise PolicyError(f"credit settings: unknown keys {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                if key == "alert_thresholds":
                    kw[key] = tuple(sorted((Decimal(str(v)) for v in value), reverse=True))
                elif key.endswith("_s"):
                    kw[key] = float(value)
                else:
                    kw[key] = Decimal(str(value))
            except (InvalidOperation, ValueError, TypeError):
                raise PolicyError(f"credit settings: {key} = {value!r} is not a number") from None
        s = cls(**kw)
        if s.emergency_credit < 0:
            raise PolicyError("credit settings: emergency_credit cannot be negative")
        if s.restore_threshold < s.cutoff_limit:
            raise PolicyError(
                "credit settings: restore_threshold below the cut-off limit would restore a "
                "meter that is cut off again at once"
            )
        return s


@dataclass(frozen=True, slots=True)
class ProtectedWindows:
    """When no cut-off may happen: nights, weekends, holidays and declared extreme-weather
    days, all in local time. An empty calendar protects nothing."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    nightly: tuple[time, time] | None = None  # e.g. (18:00, 08:00), may span midnight
    weekends: bool = False
    holidays: frozenset[date] = frozenset()  # public holidays and extreme-weather days

    def contains(self, ts: datetime) -> bool:
        local = ts.astimezone(self.zone)
        d = local.date()
        if d in self.holidays or (self.weekends and d.weekday() >= 5):
            return True
        if self.nightly is None:
            return False
        start, end = self.nightly
        t = local.time()
        return (start <= t < end) if start < end else (t >= start or t < end)

    def next_open(self, ts: datetime) -> datetime:
        """The first moment at or after ``ts`` outside every window (minute resolution)."""
        t = ts
        for _ in range(60 * 24 * 40):
            if not self.contains(t):
                return t
            t = (t + timedelta(minutes=1)).replace(second=0, microsecond=0)
        raise PolicyError("protected windows leave no time for a cut-off in 40 days")

    def to_json(self) -> dict[str, Any]:
        return {
            "timezone": self.zone.key,
            "nightly": [t.strftime("%H:%M") for t in self.nightly] if self.nightly else None,
            "weekends": self.weekends,
            "holidays": sorted(d.isoformat() for d in self.holidays),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> ProtectedWindows:
        if not raw:
            return cls()
        try:
            zone = ZoneInfo(str(raw.get("timezone", "Asia/Shanghai")))
        except (ZoneInfoNotFoundError, ValueError):
            raise PolicyError(f"windows.timezone: {raw.get('timezone')!r} is not a zone") from None
        nightly = raw.get("nightly")
        try:
            night = (
                (time.fromisoformat(nightly[0]), time.fromisoformat(nightly[1]))
                if nightly
                else None
            )
            holidays = frozenset(date.fromisoformat(h) for h in raw.get("holidays", []))
        except (ValueError, TypeError, IndexError) as exc:
            raise PolicyError(f"windows: {exc}") from None
        return cls(zone, night, bool(raw.get("weekends", False)), holidays)


class Action(enum.StrEnum):
    NONE = "none"
    WARN = "warn"
    FINAL_WARNING = "final_warning"
    CUTOFF = "cutoff"
    HOLD = "hold"  # a cut-off is due but may not happen now (reason says why)
    AWAIT_APPROVAL = "await_approval"
    CLEAR = "clear"  # balance recovered before a cut-off: back to normal
    RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""  # for people: alerts, audit
    hold: str | None = None  # for a HOLD / AWAIT_APPROVAL: the kind of hold, stable text


@dataclass(frozen=True, slots=True)
class AccountState:
    """The facts one decision needs."""

    balance: Decimal
    phase: Phase
    phase_since: datetime
    settings: CreditSettings
    windows: ProtectedWindows = field(default_factory=ProtectedWindows)
    pending_topup: bool = False
    cutoff_approved: bool = False
    manual_hold: str | None = None  # every meter held on by an operator: why (for people)


def decide(state: AccountState, now: datetime, group_cutoffs: int, max_group_cutoffs: int) -> (
    Decision
):
    """Next step on the disconnect ladder.

    ``group_cutoffs`` is how many households of this account's building/transformer would be
    cut at once (this one included); above ``max_group_cutoffs`` a person must approve.
    """
    s = state.settings
    b = state.balance
    if state.phase is Phase.CUT:
        if b > s.restore_threshold:
            return Decision(Action.RESTORE, f"balance {b} above restore threshold "
                                            f"{s.restore_threshold}")
        return Decision(Action.NONE)
    if b >= s.cutoff_limit:
        if state.phase in (Phase.WARNED, Phase.FINAL):
            return Decision(Action.CLEAR, f"balance {b} back at or above {s.cutoff_limit}")
        return Decision(Action.NONE)
    since = now - state.phase_since
    if state.phase is Phase.NORMAL:
        return Decision(Action.WARN, f"balance {b} below cut-off limit {s.cutoff_limit}")
    if state.phase is Phase.WARNED:
        if since.total_seconds() >= s.warning_to_final_s:
            return Decision(Action.FINAL_WARNING, f"cut-off in {s.final_to_cutoff_s:.0f} s")
        return Decision(Action.NONE)
    # Phase.FINAL
    if since.total_seconds() < s.final_to_cutoff_s:
        return Decision(Action.NONE)
    if state.manual_hold:
        # an operator restored (or kept on) the supply by hand: the cut-off waits for the
        # hold to end; the final notice is renewed then if it went stale meanwhile
        return Decision(Action.HOLD, state.manual_hold, hold="manual hold")
    if state.pending_topup:
        return Decision(Action.HOLD, "a top-up is pending", hold="pending top-up")
    if state.windows.contains(now):
        until = state.windows.next_open(now)
        return Decision(Action.HOLD, f"protected window until {until.isoformat()}",
                        hold="protected window")
    if since.total_seconds() > s.final_to_cutoff_s + s.renotice_after_s:
        # the final notice is stale (held by windows for long): give it again first
        return Decision(Action.FINAL_WARNING, "final notice renewed before cut-off")
    if group_cutoffs > max_group_cutoffs and not state.cutoff_approved:
        return Decision(
            Action.AWAIT_APPROVAL,
            f"{group_cutoffs} households of one group at once (limit {max_group_cutoffs})",
            hold="awaiting approval",
        )
    return Decision(Action.CUTOFF, f"balance {b} below {s.cutoff_limit} after final warning")


# ---------------------------------------------------------------------------- alerts


def crossed_alerts(
    thresholds: Sequence[Decimal], alerted: frozenset[Decimal], balance: Decimal
) -> tuple[list[Decimal], frozenset[Decimal]]:
    """Thresholds newly crossed downwards (each alerts once per crossing) and the new set of
    alerted thresholds; a threshold re-arms once the balance is back at or above it."""
    below = frozenset(t for t in thresholds if balance < t)
    new = sorted(below - alerted, reverse=True)
    return new, below


# ---------------------------------------------------------------------------- forecast


def days_of_credit(
    balance: Decimal, hourly_cost: Sequence[Decimal], now_local: datetime, horizon_days: int = 366
) -> Decimal | None:
    """Days until the balance runs out, spending the account's own typical cost for each
    hour of the week (168 values, Monday 00:00 first). None: no consumption, no end in sight
    within the horizon."""
    if len(hourly_cost) != 168:
        raise PolicyError("hourly_cost needs 168 values (7 days x 24 hours)")
    if balance <= 0:
        return Decimal(0)
    if sum(hourly_cost, Decimal(0)) <= 0:
        return None
    idx = now_local.weekday() * 24 + now_local.hour
    left = balance
    for h in range(horizon_days * 24):
        cost = hourly_cost[(idx + h) % 168]
        if cost >= left and cost > 0:
            return ((Decimal(h) + left / cost) / 24).quantize(Decimal("0.1"))
        left -= cost
    return None


# ---------------------------------------------------------------------------- risk grade


@dataclass(frozen=True, slots=True)
class RiskHistory:
    """An account's last year: late top-ups (paid while below zero), times the balance went
    below zero, disconnections, days spent in arrears."""

    late_topups: int = 0
    times_below_zero: int = 0
    disconnections: int = 0
    days_in_arrears: int = 0


def risk_score(h: RiskHistory) -> int:
    return 3 * h.disconnections + 2 * h.times_below_zero + h.late_topups + h.days_in_arrears // 7


def risk_grade(h: RiskHistory) -> str:
    """A (no trouble) to D (chronic): early warning for staged reminders or a repayment plan."""
    score = risk_score(h)
    if score == 0:
        return "A"
    if score <= 3:
        return "B"
    if score <= 9:
        return "C"
    return "D"


def utcnow() -> datetime:
    return datetime.now(UTC)
