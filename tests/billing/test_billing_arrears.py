"""Pure postpaid rules (billing.arrears): tables for the practice's numbers, hypothesis
properties against straightforward reference computations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import arrears
from billing.arrears import (
    BillDebt,
    CollectionSettings,
    CollectionSettingsError,
    Credit,
    Instalment,
    Step,
)

S = CollectionSettings()


def _bill(fen: int, issued: date, bill_id: int = 1) -> BillDebt:
    at = datetime(issued.year, issued.month, issued.day, 10, tzinfo=S.zone)
    return BillDebt(bill_id, at, S.due_date(at), fen, 0, 0, -fen)


def _paid(day: date, fen: int) -> Credit:
    return Credit(datetime(day.year, day.month, day.day, 12, tzinfo=S.zone), fen)


def _penalty(fen: int, issued: date, paid: date | None, cls: str, through: date) -> D:
    credits = [_paid(paid, fen)] if paid else []
    return arrears.penalty_exact([_bill(fen, issued)], credits, cls, through, S)[1]


@pytest.mark.parametrize(
    ("fen", "issued", "paid", "cls", "expected_fen"),
    [
        (30000, date(2026, 3, 1), date(2026, 3, 8), "residential", 0),  # due day: not late
        (30000, date(2026, 3, 1), date(2026, 3, 9), "residential", 100),  # 0.30 -> minimum 1
        (300000, date(2026, 3, 1), date(2026, 3, 18), "residential", 3000),  # 10 d x 1 per mille
        (300000, date(2026, 3, 1), date(2026, 3, 18), "low_voltage", 6000),  # 10 d x 2 per mille
        (300000, date(2026, 3, 1), date(2026, 3, 18), "high_voltage", 6000),
        # issued 25 Dec, overdue from 2 Jan: arrears of the new year, 10 days x 2 per mille
        (100000, date(2025, 12, 25), date(2026, 1, 11), "low_voltage", 2000),
        # issued 20 Dec, overdue from 28 Dec: 4 days of 2025 at 2, then carried into 2026:
        # 10 days at 3 per mille = 8 + 30 yuan
        (100000, date(2025, 12, 20), date(2026, 1, 10), "low_voltage", 3800),
        (100000, date(2025, 12, 20), date(2026, 1, 10), "residential", 1400),  # no boundary
    ],
)
def test_penalty_per_class_and_year_boundary(
    fen: int, issued: date, paid: date, cls: str, expected_fen: int
) -> None:
    exact = _penalty(fen, issued, paid, cls, paid + timedelta(days=40))
    assert arrears.penalty_due_fen(exact, S) == expected_fen


def _reference(fen: int, paid_fen: int, due: date, paid: date | None, cls: str, through: date) -> D:
    """Day by day, written from the rule's text: the unpaid amount at the start of each
    overdue day times that day's rate."""
    total = D(0)
    day = due + timedelta(days=1)
    arrears_year = day.year
    while day <= through:
        unpaid = fen if paid is None or day <= paid else fen - paid_fen
        if cls == "residential":
            rate = D("0.001")
        else:
            rate = D("0.002") if day.year == arrears_year else D("0.003")
        total += D(unpaid) / 100 * rate
        day += timedelta(days=1)
    return total


@settings(max_examples=200, deadline=None)
@given(
    fen=st.integers(1, 10_000_000),
    share=st.fractions(0, 1),
    issued=st.dates(date(2024, 1, 1), date(2027, 12, 31)),
    pay_after=st.one_of(st.none(), st.integers(0, 400)),
    cls=st.sampled_from(arrears.CLASSES),
    horizon=st.integers(0, 500),
)
def test_penalty_matches_the_rule_day_by_day(
    fen: int, share: object, issued: date, pay_after: int | None, cls: str, horizon: int
) -> None:
    paid_fen = int(fen * share)  # type: ignore[operator]
    paid = None if pay_after is None else issued + timedelta(days=pay_after)
    bill = _bill(fen, issued)
    credits = [_paid(paid, paid_fen)] if paid and paid_fen else []
    through = issued + timedelta(days=horizon)
    exact = arrears.penalty_exact([bill], credits, cls, through, S)[1]
    expected = _reference(fen, paid_fen if credits else 0, bill.due, paid, cls, through)
    assert exact == expected
    due_fen = arrears.penalty_due_fen(exact, S)
    assert due_fen == 0 if exact == 0 else due_fen >= 100


debt_items = st.lists(
    st.tuples(st.integers(0, 10**7), st.integers(0, 10**5)), min_size=1, max_size=12
)


