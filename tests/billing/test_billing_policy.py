from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.policy import (
    AccountState,
    Action,
    CreditSettings,
    Phase,
    PolicyError,
    ProtectedWindows,
    RiskHistory,
    crossed_alerts,
    days_of_credit,
    decide,
    risk_grade,
)

SH = ZoneInfo("Asia/Shanghai")
D = Decimal
NOW = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)  # Wednesday 11:00 in Shanghai
SETTINGS = CreditSettings(warning_to_final_s=600, final_to_cutoff_s=1800)
NIGHTS_WEEKENDS = ProtectedWindows(SH, (time(18), time(8)), True, frozenset({date(2026, 10, 1)}))


def state(balance: str, phase: Phase, ago_s: float, **kw: object) -> AccountState:
    return AccountState(D(balance), phase, NOW - timedelta(seconds=ago_s), SETTINGS, **kw)  # type: ignore[arg-type]


CASES = [
    # (name, state, now, group, limit, expected)
    ("healthy", state("10", Phase.NORMAL, 0), NOW, 1, 50, Action.NONE),
    ("falls below: warn first", state("-0.01", Phase.NORMAL, 0), NOW, 1, 50, Action.WARN),
    ("warned, too soon for final", state("-1", Phase.WARNED, 599), NOW, 1, 50, Action.NONE),
    ("warned long enough", state("-1", Phase.WARNED, 600), NOW, 1, 50, Action.FINAL_WARNING),
    ("final, 30 min not over", state("-1", Phase.FINAL, 1799), NOW, 1, 50, Action.NONE),
    ("final, due", state("-1", Phase.FINAL, 1800), NOW, 1, 50, Action.CUTOFF),
    ("payment arrived in time", state("5", Phase.FINAL, 1800), NOW, 1, 50, Action.CLEAR),
    ("pending top-up holds", state("-1", Phase.FINAL, 1800, pending_topup=True), NOW, 1, 50,
     Action.HOLD),
    ("night window holds", state("-1", Phase.FINAL, 1800, windows=NIGHTS_WEEKENDS),
     datetime(2026, 11, 18, 12, 0, tzinfo=UTC), 1, 50, Action.HOLD),
    ("weekend window holds", state("-1", Phase.FINAL, 1800, windows=NIGHTS_WEEKENDS),
     datetime(2026, 11, 21, 3, 0, tzinfo=UTC), 1, 50, Action.HOLD),
    ("holiday window holds", state("-1", Phase.FINAL, 1800, windows=NIGHTS_WEEKENDS),
     datetime(2026, 10, 1, 3, 0, tzinfo=UTC), 1, 50, Action.HOLD),
    ("weekday daytime is open", state("-1", Phase.FINAL, 1800, windows=NIGHTS_WEEKENDS), NOW,
     1, 50, Action.CUTOFF),
    ("mass cut-off waits", state("-1", Phase.FINAL, 1800), NOW, 51, 50, Action.AWAIT_APPROVAL),
    ("mass cut-off at limit goes", state("-1", Phase.FINAL, 1800), NOW, 50, 50, Action.CUTOFF),
    ("mass cut-off approved", state("-1", Phase.FINAL, 1800, cutoff_approved=True), NOW, 80,
     50, Action.CUTOFF),
    ("stale final notice renewed", state("-1", Phase.FINAL, 1800 + 86401), NOW, 1, 50,
     Action.FINAL_WARNING),
    ("cut, still short", state("-0.5", Phase.CUT, 10), NOW, 1, 50, Action.NONE),
    ("restore after top-up even at night", state("20", Phase.CUT, 10, windows=NIGHTS_WEEKENDS),
     datetime(2026, 11, 18, 15, 0, tzinfo=UTC), 1, 50, Action.RESTORE),
]


