"""The clock check on the wire: optional on readings and acks (old payloads decode as before),
round trips, and limit checks with the field named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterhub import wire
from meterhub.wire import Ack, ClockCheck, Reading, ReadingsBatch, Value

NOW = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)


def _batch(reading: Reading) -> bytes:
    return wire.encode_readings(ReadingsBatch("g", "s", 1, NOW, (reading,)))


def test_a_reading_without_a_clock_has_no_clock_field() -> None:
    payload = _batch(Reading("m1", NOW, {"energy_import_total": Value(1.0, "kWh")}))
    assert b"clock" not in payload
    assert wire.decode_readings(payload).readings[0].clock is None


def test_clock_is_readable_and_round_trips() -> None:
    check = ClockCheck(NOW + timedelta(seconds=95), NOW)
    payload = _batch(Reading("m1", NOW, {"energy_import_total": Value(1.0, "kWh")}, None,
                             check))
    raw = json.loads(payload)["clock"][0]
    assert raw == {"meter_clock": "2026-12-03T13:01:35.000Z",
                   "read_at": "2026-12-03T13:00:00.000Z", "drift_s": 95.0}
    assert wire.decode_readings(payload).readings[0].clock == check


def test_ack_carries_the_clock_read_back() -> None:
    check = ClockCheck(NOW - timedelta(seconds=1), NOW)
    ack = Ack("c1", "g", "m1", "done", NOW, "ok", None, None, check)
    assert wire.decode_ack(wire.encode_ack(ack)) == ack
    old = Ack("c1", "g", "m1", "done", NOW, "ok", "open")
    assert b"clock" not in wire.encode_ack(old) and wire.decode_ack(wire.encode_ack(old)) == old


@pytest.mark.parametrize(("clock", "field", "code"), [
    ("2026-12-03T13:00:00Z", "clock", "bad_field"),
    ({"meter_clock": "2026-12-03T13:00:00Z"}, "clock.read_at", "bad_time"),
    ({"meter_clock": "1999-12-31T23:59:59Z", "read_at": "2026-12-03T13:00:00Z"},
     "clock.meter_clock", "bad_time"),
    ({"meter_clock": "2100-01-01T00:00:00Z", "read_at": "2026-12-03T13:00:00Z"},
     "clock.meter_clock", "bad_time"),
    ({"meter_clock": "2026-12-03T13:00:00", "read_at": "2026-12-03T13:00:00Z"},
     "clock.meter_clock", "bad_time"),
    ({"meter_clock": "2026-12-03T13:00:05Z", "read_at": "2026-12-03T13:00:00Z",
      "drift_s": 500}, "clock.drift_s", "bad_number"),
    ({"meter_clock": "2026-12-03T13:00:05Z", "read_at": "2026-12-03T13:00:00Z",
      "drift_s": "5"}, "clock.drift_s", "bad_number"),
    ({"meter_clock": "2026-12-03T13:00:05Z", "read_at": "2000-01-01T00:00:00Z"[:-1]},
     "clock.read_at", "bad_time"),
])
def test_a_bad_clock_is_refused_naming_the_field(clock: object, field: str, code: str) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode_clock(clock, "reading.clock", NOW)
    assert str(err.value).startswith(f"reading.{field}")
    assert err.value.code == code


def test_a_read_time_far_in_the_future_is_refused() -> None:
    clock = {"meter_clock": "2026-12-05T13:00:00Z", "read_at": "2026-12-05T13:00:00Z"}
    with pytest.raises(wire.WireError, match="read_at"):
        wire.decode_clock(clock, "clock", NOW)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
       st.integers(min_value=0, max_value=10**12).map(lambda us: timedelta(microseconds=us)))
def test_any_clock_in_range_round_trips(meter: datetime, back: timedelta) -> None:
    read_at = NOW - back
    check = ClockCheck(meter.replace(tzinfo=UTC, microsecond=0), read_at)
    got = wire.decode_clock(json.loads(json.dumps(wire.encode_clock(check))), "c", NOW)
    assert got.meter_clock == check.meter_clock
    assert abs(got.drift_s - check.drift_s) <= wire.CLOCK_DRIFT_SLACK_S