@given(items=debt_items, debt=st.integers(0, 2 * 10**8))
def test_unpaid_is_conserved_and_oldest_is_paid_first(
    items: list[tuple[int, int]], debt: int
) -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    bills = [
        BillDebt(i, t + timedelta(days=30 * i), date(2026, 1, 1), d, p)
        for i, (d, p) in enumerate(items)
    ]
    unpaid = arrears.unpaid_by_bill(bills, debt)
    total = sum(d + p for d, p in items)
    assert sum(u.total_fen for u in unpaid) == min(debt, total)
    for b, u in zip(bills, unpaid, strict=True):
        assert 0 <= u.debits_fen <= b.debits_fen and 0 <= u.penalties_fen <= b.penalties_fen
    # an older bill is unpaid only when every newer one is wholly unpaid
    for i, u in enumerate(unpaid):
        if u.total_fen:
            assert all(
                v.total_fen == b.debits_fen + b.penalties_fen
                for b, v in zip(bills[i + 1 :], unpaid[i + 1 :], strict=True)
            )


@given(
    issued=st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    late=st.integers(0, 40),
    gaps=st.lists(st.integers(0, 100_000), min_size=4, max_size=4),
)
def test_ladder_is_ordered_and_never_skips(issued: datetime, late: int, gaps: list[int]) -> None:
    due = S.due_date(issued) + timedelta(days=late - 7)  # sometimes a bill issued after its date
    steps = arrears.ladder(due, issued, S)
    assert [s.step for s in steps] == [
        Step.REMINDER,
        Step.DUE_TODAY,
        Step.COLLECTION,
        Step.PLANNED_DISCONNECTION,
    ]
    assert all(a.at <= b.at for a, b in pairwise(steps))
    assert steps[0].at >= issued
    done: dict[str, datetime] = {}
    order = []
    for gap in gaps:  # record each step some seconds after it became due
        nxt = arrears.next_step(steps, done)
        assert nxt is not None
        step, at = nxt
        if done:
            assert at >= max(done.values())
        done[step.key] = at + timedelta(seconds=gap)
        order.append(step.step)
    assert order == [s.step for s in steps] and arrears.next_step(steps, done) is None
    planned = done["planned_disconnection"].astimezone(S.zone).date()
    assert planned > due + timedelta(days=S.stop_after_days)
    assert done["planned_disconnection"] >= done["collection"] + timedelta(days=1)


@given(
    notice=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    delivered_after=st.one_of(st.none(), st.integers(0, 10**6)),
    posted_after=st.one_of(st.none(), st.integers(-(10**6), 10**6)),
    mass=st.booleans(),
)
def test_cut_needs_delivered_notice_days_and_posted_notice(
    notice: datetime, delivered_after: int | None, posted_after: int | None, mass: bool
) -> None:
    delivered = None if delivered_after is None else notice + timedelta(seconds=delivered_after)
    posted = None if posted_after is None else notice + timedelta(seconds=posted_after)
    cut = arrears.cut_date(notice, delivered, posted, mass, S)
    if delivered is None or (mass and posted is None):
        assert cut is None
        return
    assert cut is not None and cut >= delivered + timedelta(days=3)
    if mass:
        assert posted is not None and cut >= posted + timedelta(days=2)


@given(
    amounts=st.lists(st.integers(1, 10**6), min_size=1, max_size=6),
    pays=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 10**6)), max_size=8),
    today_offset=st.integers(0, 220),
)
def test_plan_kept_exactly_while_every_passed_instalment_is_covered(
    amounts: list[int], pays: list[tuple[int, int]], today_offset: int
) -> None:
    start = date(2026, 5, 1)
    plan = [Instalment(start + timedelta(days=30 * i), f) for i, f in enumerate(amounts)]
    credits = [_paid(start + timedelta(days=d), f) for d, f in pays]
    today = start + timedelta(days=today_offset)
    status, missed = arrears.plan_status(plan, credits, today, S)
    owed = 0
    first_miss = None
    for inst in plan:
        owed += inst.fen
        if inst.due >= today:
            break
        if sum(f for d, f in pays if start + timedelta(days=d) <= inst.due) < owed:
            first_miss = inst.due
            break
    if first_miss is not None:
        assert (status, missed) == ("missed", first_miss)
    else:
        paid_all = sum(f for _, f in pays) >= sum(amounts)
        assert status == ("completed" if paid_all else "kept") and missed is None


def test_settings_are_checked() -> None:
    with pytest.raises(CollectionSettingsError, match="cut_notice_days"):
        CollectionSettings(cut_notice_days=2)
    with pytest.raises(CollectionSettingsError, match="class_tariffs"):
        CollectionSettings(class_tariffs={"farm": "x"})
    with pytest.raises(CollectionSettingsError, match="customer_class"):
        arrears.penalty_rate("farm", 2026, date(2026, 1, 1), S)


def test_ageing_buckets() -> None:
    due = date(2026, 1, 31)
    got = [
        arrears.ageing_bucket(due, due + timedelta(days=n))
        for n in (0, 1, 30, 31, 60, 61, 90, 91, 400)
    ]
    assert got == [None, "0-30", "0-30", "31-60", "31-60", "61-90", "61-90", ">90", ">90"]
