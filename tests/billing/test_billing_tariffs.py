from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.money import post_charge, to_fen
from billing.tariffs import TariffError, charge_total, load_tariffs, parse_tariff

SH = ZoneInfo("Asia/Shanghai")
TARIFFS = load_tariffs()
TIERS = [{"up_to_kwh": 2760, "adder": "0"}, {"up_to_kwh": 4800, "adder": "0.05"},
         {"adder": "0.30"}]


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


def test_example_tariffs_load() -> None:
    assert {"residential-flat", "residential-tiered", "commercial-tou",
            "residential-tou-tiered"} <= set(TARIFFS)


def test_flat_price() -> None:
    t = TARIFFS["residential-flat"]
    pieces = t.price(local(2026, 3, 1, 10), local(2026, 3, 1, 10, 15), Decimal("1.2500"), {})
    assert charge_total(pieces) == Decimal("0.70")


def test_tou_interval_split_at_band_edge_and_critical_peak() -> None:
    t = TARIFFS["commercial-tou"]
    pieces = t.price(local(2026, 7, 30, 10, 30), local(2026, 7, 30, 13, 30), Decimal(3), {})
    assert [(p.band, p.kwh) for p in pieces] == [
        ("peak", Decimal("0.5")), ("critical", Decimal("2")), ("peak", Decimal("0.5"))]
    # outside July/August the same hours are plain peak
    pieces = t.price(local(2026, 6, 30, 10, 30), local(2026, 6, 30, 13, 30), Decimal(3), {})
    assert [p.band for p in pieces] == ["peak"]


def test_tier_boundary_split() -> None:
    t = TARIFFS["residential-tiered"]
    usage = {date(2026, 1, 1): Decimal("2759.5")}
    pieces = t.price(local(2026, 5, 1, 10), local(2026, 5, 1, 11), Decimal(2), usage)
    assert [(p.tier, p.kwh, p.price) for p in pieces] == [
        (1, Decimal("0.5"), Decimal("0.5283")), (2, Decimal("1.5"), Decimal("0.5783"))]
    assert usage[date(2026, 1, 1)] == Decimal("2761.5")


def test_tier_year_resets_on_configured_day() -> None:
    doc = {"id": "x", "versions": [{"effective": date(2024, 1, 1), "bands": {"flat": "1"},
                                    "tiers": {"reset": "07-01", "blocks": TIERS}}]}
    t = parse_tariff(doc)
    usage = {date(2025, 7, 1): Decimal(5000)}
    # 23:30 -> 00:30 across the reset: half the kWh in each tier year
    pieces = t.price(local(2026, 6, 30, 23, 30), local(2026, 7, 1, 0, 30), Decimal(2), usage)
    assert [(p.tier_year, p.tier, p.kwh) for p in pieces] == [
        (date(2025, 7, 1), 3, Decimal(1)), (date(2026, 7, 1), 1, Decimal("1.000000"))]


def test_tariff_change_takes_effect_at_local_midnight_never_before() -> None:
    t = TARIFFS["residential-tou-tiered"]
    pieces = t.price(local(2026, 6, 30, 21), local(2026, 7, 1, 9), Decimal(12), {})
    peaks = [p for p in pieces if p.band == "peak"]
    assert [p.price for p in peaks] == [Decimal("0.6200"), Decimal("0.6500")]
    assert sum(p.kwh for p in pieces) == Decimal(12)
    before = t.price(local(2026, 6, 30, 10), local(2026, 6, 30, 11), Decimal(1), {})
    assert before[0].price == Decimal("0.6200")


def test_bad_tariff_reports_every_problem_with_its_key() -> None:
    doc = {"id": "bad", "timezone": "Mars/Olympus", "versions": [
        {"effective": date(2024, 1, 1), "bands": {"a": 0.5, "b": "1"},
         "schedule": [{"from": "01:00", "band": "c"}]}]}
    with pytest.raises(TariffError) as e:
        parse_tariff(doc, "x.toml")
    msg = str(e.value)
    for part in ("timezone", "versions[0].bands.a", "versions[0].schedule[0].band"):
        assert part in msg


def test_interval_before_first_version_is_an_error() -> None:
    with pytest.raises(TariffError, match="no version in force"):
        TARIFFS["residential-flat"].price(local(2020, 1, 1), local(2020, 1, 1, 1), Decimal(1), {})