@pytest.mark.parametrize(("name", "st_", "now", "group", "limit", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_policy_table(name: str, st_: AccountState, now: datetime, group: int, limit: int,
                      expected: Action) -> None:
    # states are written relative to NOW; keep the same age at this case's own clock
    st_ = replace(st_, phase_since=now - (NOW - st_.phase_since))
    assert decide(st_, now, group, limit).action is expected


def test_emergency_credit_moves_the_cutoff_limit() -> None:
    s = CreditSettings(emergency_credit=D(10), restore_threshold=D(0))
    st_ = AccountState(D("-9.99"), Phase.NORMAL, NOW, s)
    assert decide(st_, NOW, 1, 50).action is Action.NONE
    st_ = AccountState(D("-10.01"), Phase.NORMAL, NOW, s)
    assert decide(st_, NOW, 1, 50).action is Action.WARN


def test_restore_needs_balance_above_restore_threshold() -> None:
    s = CreditSettings(restore_threshold=D(10))
    assert decide(AccountState(D(10), Phase.CUT, NOW, s), NOW, 1, 50).action is Action.NONE
    assert decide(AccountState(D("10.01"), Phase.CUT, NOW, s), NOW, 1, 50).action is \
        Action.RESTORE


def test_settings_round_trip_and_validation() -> None:
    s = CreditSettings(alert_thresholds=(D(50), D(30)), warning_to_final_s=5)
    assert CreditSettings.from_json(s.to_json()) == s
    with pytest.raises(PolicyError, match="restore_threshold"):
        CreditSettings.from_json({"restore_threshold": "-5"})
    with pytest.raises(PolicyError, match="unknown"):
        CreditSettings.from_json({"threshold": "5"})


def test_windows_round_trip_and_next_open() -> None:
    w = ProtectedWindows.from_json(NIGHTS_WEEKENDS.to_json())
    assert w == NIGHTS_WEEKENDS
    friday_night = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 20:00 Friday local
    assert w.next_open(friday_night) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # Mon 08:00


def test_alerts_once_per_crossing() -> None:
    th = (D(50), D(20), D(0))
    new, alerted = crossed_alerts(th, frozenset(), D(60))
    assert new == []
    new, alerted = crossed_alerts(th, alerted, D(45))
    assert new == [D(50)]
    new, alerted = crossed_alerts(th, alerted, D(40))
    assert new == []
    new, alerted = crossed_alerts(th, alerted, D(-1))  # a big charge crosses two at once
    assert new == [D(20), D(0)]
    new, alerted = crossed_alerts(th, alerted, D(100))  # top-up re-arms all
    assert alerted == frozenset()
    new, _ = crossed_alerts(th, alerted, D(49))
    assert new == [D(50)]


@given(st.lists(st.decimals(min_value=-100, max_value=100, places=2), max_size=50))
def test_each_threshold_alerts_once_per_downward_crossing(balances: list[Decimal]) -> None:
    th = (D(50), D(20), D(0))
    alerted: frozenset[Decimal] = frozenset()
    prev = D(1000)
    for b in balances:
        new, alerted = crossed_alerts(th, alerted, b)
        assert sorted(new) == sorted(t for t in th if b < t <= prev)
        prev = b


def test_days_of_credit() -> None:
    profile = [D("0.5")] * 168  # 12 yuan a day
    monday = datetime(2026, 11, 16, 0, 0, tzinfo=SH)
    assert days_of_credit(D(36), profile, monday) == D("3.0")
    assert days_of_credit(D(-1), profile, monday) == D(0)
    assert days_of_credit(D(10), [D(0)] * 168, monday) is None
    # the account only uses power in the evening: runs out at the 3rd evening
    evening = [D(4) if h % 24 in (19, 20, 21) else D(0) for h in range(168)]
    assert days_of_credit(D(30), evening, monday) == D("2.9")


@pytest.mark.parametrize(
    ("history", "grade"),
    [
        (RiskHistory(), "A"),
        (RiskHistory(late_topups=1), "B"),
        (RiskHistory(times_below_zero=2, late_topups=2), "C"),
        (RiskHistory(disconnections=3, times_below_zero=3, days_in_arrears=40), "D"),
    ],
)
def test_risk_grade(history: RiskHistory, grade: str) -> None:
    assert risk_grade(history) == grade
