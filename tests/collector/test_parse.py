"""parse_readings on arbitrary readings: it accepts exactly what wire.decode_reading and the
collector's own checks accept, refuses the rest with a reason, and never raises."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from collector import columns, parse
from meterhub import wire

NOW = datetime(2026, 3, 2, tzinfo=UTC)

names = st.sampled_from(["energy_import_total", "voltage_a", "current_a", "power_factor_total",
                         "frequency", "flux", "balance_remaining"])
units = st.sampled_from(["kWh", "V", "A", "", "Hz", "CNY", "Wh", 3])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6),
                    st.booleans(), st.text(max_size=3), st.none())
stamps = st.one_of(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                 timezones=st.sampled_from([UTC, None])).map(
        lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["nope", "2026-03-02", "2026-03-02T00:00:00+08:00", ""]),
    st.integers(),
)
readings = st.fixed_dictionaries(
    {"meter": st.one_of(st.text(max_size=6), st.integers()), "taken_at": stamps,
     "values": st.one_of(
         st.dictionaries(names, st.fixed_dictionaries({"value": numbers, "unit": units}),
                         max_size=4),
         st.lists(st.integers(), max_size=2))},
    optional={"relay": st.sampled_from(["open", "closed", "unknown", "ajar", None]),
              "clock": st.sampled_from([
                  {"meter_clock": "2026-03-02T00:02:10Z", "read_at": "2026-03-02T00:00:10Z",
                   "drift_s": 120.0},
                  {"meter_clock": "2026-03-02T00:02:10Z", "read_at": "2026-03-02T00:00:10Z"},
                  {"meter_clock": "2026-03-02T00:02:10Z", "read_at": "2026-03-02T00:00:10Z",
                   "drift_s": 5.0},  # contradicts the two times
                  {"meter_clock": "1999-12-31T23:59:59Z", "read_at": "2026-03-02T00:00:10Z"},
                  {"meter_clock": "2026-03-02T00:02:10Z"}, "2026-03-02T00:00:10Z"])},
)


def _parse(raw):
    payload = json.dumps({"schema": 1, "gateway": "g", "site": "s", "seq": 1,
                          "sent_at": "2026-03-02T00:00:00Z", "readings": [raw]})
    return parse.parse_readings(wire.topic("s", "g", "readings"), payload.encode(), NOW,
                                max_future_s=300)


def _acceptable(raw) -> wire.Reading | None:
    """The reading if it passes the wire decoder and the collector's checks, else None."""
    try:  # a bad clock costs the clock alone, not the reading (see the test)
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "clock"}
        reading = wire.decode_reading(raw)
    except wire.WireError:
        return None
    values = [(n, v.value, v.unit) for n, v in reading.values.items()]
    if parse._problems(values) or "\x00" in reading.meter:
        return None
    if not NOW - timedelta(days=400) <= reading.taken_at <= NOW + timedelta(seconds=300):
        return None
    return reading


@settings(max_examples=500, deadline=None)
@given(st.one_of(readings, st.integers(), st.text(max_size=3)))
def test_accepts_exactly_the_decodable_storable_readings(raw):
    parsed = _parse(raw)
    reading = _acceptable(raw)
    if reading is None:
        assert parsed.readings == 0 and len(parsed.dead) == 1  # refused, with a reason
        assert parsed.dead[0].reason.startswith("readings.readings[0]")
        return
    assert parsed.readings == 1
    cols = parsed.cols
    assert cols.meters == [reading.meter]
    assert cols.micros.tolist() == [columns.pg_micros(reading.taken_at)]
    assert columns.from_micros(int(cols.micros[0])) == reading.taken_at
    expected = {n: v.value for n, v in reading.values.items()}
    row = cols.values[0].tolist()
    got = {q: row[slot] for q, slot in columns.SLOT.items() if not math.isnan(row[slot])}
    codes = {c: n for n, c in columns.EXTRA_CODES.items()}
    got.update({codes[c]: v for _row, c, v in cols.extras})
    assert got == expected and cols.count == len(expected)
    clock = raw.get("clock") if isinstance(raw, dict) else None
    good = isinstance(clock, dict) and clock.get("drift_s", 120.0) == 120.0 \
        and clock.get("meter_clock", "").startswith("2026") and "read_at" in clock
    if clock is None:
        assert not parsed.dead and not parsed.clocks
    elif good:
        assert not parsed.dead
        assert [(c.meter, c.check.drift_s) for c in parsed.clocks] == [(reading.meter, 120.0)]
    else:  # the clock alone is refused, with its field named
        assert not parsed.clocks and len(parsed.dead) == 1
        assert not parsed.dead[0].whole_message
        assert parsed.dead[0].reason.startswith("readings.readings[0].clock")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, st.one_of(st.floats(allow_nan=False), st.integers(-5, 5)),
                          st.sampled_from(["kWh", "V", "A", "", "Hz", "CNY", "Wh"])),
                max_size=4))
def test_hot_check_agrees_with_the_worded_one(values):
    assert parse._storable(values) == (not parse._problems(values))


valid = st.fixed_dictionaries({
    "meter": st.from_regex(r"[A-Za-z0-9._:-]{1,8}", fullmatch=True),  # wire.ID_PATTERN
    "taken_at": st.datetimes(min_value=datetime(2025, 3, 1), max_value=datetime(2026, 3, 1),
                             timezones=st.just(UTC)).map(wire.utc_iso),
    "values": st.dictionaries(
        st.sampled_from(["energy_import_total", "voltage_a", "current_a", "frequency"]),
        st.builds(lambda v: {"value": v}, st.floats(45, 65)), min_size=1).map(
        lambda d: {k: {"value": v["value"], "unit": parse._SPEC[k][0]} for k, v in d.items()}),
})


@settings(max_examples=200, deadline=None)
@given(valid)
def test_well_formed_readings_are_stored(raw):
    parsed = _parse(raw)
    assert parsed.readings == 1 and parsed.cols.count == len(raw["values"]) and not parsed.dead
