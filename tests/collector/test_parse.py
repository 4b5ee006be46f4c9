"""The fast reading parser agrees with the general one (wire.decode_reading + our checks)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from collector import ingest
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
              "meter_clock": st.just("2026-03-02T00:00:10Z")},
)


def _general(raw):
    payload = json.dumps({"schema": 1, "gateway": "g", "site": "s", "seq": 1,
                          "sent_at": "2026-03-02T00:00:00Z", "readings": [raw]})
    return ingest.parse_readings(wire.topic("s", "g", "readings"), payload.encode(), NOW,
                                 max_future_s=300)


@settings(max_examples=500, deadline=None)
@given(st.one_of(readings, st.integers(), st.text(max_size=3)))
def test_fast_path_accepts_exactly_what_the_general_path_accepts(raw):
    fast = ingest.fast_reading(raw, {}, NOW + timedelta(seconds=300), NOW - timedelta(days=400))
    general = _general(raw)
    if fast is not None:
        assert general.readings == 1 and not general.dead
        meter, ts, values, _relay = fast
        assert general.keys == [(meter, ts)]
        lines = general.chunks[0].rstrip("\n").split("\n")
        assert [tuple(line.split("\t")[1:5]) for line in lines] == [
            (n, ts.isoformat(), repr(v), u) for n, v, u in values]
    elif isinstance(raw, dict) and "meter_clock" not in raw:
        assert general.readings == 0 and len(general.dead) == 1  # refused, with a reason


valid = st.fixed_dictionaries({
    "meter": st.text(min_size=1, max_size=8).filter(lambda m: "\x00" not in m),
    "taken_at": st.datetimes(min_value=datetime(2025, 3, 1), max_value=datetime(2026, 3, 1),
                             timezones=st.just(UTC)).map(wire.utc_iso),
    "values": st.dictionaries(
        st.sampled_from(["energy_import_total", "voltage_a", "current_a", "frequency"]),
        st.builds(lambda v: {"value": v}, st.floats(45, 65)), min_size=1).map(
        lambda d: {k: {"value": v["value"], "unit": ingest._SPEC[k][0]} for k, v in d.items()}),
})


@settings(max_examples=200, deadline=None)
@given(valid)
def test_well_formed_readings_take_the_fast_path(raw):
    fast = ingest.fast_reading(raw, {}, NOW, NOW - timedelta(days=400))
    assert fast is not None
    general = _general(raw)
    assert general.readings == 1 and general.values == len(raw["values"])
