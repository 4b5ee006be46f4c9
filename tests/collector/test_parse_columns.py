"""Schema-2 (columnar) readings: the collector's all-good fast path takes exactly what the
per-reading path takes, and a message with any bad reading is sorted reading by reading, with
the same reasons as the same readings sent in schema 1."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parse import NOW, readings

from collector import parse
from meterhub import wire

TOPIC = wire.topic("s", "g", "readings")
ENVELOPE = {"gateway": "g", "site": "s", "seq": 1, "sent_at": "2026-03-02T00:00:00Z"}
FRESH = "2026-03-01T23:45:00Z"


def _columns_doc(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows (schema-1 shape) as one schema-2 body: each quantity gets the unit it first came
    with (a column has one), so rows are first made to agree on it."""
    units: dict[str, str] = {}
    for r in rows:
        values = r.get("values")
        for name, item in (values.items() if isinstance(values, dict) else ()):
            unit = item.get("unit")
            units.setdefault(name, unit if isinstance(unit, str) else "kWh")
    columns = []
    for name, unit in units.items():
        col = []
        for r in rows:
            values = r.get("values")
            item = values.get(name) if isinstance(values, dict) else None
            col.append(None if item is None else item.get("value"))
        columns.append({"quantity": name, "unit": unit, "values": col})
    doc: dict[str, Any] = {"schema": 2, **ENVELOPE, "meter": [r.get("meter") for r in rows],
                           "taken_at": [r.get("taken_at") for r in rows], "columns": columns}
    if any("relay" in r for r in rows):
        doc["relay"] = [r.get("relay") for r in rows]
    if any("clock" in r for r in rows):
        doc["clock"] = [r.get("clock") for r in rows]
    return doc


def _rows_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The same readings in schema 1, through the wire's own row view of a schema-2 body."""
    body = wire.decode_readings_envelope(json.dumps(doc).encode()).columns
    assert body is not None
    return {"schema": 1, **ENVELOPE, "readings": [body.row(i) for i in range(len(body))]}


def _parse(doc: dict[str, Any]) -> parse.Parsed:
    return parse.parse_readings(TOPIC, json.dumps(doc).encode(), NOW, max_future_s=300)


def _summary(p: parse.Parsed) -> dict[str, Any]:
    cols = p.cols
    values = [[None if math.isnan(v) else v for v in row] for row in cols.values.tolist()]
    return {
        "readings": p.readings, "count": cols.count, "meters": cols.meters,
        "micros": cols.micros.tolist(), "values": values, "extras": cols.extras,
        "months": p.months, "batch": p.batch,
        "relays": p.relays,
        "clocks": p.clocks,
        "dead": [(d.reason, d.code, d.whole_message, d.payload) for d in p.dead],
    }


def _good(i: int) -> dict[str, Any]:
    return {"meter": f"m{i}", "taken_at": FRESH,
            "values": {"energy_import_total": {"value": 100.0 + i, "unit": "kWh"},
                       "voltage_a": {"value": 230.0, "unit": "V"}}}


@settings(max_examples=400, deadline=None)
@given(st.lists(readings, min_size=1, max_size=6), st.integers(0, 6))
def test_columns_and_rows_are_taken_alike(rows, good):
    doc = _columns_doc(rows + [_good(i) for i in range(good)])
    assert _summary(_parse(doc)) == _summary(_parse(_rows_doc(doc)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.from_regex(r"[a-z0-9]{1,4}", fullmatch=True),
    st.sampled_from([FRESH, "2026-03-01T23:30:00Z", "2026-02-28T00:00:00Z"]),
    st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10**6)),
    st.one_of(st.none(), st.floats(0, 999), st.integers(0, 999)),
    st.sampled_from([None, "open", "closed"])), min_size=1, max_size=30))
def test_good_batches_take_the_fast_path_and_lose_nothing(rows):
    """Good readings only (repeated meters, absent values, relay states): the fast path
    takes them, with what the per-reading path would have made of them."""
    raw = [{"meter": m, "taken_at": t,
            "values": {k: {"value": v, "unit": u} for k, v, u in
                       (("energy_import_total", e, "kWh"), ("voltage_b", vb, "V"))
                       if v is not None} or {"frequency": {"value": 50.0, "unit": "Hz"}},
            **({"relay": r} if r else {})} for m, t, e, vb, r in rows]
    doc = _columns_doc(raw)
    fast = _parse(doc)
    assert not fast.dead and fast.readings == len(rows)
    assert _summary(fast) == _summary(_parse(_rows_doc(doc)))


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda d: d["columns"][0]["values"].__setitem__(1, float("nan")), "not finite"),
    (lambda d: d["columns"][0]["values"].__setitem__(1, True), "expected a number"),
    (lambda d: d["columns"][0]["values"].__setitem__(1, "5"), "expected a number"),
    (lambda d: d["columns"][0]["values"].__setitem__(1, 10**400), "not finite"),
    (lambda d: d["columns"][0]["values"].__setitem__(1, -1.0), "negative"),
    (lambda d: d["columns"][1]["values"].__setitem__(1, 5000.0), "outside the possible"),
    (lambda d: d["meter"].__setitem__(1, "m 1"), "is not an id"),
    (lambda d: d["meter"].__setitem__(1, ["m1"]), "expected a non-empty string"),
    (lambda d: d["taken_at"].__setitem__(1, "2000-01-01T00:00:00Z"), "days old"),
    (lambda d: d["taken_at"].__setitem__(1, {"at": 1}), "ISO-8601"),
    (lambda d: d.__setitem__("relay", [None, "ajar", None]), "is not one of"),
    (lambda d: [c["values"].__setitem__(1, None) for c in d["columns"]], "non-empty object"),
])
def test_one_bad_reading_costs_only_itself(edit, reason):
    doc = _columns_doc([_good(0), _good(1), _good(2)])
    edit(doc)
    parsed = _parse(doc)
    assert parsed.readings == 2 and parsed.cols.meters == ["m0", "m2"]
    [dead] = parsed.dead
    assert not dead.whole_message and dead.reason.startswith("readings.readings[1]")
    assert reason in dead.reason


