"""Poison payloads: every decoder of untrusted input turns any failure into a WireError with a
code, within limits (issue 12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from meterhub import wire

NOW = datetime.now(UTC)
STAMP = wire.utc_iso(NOW - timedelta(minutes=5))


def _batch(readings: str = "[]", **envelope: str) -> bytes:
    fields = {"gateway": '"gw1"', "site": '"s1"', "seq": "1", "sent_at": f'"{STAMP}"'}
    fields.update(envelope)
    body = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return f'{{"schema":1,{body},"readings":{readings}}}'.encode()


def _reading(meter: str = '"m1"', value: str = "1.5", taken_at: str = f'"{STAMP}"',
             quantity: str = '"energy_import_total"') -> str:
    return (f'{{"meter":{meter},"taken_at":{taken_at},'
            f'"values":{{{quantity}:{{"value":{value},"unit":"kWh"}}}}}}')


@pytest.mark.parametrize(("payload", "code"), [
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),  # json.loads: RecursionError
    (b'{"schema":1,"x":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
    (b"x" * (1 << 20 + 1), "too_large"),
    (_batch(seq="9" * 5000), "bad_number"),  # int max-digits ValueError
    (_batch(seq=str(2**63)), "bad_number"),  # beyond bigint
    (_batch(gateway='"' + "g" * 65 + '"'), "bad_id"),
    (_batch(gateway='"gw 1"'), "bad_id"),
    (_batch(gateway='"\\ud800"'), "bad_id"),  # lone surrogate
    (_batch(gateway='"g\\u0000"'), "bad_id"),  # NUL
    (_batch(sent_at='"1999-12-31T23:59:59Z"'), "bad_time"),
    (_batch(sent_at=f'"{wire.utc_iso(NOW + timedelta(days=2))}"'), "bad_time"),
    (_batch(sent_at='"0001-01-01T00:00:00+01:00"'), "bad_time"),  # OverflowError in UTC
    (_batch(sent_at='"' + "2" * 100 + '"'), "bad_time"),
    (b"\xff\xfe{", "bad_json"),
    (b'{"schema": 3}', "bad_schema"),
    (b'{"schema": true}', "bad_schema"),
])
def test_poison_envelopes_are_wire_errors(payload: bytes, code: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode_readings(payload)
    assert info.value.code == code
    assert len(str(info.value)) < 400  # a reason, not the payload again


def test_batch_size_is_bounded() -> None:
    payload = _batch("[" + ",".join([_reading()] * 11) + "]")
    with pytest.raises(wire.WireError, match="more than the 10") as info:
        wire.decode_readings_envelope(payload, wire.Limits(max_items=10))
    assert info.value.code == "too_many"
    assert len(wire.decode_readings_envelope(payload).raw_readings) == 11


@pytest.mark.parametrize(("reading", "code"), [
    (_reading(value="1e400"), "bad_number"),  # inf
    (_reading(value="9" * 400), "bad_number"),  # float() overflow
    (_reading(meter='"' + "m" * 2700 + '"'), "bad_id"),
    (_reading(meter='"m\\ud800"'), "bad_id"),
    (_reading(quantity='"\\udfff"'), "bad_id"),
    (_reading(quantity='"' + "q" * 100 + '"'), "bad_id"),
    (_reading(taken_at='"2099-01-01T00:00:00Z"'), "bad_time"),
])
def test_poison_readings_are_wire_errors(reading: str, code: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.decode_readings(_batch(f"[{reading}]"))
    assert info.value.code == code


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\u0000"', '"\\udc00x"'])
def test_lone_surrogates_and_nul_in_free_text_are_refused(text: str) -> None:
    payload = ('{"schema":1,"gateway":"g","site":"s","state":"online","at":"' + STAMP
               + '","health":{"note":' + text + "}}").encode()
    with pytest.raises(wire.WireError) as info:
        wire.decode_status(payload)
    assert info.value.code == "bad_text"


def test_surrogate_pairs_and_deep_looking_strings_pass() -> None:
    """A proper pair (an emoji) is text; brackets inside strings are not nesting."""
    payload = json.dumps({"schema": 1, "gateway": "g", "site": "s", "state": "online",
                          "at": STAMP, "health": {"note": "\ud83d\ude00" + "[" * 100}}).encode()
    assert wire.decode_status(payload).health["note"].startswith("\U0001f600[")


@pytest.mark.parametrize(("health", "code"), [
    ({"x": float("inf")}, "bad_number"),
    ({"x": 10**30}, "bad_number"),
    ({"x": "y" * 5000}, "bad_text"),
])
def test_status_health_is_bounded(health: dict[str, object], code: str) -> None:
    payload = json.dumps({"schema": 1, "gateway": "g", "site": "s", "state": "online",
                          "at": STAMP, "health": health}).encode()
    with pytest.raises(wire.WireError) as info:
        wire.decode_status(payload)
    assert info.value.code == code


def test_event_detail_is_cut_and_kind_is_an_id() -> None:
    good = {"kind": "comm_error", "at": STAMP, "detail": "d" * 5000, "meter": "m1"}
    gw, events = wire.decode_events(json.dumps({"schema": 1, "gateway": "g",
                                                "events": [good]}).encode())
    assert gw == "g" and len(events[0].detail) == wire.DEFAULT_LIMITS.max_text
    with pytest.raises(wire.WireError, match="kind"):
        wire.decode_events(json.dumps({"schema": 1, "gateway": "g",
                                       "events": [{**good, "kind": "a b"}]}).encode())


def test_receipt_round_trip_and_refusals() -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    payload = wire.encode_receipt("gw1", "s1", [(1, 3), (7, 7)], at)
    assert json.loads(payload) == {"schema": 1, "gateway": "gw1", "site": "s1",
                                   "ranges": [[1, 3], [7, 7]], "at": "2026-03-01T00:00:00.000Z"}
    assert wire.decode_receipt(payload) == wire.Receipt("gw1", "s1", ((1, 3), (7, 7)), at)
    assert wire.topic("s1", "gw1", "receipt") == "meterhub/v1/s1/gw1/receipt"
    assert wire.seq_ranges([7, 1, 3, 2, 2]) == [(1, 3), (7, 7)]
    for ranges in ([[3, 1]], [[1]], [], [[True, 2]], [[0, 2**64]]):
        bad = json.dumps({"schema": 1, "gateway": "g", "site": "s", "ranges": ranges,
                          "at": "2026-03-01T00:00:00Z"})
        with pytest.raises(wire.WireError, match=r"receipt\.ranges"):
            wire.decode_receipt(bad)