def test_bad_file_is_reported_with_path(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text("id = \n")
    with pytest.raises(TariffError, match=r"t\.toml"):
        load_tariffs(tmp_path)


# ---------------------------------------------------------------------------- properties

starts = st.datetimes(min_value=datetime(2025, 12, 20), max_value=datetime(2027, 1, 10),
                      timezones=st.just(UTC))
kwhs = st.decimals(min_value=Decimal(0), max_value=Decimal("400"), places=4)
tariff_ids = st.sampled_from(sorted(TARIFFS))


@settings(max_examples=200, deadline=None)
@given(tariff_ids, starts, st.integers(1, 48 * 60), kwhs,
       st.decimals(min_value=Decimal(0), max_value=Decimal(6000), places=2))
def test_split_conserves_kwh(tid: str, start: datetime, minutes: int, kwh: Decimal,
                             used: Decimal) -> None:
    t = TARIFFS[tid]
    usage: dict[date, Decimal] = {t.tier_year(t.local_date(start)): used}
    before = sum(usage.values(), Decimal(0))
    pieces = t.price(start, start + timedelta(minutes=minutes), kwh, usage)
    assert sum((p.kwh for p in pieces), Decimal(0)) == kwh
    assert sum(usage.values(), Decimal(0)) - before == kwh
    assert all(p.kwh >= 0 for p in pieces)
    # pieces tile the interval in time
    assert pieces[0].start == start and pieces[-1].end == start + timedelta(minutes=minutes)


@settings(max_examples=200, deadline=None)
@given(tariff_ids, starts,
       st.lists(kwhs, min_size=1, max_size=40),
       st.decimals(min_value=Decimal(0), max_value=Decimal(6000), places=2))
def test_charging_intervals_one_by_one_equals_charging_the_sum(
    tid: str, start: datetime, series: list[Decimal], used: Decimal
) -> None:
    """Intervals charged one by one (with the fen carry) give exactly the money of one
    interval holding the total kWh, for every tariff, when the series stays inside one
    band (12:00-12:40 local is one band in all of them; time-of-use prices differ by hour
    by design, so across bands the whole would be split by time instead)."""
    t = TARIFFS[tid]
    year = t.tier_year(t.local_date(start))
    start = start.replace(hour=4, minute=0)  # 12:00 in Shanghai
    usage = {year: used}
    carry, posted = Decimal(0), 0
    exact = Decimal(0)
    for i, kwh in enumerate(series):
        a = start + timedelta(minutes=i)
        amount = charge_total(t.price(a, a + timedelta(minutes=1), kwh, usage))
        exact += amount
        fen, carry = post_charge(carry, amount)
        posted += fen
    whole = charge_total(t.price(start, start + timedelta(minutes=len(series)),
                                 sum(series, Decimal(0)), {year: used}))
    assert exact == whole
    assert posted == to_fen(whole)


@settings(max_examples=200, deadline=None)
@given(tariff_ids, starts, st.integers(1, 6 * 60), kwhs,
       st.decimals(min_value=Decimal(0), max_value=Decimal(6000), places=2),
       st.decimals(min_value=Decimal("-50"), max_value=Decimal("50"), places=4))
def test_correction_is_undone_exactly(tid: str, start: datetime, minutes: int, kwh: Decimal,
                                      used: Decimal, delta: Decimal) -> None:
    """Charging kWh then a correction of -kWh returns the tier position and nets zero money."""
    t = TARIFFS[tid]
    year = t.tier_year(t.local_date(start))
    usage = {year: used + Decimal(60)}
    end = start + timedelta(minutes=minutes)
    first = charge_total(t.price(start, end, kwh, usage))
    undo = charge_total(t.price(start, end, -kwh, usage))
    assert usage[year] == used + Decimal(60)
    assert first + undo == 0


@settings(max_examples=300, deadline=None)
@given(tariff_ids, starts, st.integers(1, 30 * 60),
       st.decimals(min_value=Decimal(-50), max_value=Decimal(400), places=4),
       st.decimals(min_value=Decimal(50), max_value=Decimal(6000), places=2))
def test_fast_amount_equals_sum_of_pieces(tid: str, start: datetime, minutes: int,
                                          kwh: Decimal, used: Decimal) -> None:
    t = TARIFFS[tid]
    year = t.tier_year(t.local_date(start))
    u1, u2 = {year: used}, {year: used}
    end = start + timedelta(minutes=minutes)
    assert t.amount(start, end, kwh, u1) == charge_total(t.price(start, end, kwh, u2))
    assert u1 == u2


def test_tariff_history_refuses_rewriting_the_past(db_url: str) -> None:
    import psycopg

    from billing.tariffs import check_history

    def tariff(*versions: tuple[date, str]) -> dict:
        t = parse_tariff({"id": "t", "versions": [
            {"effective": eff, "bands": {"flat": price}} for eff, price in versions]})
        return {"t": t}

    today = date(2026, 6, 1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        check_history(conn, tariff((date(2026, 1, 1), "0.5")), today)  # first sight: as is
        check_history(conn, tariff((date(2026, 1, 1), "0.5")), today)
        with pytest.raises(TariffError, match="edited after it took effect"):
            check_history(conn, tariff((date(2026, 1, 1), "0.6")), today)
        with pytest.raises(TariffError, match="retroactively"):
            check_history(conn, tariff((date(2026, 1, 1), "0.5"), (date(2026, 5, 1), "0.6")),
                          today)
        future = tariff((date(2026, 1, 1), "0.5"), (date(2026, 7, 1), "0.6"))
        check_history(conn, future, today)
        # a version not yet in force may still be corrected
        check_history(conn, tariff((date(2026, 1, 1), "0.5"), (date(2026, 7, 1), "0.65")),
                      today)
        with pytest.raises(TariffError, match="removed"):
            check_history(conn, tariff((date(2026, 7, 1), "0.65")), date(2026, 8, 1))
