"""Pure postpaid rules: who still owes what on which bill, the late-payment penalty, ageing,
and the collection ladder's schedule. No I/O: the database modules gather facts, these
functions decide, so every rule is testable as a table of cases or a property.

Payments pay the oldest debt first. So rather than keeping an allocation table, the unpaid
part of each bill is derived: the account's billed debt at a moment (what its last bill left
unpaid, less what was credited since) is laid over the bills' debt items newest first.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billing.errors import BillingError
from billing.money import to_fen

CLASSES = ("residential", "low_voltage", "high_voltage")
ONE_YUAN_FEN = 100


class CollectionSettingsError(BillingError):
    """Collection settings that cannot be used; names the key and why."""


@dataclass(frozen=True, slots=True)
class CollectionSettings:
    """The practice's numbers (defaults from the Supply Business Rules); all configurable."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    due_after_days: int = 7  # a bill unpaid on the 8th day after its notice is in arrears
    reminder_days: tuple[int, ...] = (3,)  # reminders this many days before the due date
    notice_hour: int = 9  # local hour at which ladder notices go out
    stop_after_days: int = 30  # supply may be stopped after more than this many days overdue
    cut_notice_days: int = 3  # planned-disconnection notice this many days before (3-7)
    max_notice_days: int = 7
    final_notice_s: int = 1800  # the renewed notice 30 minutes before the cut
    mass_households: int = 50  # more than this of one compound at once: posted notice
    posted_notice_days: int = 2
    residential_rate: Decimal = Decimal("0.001")  # per day of the unpaid amount
    current_year_rate: Decimal = Decimal("0.002")  # other classes, arrears of this year
    earlier_year_rate: Decimal = Decimal("0.003")  # other classes, arrears across years
    minimum_penalty_fen: int = ONE_YUAN_FEN
    escalate_periods: int = 2  # bills in arrears within a year -> escalation flag
    large_arrears_fen: int = 1_000_000  # 10 000 yuan: listed separately
    good_payer_months: int = 12  # a clean record this long marks a good payer
    # good-payer discount off a bill's energy charges (off by default: a commercial choice):
    # this fraction of the charges (exact, rounded half up to the fen) plus a fixed amount,
    # never more than the charges themselves
    good_payer_discount_rate: Decimal = Decimal(0)
    good_payer_discount_fen: int = 0
    # high-voltage in-month settlement: (day of the month, share of the expected monthly
    # amount); what the shares leave is settled by the month's bill
    hv_instalments: tuple[tuple[int, Decimal], ...] = (
        (10, Decimal("0.3")),
        (20, Decimal("0.3")),
    )
    class_tariffs: Mapping[str, str] = field(
        default_factory=lambda: {
            "residential": "residential-tiered",
            "low_voltage": "commercial-tou",
            "high_voltage": "commercial-tou",
        }
    )

    def __post_init__(self) -> None:
        if not 3 <= self.cut_notice_days <= self.max_notice_days <= 7:
            raise CollectionSettingsError(
                "cut_notice_days: the planned-disconnection notice must come 3 to 7 days "
                f"before the cut (got {self.cut_notice_days}, max {self.max_notice_days})"
            )
        if self.due_after_days < 0 or self.stop_after_days < 1:
            raise CollectionSettingsError("due_after_days/stop_after_days: must be positive")
        if any(d <= 0 for d in self.reminder_days):
            raise CollectionSettingsError("reminder_days: days before the due date, each > 0")
        if not 0 <= self.notice_hour <= 23:
            raise CollectionSettingsError("notice_hour: 0 to 23")
        if not 0 <= self.good_payer_discount_rate < 1 or self.good_payer_discount_fen < 0:
            raise CollectionSettingsError(
                "good_payer_discount_rate/_fen: a rate from 0 (off) below 1 and a fixed "
                "amount of 0 or more fen"
            )
        check_instalments(self.hv_instalments)
        unknown = set(self.class_tariffs) - set(CLASSES)
        if unknown:
            raise CollectionSettingsError(f"class_tariffs: unknown classes {sorted(unknown)}")

    def local_at(self, day: date, hour: int | None = None) -> datetime:
        """A local wall-clock moment of ``day`` (the notice hour by default)."""
        return datetime.combine(day, time(self.notice_hour if hour is None else hour), self.zone)

    def due_date(self, issued: datetime) -> date:
        return issued.astimezone(self.zone).date() + timedelta(days=self.due_after_days)