def test_a_bad_clock_costs_only_the_clock():
    doc = _columns_doc([_good(0), _good(1)])
    doc["clock"] = [None, {"meter_clock": "1999-12-31T23:59:59Z", "read_at": FRESH}]
    parsed = _parse(doc)
    assert parsed.readings == 2 and not parsed.clocks
    [dead] = parsed.dead
    assert dead.reason.startswith("readings.readings[1].clock.meter_clock")


@pytest.mark.parametrize(("edit", "code", "reason"), [
    (lambda d: d["taken_at"].pop(), "bad_field", "readings.taken_at: expected a list of 2"),
    (lambda d: d["columns"][0]["values"].append(1.0), "bad_field", "columns[0].values"),
    (lambda d: d.__setitem__("relay", ["open"]), "bad_field", "readings.relay"),
    (lambda d: d.__setitem__("clock", {}), "bad_field", "readings.clock"),
    (lambda d: d.__setitem__("meter", "m0"), "bad_field", "readings.meter"),
    (lambda d: d.__setitem__("columns", {}), "bad_field", "readings.columns"),
    (lambda d: d["columns"].append(dict(d["columns"][0])), "bad_field", "has two columns"),
    (lambda d: d["columns"].__setitem__(0, [1]), "bad_field", "columns[0]"),
    (lambda d: d["columns"][0].__setitem__("quantity", "a b"), "bad_id", "columns[0].quantity"),
    (lambda d: d["columns"][0].__setitem__("unit", "\ud800"), "bad_text", "columns[0].unit"),
    (lambda d: d["columns"][0].__setitem__("unit", "k" * 17), "bad_text", "columns[0].unit"),
    (lambda d: d["columns"].extend([{"quantity": f"q{i}", "unit": "", "values": [0, 0]}
                                     for i in range(wire.MAX_COLUMNS)]), "too_many", "columns"),
])
def test_a_broken_shape_refuses_the_message(edit, code, reason):
    doc = _columns_doc([_good(0), _good(1)])
    edit(doc)
    parsed = _parse(doc)
    assert parsed.readings == 0 and parsed.batch is None
    [dead] = parsed.dead
    assert dead.whole_message and dead.code == code and reason in dead.reason


def test_too_many_readings_refuse_the_message():
    doc = _columns_doc([_good(0)])
    n = wire.DEFAULT_LIMITS.max_items + 1
    doc["meter"] *= n
    doc["taken_at"] *= n
    for c in doc["columns"]:
        c["values"] *= n
    [dead] = _parse(doc).dead
    assert dead.code == "too_many"


def test_the_gateway_sends_columns_and_falls_back_to_rows_for_mixed_units():
    at = NOW - timedelta(minutes=5)
    same = wire.ReadingsBatch("g", "s", 1, NOW, (
        wire.Reading("m1", at, {"voltage_a": wire.Value(230.0, "V")}, "open"),
        wire.Reading("m2", at, {"current_a": wire.Value(1.5, "A")})))
    payload = wire.encode_readings(same)
    assert json.loads(payload)["schema"] == wire.READINGS_SCHEMA
    assert wire.decode_readings(payload) == same
    mixed = wire.ReadingsBatch("g", "s", 2, NOW, (
        wire.Reading("m1", at, {"voltage_a": wire.Value(230.0, "V")}),
        wire.Reading("m2", at, {"voltage_a": wire.Value(0.23, "kV")})))
    payload = wire.encode_readings(mixed)
    assert json.loads(payload)["schema"] == 1 and wire.decode_readings(payload) == mixed


def test_a_schema_1_batch_from_before_the_upgrade_is_still_read():
    batch = wire.ReadingsBatch("g", "s", 3, NOW, (
        wire.Reading("m1", datetime(2026, 3, 1, 23, 45, tzinfo=UTC),
                     {"energy_import_total": wire.Value(5.0, "kWh")}),))
    parsed = parse.parse_readings(TOPIC, wire.encode_reading_rows(batch), NOW, max_future_s=300)
    assert parsed.readings == 1 and not parsed.dead