def check_instalments(items: Sequence[tuple[int, Decimal]]) -> None:
    """In-month instalments: days 1-31 in order, shares above 0 leaving a part for the
    bill (their sum below 1)."""
    days = [d for d, _ in items]
    if not items or days != sorted(set(days)) or not all(1 <= d <= 31 for d in days):
        raise CollectionSettingsError(
            "hv_instalments: at least one, days of the month 1-31, distinct and in order"
        )
    shares = [sh for _, sh in items]
    if not all(isinstance(sh, Decimal) and sh > 0 for sh in shares) or sum(shares) >= 1:
        raise CollectionSettingsError(
            "hv_instalments: each share above 0 (exact decimals), together below 1: the "
            "month's bill settles the rest"
        )


# ---------------------------------------------------------------------------- discount


def good_payer_discount(charges_fen: int, s: CollectionSettings) -> tuple[Decimal, int]:
    """(exact yuan, whole fen) off a good payer's energy charges: ``rate`` x charges
    (rounded half up) plus the fixed amount, at most the charges; nothing on no charges."""
    if charges_fen <= 0:
        return Decimal(0), 0
    exact = Decimal(charges_fen) / 100 * s.good_payer_discount_rate
    fen = min(charges_fen, to_fen(exact) + s.good_payer_discount_fen)
    return exact + Decimal(s.good_payer_discount_fen) / 100, fen


# ---------------------------------------------------------------------------- debts


@dataclass(frozen=True, slots=True)
class BillDebt:
    """What one issued bill added to the account's debt."""

    bill_id: int
    issued_at: datetime
    due: date  # last day to pay without penalty
    debits_fen: int  # energy charges and debit adjustments: accrue a penalty when late
    penalties_fen: int  # penalty lines billed here: owed, but accrue no penalty
    opening_debt_fen: int = 0  # debt carried in from before the first postpaid bill
    closing_fen: int = 0  # signed account balance at the bill's cut
    waive_from: date | None = None  # penalty waived on days in [waive_from, waive_until]
    waive_until: date | None = None


@dataclass(frozen=True, slots=True)
class Credit:
    """A credit to the account (payment, credit adjustment) and when it was posted."""

    at: datetime
    fen: int


def billed_debt(bills: Sequence[BillDebt], credits: Sequence[Credit], at: datetime) -> int:
    """Debt on issued bills at ``at``: the last bill issued before ``at`` left ``-closing``
    unpaid; every credit posted since (and before ``at``) pays it down."""
    issued = [b for b in bills if b.issued_at < at]
    if not issued:
        return 0
    last = issued[-1]
    paid = sum(c.fen for c in credits if last.issued_at <= c.at < at)
    return max(0, -(last.closing_fen + paid))


@dataclass(frozen=True, slots=True)
class Unpaid:
    bill_id: int
    debits_fen: int
    penalties_fen: int
    opening_fen: int

    @property
    def total_fen(self) -> int:
        return self.debits_fen + self.penalties_fen + self.opening_fen


def unpaid_by_bill(bills: Sequence[BillDebt], debt_fen: int) -> list[Unpaid]:
    """Lay ``debt_fen`` over the bills' items newest first (payments paid the oldest first).
    Bills are oldest first; the result follows their order."""
    left = debt_fen
    out: list[Unpaid] = []
    for b in reversed(bills):
        pen = min(left, b.penalties_fen)
        left -= pen
        deb = min(left, b.debits_fen)
        left -= deb
        opening = min(left, b.opening_debt_fen)
        left -= opening
        out.append(Unpaid(b.bill_id, deb, pen, opening))
    out.reverse()
    return out


def surplus(bills: Sequence[BillDebt], credits: Sequence[Credit], at: datetime) -> int:
    """Credit beyond every bill issued before ``at``: what was paid towards consumption not
    billed yet (an in-month settlement). Without a bill, every credit so far."""
    issued = [b for b in bills if b.issued_at < at]
    since = issued[-1].issued_at if issued else datetime.min.replace(tzinfo=at.tzinfo)
    paid = sum(c.fen for c in credits if since <= c.at < at)
    return max(0, (issued[-1].closing_fen if issued else 0) + paid)


# ---------------------------------------------------------------------------- penalty


def penalty_rate(
    customer_class: str, arrears_year: int, day: date, s: CollectionSettings
) -> Decimal:
    """Per-day rate: residential 1 per mille; others 2 per mille while the arrears are of the
    current year, 3 per mille once they are carried into a later year."""
    if customer_class not in CLASSES:
        raise CollectionSettingsError(
            f"customer_class: {customer_class!r} is not one of {', '.join(CLASSES)}"
        )
    if customer_class == "residential":
        return s.residential_rate
    return s.current_year_rate if day.year <= arrears_year else s.earlier_year_rate


def penalty_exact(
    bills: Sequence[BillDebt],
    credits: Sequence[Credit],
    customer_class: str,
    through: date,
    s: CollectionSettings,
) -> dict[int, Decimal]:
    """Exact penalty (yuan) accrued per bill for the days up to ``through`` (inclusive).

    Day ``d`` after a bill's due date costs rate(d) x the bill's unpaid debits at the start
    of ``d`` (a payment made on an overdue day still pays that day's penalty). Days inside a
    waiver (a kept instalment plan that waives it) cost nothing.
    """
    out: dict[int, Decimal] = {b.bill_id: Decimal(0) for b in bills}
    if not bills:
        return out
    first = min(b.due for b in bills) + timedelta(days=1)
    day = first
    while day <= through:
        start = datetime.combine(day, time(0), s.zone)
        live = [b for b in bills if b.issued_at < start]
        if live and any(b.due < day for b in live):
            unpaid = unpaid_by_bill(live, billed_debt(live, credits, start))
            for b, u in zip(live, unpaid, strict=True):
                if b.due >= day or u.debits_fen == 0:
                    continue
                if b.waive_from is not None and b.waive_from <= day <= (b.waive_until or date.max):
                    continue
                rate = penalty_rate(customer_class, (b.due + timedelta(days=1)).year, day, s)
                out[b.bill_id] += Decimal(u.debits_fen) / 100 * rate
        day += timedelta(days=1)
    return out


def penalty_due_fen(exact: Decimal, s: CollectionSettings) -> int:
    """Whole fen owed for an exact accrued penalty: rounded half up, at least the minimum
    (1 yuan) once anything accrued."""
    if exact <= 0:
        return 0
    return max(s.minimum_penalty_fen, to_fen(exact))


# ---------------------------------------------------------------------------- ageing

BUCKETS = ("0-30", "31-60", "61-90", ">90")


def ageing_bucket(due: date, today: date) -> str | None:
    """Ageing of an arrear by days overdue (None: not overdue yet)."""
    days = (today - due).days
    if days <= 0:
        return None
    if days <= 30:
        return BUCKETS[0]
    if days <= 60:
        return BUCKETS[1]
    if days <= 90:
        return BUCKETS[2]
    return BUCKETS[3]


# ---------------------------------------------------------------------------- ladder


class Step(enum.StrEnum):
    """The collection ladder's notices, in order (each a ``billing_notices`` kind)."""

    REMINDER = "reminder"
    DUE_TODAY = "due_today"
    COLLECTION = "collection"
    PLANNED_DISCONNECTION = "planned_disconnection"
    SETTLEMENT_MISSED = "settlement_missed"  # a high-voltage in-month instalment missed


@dataclass(frozen=True, slots=True)
class LadderStep:
    step: Step
    at: datetime  # when it is due (the previous step's time at the earliest)
    key: str  # its place on the ladder: "reminder:3", "collection", ...


def ladder(due: date, issued_at: datetime, s: CollectionSettings) -> list[LadderStep]:
    """The notices of one bill's ladder, in order, each no earlier than the one before.

    Reminders before the due date and on it; the collection notice the day after; the
    planned-disconnection notice the day after the payment deadline (more than
    ``stop_after_days`` overdue). Nothing is skipped: a step scheduled before the bill was
    issued (a late bill) comes at the issue time, in order.
    """
    steps: list[LadderStep] = []
    prev = issued_at
    plan = [
        (Step.REMINDER, f"reminder:{d}", due - timedelta(days=d))
        for d in sorted(s.reminder_days, reverse=True)
    ]
    plan += [
        (Step.DUE_TODAY, "due_today", due),
        (Step.COLLECTION, "collection", due + timedelta(days=1)),
        (
            Step.PLANNED_DISCONNECTION,
            "planned_disconnection",
            due + timedelta(days=s.stop_after_days + 1),
        ),
    ]
    for step, key, day in plan:
        at = max(s.local_at(day), prev)
        steps.append(LadderStep(step, at, key))
        prev = at
    return steps


def settlement_ladder(due: date, missed_at: datetime, s: CollectionSettings) -> list[LadderStep]:
    """The ladder of a missed in-month instalment: the notice of the miss the day after its
    date (or at once), then the planned-disconnection notice as for a bill overdue that
    long. No reminders (the schedule was the reminder) and no penalty of its own."""
    first = max(s.local_at(due + timedelta(days=1)), missed_at)
    planned = max(s.local_at(due + timedelta(days=s.stop_after_days + 1)), first)
    return [
        LadderStep(Step.SETTLEMENT_MISSED, first, "settlement_missed"),
        LadderStep(Step.PLANNED_DISCONNECTION, planned, "planned_disconnection"),
    ]


def next_step(
    steps: Sequence[LadderStep], done: Mapping[str, datetime]
) -> tuple[LadderStep, datetime] | None:
    """The first step not yet recorded and when it may be recorded: its own time, and never
    before the previous step was recorded (one at a time, in order); the collection notice
    also gives a full day before the planned-disconnection notice."""
    prev: datetime | None = None
    for st in steps:
        if st.key in done:
            prev = done[st.key]
            continue
        at = st.at if prev is None else max(st.at, prev)
        if st.step is Step.PLANNED_DISCONNECTION and prev is not None:
            at = max(at, prev + timedelta(days=1))
        return st, at
    return None


def cut_date(
    notice_at: datetime,
    delivered_at: datetime | None,
    posted_at: datetime | None,
    mass: bool,
    s: CollectionSettings,
) -> datetime | None:
    """Earliest cut after a planned-disconnection notice: ``cut_notice_days`` after it was
    delivered; for a mass cut also ``posted_notice_days`` after the posted notice. None while
    the evidence is missing (an undelivered notice allows no cut)."""
    if delivered_at is None or (mass and posted_at is None):
        return None
    at = max(notice_at, delivered_at) + timedelta(days=s.cut_notice_days)
    if mass and posted_at is not None:
        at = max(at, posted_at + timedelta(days=s.posted_notice_days))
    return at


# ---------------------------------------------------------------------------- instalments


@dataclass(frozen=True, slots=True)
class Instalment:
    due: date
    fen: int


def plan_status(
    instalments: Sequence[Instalment], paid: Iterable[Credit], today: date, s: CollectionSettings
) -> tuple[str, date | None]:
    """('kept' | 'missed' | 'completed', the due date of the missed instalment).

    Kept while what was paid since the plan began covers every instalment whose day has
    passed (paid on the due date counts); completed once everything is paid."""
    paid_by: list[tuple[date, int]] = sorted((c.at.astimezone(s.zone).date(), c.fen) for c in paid)
    total = sum(f for _, f in paid_by)
    owed = 0
    for inst in sorted(instalments, key=lambda i: i.due):
        owed += inst.fen
        if inst.due >= today:
            break
        by_due = sum(f for d, f in paid_by if d <= inst.due)
        if by_due < owed:
            return "missed", inst.due
    if total >= sum(i.fen for i in instalments):
        return "completed", None
    return "kept", None


def settlement_amounts(expected_fen: int, shares: Sequence[Decimal]) -> list[int]:
    """Whole fen of each instalment: the rounded running total of ``expected x share``, so
    the instalments add up to the rounded total of their shares, no fen lost or made."""
    out, cum, before = [], Decimal(0), 0
    for sh in shares:
        cum += sh
        upto = to_fen(Decimal(expected_fen) / 100 * cum)
        out.append(upto - before)
        before = upto
    return out


def settlement_status(
    instalments: Sequence[Instalment], paid_by: Mapping[date, int], today: date
) -> tuple[str, date | None, int]:
    """('kept' | 'missed' | 'settled', the missed instalment's date, fen short then).

    ``paid_by[d]``: what had been paid towards the month (:func:`surplus`) at the end of
    day ``d``. An instalment is kept when by the end of its day everything due so far was
    paid; settled once every instalment's day has passed kept."""
    owed = 0
    for inst in sorted(instalments, key=lambda i: i.due):
        if inst.due >= today:
            return "kept", None, 0
        owed += inst.fen
        short = owed - paid_by.get(inst.due, 0)
        if short > 0:
            return "missed", inst.due, short
    return "settled", None, 0


def as_json_params(values: Mapping[str, Any]) -> dict[str, str]:
    """Notice parameters are strings only (money as decimal strings)."""
    return {k: v if isinstance(v, str) else str(v) for k, v in values.items()}
