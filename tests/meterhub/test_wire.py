"""The wire contract: what one end encodes the other decodes, and bad payloads are named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from meterhub import wire
from meterhub.quantities import QUANTITIES
from meterhub.security import CommandSigner, Keyring, RefusalReason, SignatureRefused

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SIGNER = CommandSigner(Ed25519PrivateKey.generate())
KEYRING = Keyring([SIGNER.public_key])

# the wire refuses device times before 2000 or more than a day ahead (wire.parse_stamp)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime.now() - timedelta(days=1),
    timezones=st.just(UTC),
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
values = st.dictionaries(
    st.sampled_from(sorted(QUANTITIES)),
    st.builds(
        wire.Value,
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        st.sampled_from(["kWh", "V", "A", "kW", ""]),
    ),
    min_size=1,
)
readings = st.builds(
    wire.Reading,
    meter=st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),  # wire.ID_PATTERN
    taken_at=times,
    values=values,
    relay=st.sampled_from([None, "open", "closed", "unknown"]),
)


@given(
    seq=st.integers(min_value=0, max_value=2**62),
    sent_at=times,
    batch=st.lists(readings, max_size=5),
)
def test_readings_round_trip(seq: int, sent_at: datetime, batch: list[wire.Reading]) -> None:
    original = wire.ReadingsBatch("gw-1", "site-a", seq, sent_at, tuple(batch))
    assert wire.decode_readings(wire.encode_readings(original)) == original


def test_command_and_ack_round_trip() -> None:
    cmd = wire.Command("c-1", "000000000001", "relay_open", T0, T0 + timedelta(minutes=5),
                       attempt=2, params={"hold_until": "2026-01-01T00:00:00Z"})
    signed = wire.decode_command(wire.encode_command(cmd, "gw", SIGNER), KEYRING,
                                 gateway="gw", now=T0)
    assert signed.command == cmd
    assert (signed.gateway, signed.key_id) == ("gw", SIGNER.key_id) and signed.nonce
    ack = wire.Ack("c-1", "gw", "000000000001", "done", T0, outcome="ok", relay="open")
    assert wire.decode_ack(wire.encode_ack(ack)) == ack
    assert cmd.expired(T0 + timedelta(minutes=5)) and not cmd.expired(T0)


def test_status_and_events_round_trip() -> None:
    status = wire.Status("gw", "s", "online", T0, {"buffer_depth": 3})
    assert wire.decode_status(wire.encode_status(status)) == status
    event = wire.Event("comm_error", T0, "m1", "no answer", {"errors": 3})
    assert wire.decode_events(wire.encode_events("gw", [event])) == ("gw", [event])
    assert wire.decode_status(wire.offline_status("gw", "s")).state == "offline"


def test_topics() -> None:
    name = wire.topic("site-a", "gw-1", "cmd/ack")
    assert name == "meterhub/v1/site-a/gw-1/cmd/ack"
    assert wire.parse_topic(name) == ("site-a", "gw-1", "cmd/ack")
    assert wire.shared_subscription("g", "readings") == "$share/g/meterhub/v1/+/+/readings"
    with pytest.raises(wire.WireError, match="gateway 'a/b'"):
        wire.topic("s", "a/b", "status")
    with pytest.raises(wire.WireError, match="is not meterhub/v1/<site>/<gateway>/<kind>"):
        wire.parse_topic("meterhub/v1/s/g/nope")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "readings: not valid JSON"),
        (b"[]", "readings: expected a JSON object, got list"),
        (b'{"schema": 3}', "readings: schema 3 is not supported"),
        (b'{"schema": 1, "readings": []}', "readings.gateway: expected a non-empty string"),
        (
            b'{"schema":1,"gateway":"g","site":"s","seq":-1,"sent_at":"2026-01-01T00:00:00Z",'
            b'"readings":[]}',
            r"readings.seq: expected an integer >= 0, got -1",
        ),
        (
            b'{"schema":1,"gateway":"g","site":"s","seq":1,"sent_at":"2026-01-01T00:00:00",'
            b'"readings":[]}',
            "has no timezone",
        ),
        (
            b'{"schema":1,"gateway":"g","site":"s","seq":1,"sent_at":"2026-01-01T00:00:00Z",'
            b'"readings":[{"meter":"m","taken_at":"2026-01-01T00:00:00Z",'
            b'"values":{"voltage_a":{"value":"230","unit":"V"}}}]}',
            r"readings.readings\[0\].values.voltage_a.value: expected a number",
        ),
    ],
)
def test_bad_readings_are_named(payload: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.decode_readings(payload)


def test_signed_but_unknown_action_names_the_field() -> None:
    envelope = SIGNER.sign(command_id="c", gateway="gw", meter="m", action="explode",
                           issued_at=T0, expires_at=T0 + timedelta(minutes=5))
    bad = json.dumps({"schema": 1, **envelope.to_json()})
    with pytest.raises(wire.WireError, match=r"cmd\.action: .explode. is not one of relay_open"):
        wire.decode_command(bad, KEYRING, gateway="gw", now=T0)


def test_unsigned_command_refused() -> None:
    unsigned = (
        b'{"schema":1,"command_id":"c","meter":"m","action":"relay_open",'
        b'"issued_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T00:05:00Z"}'
    )
    with pytest.raises(SignatureRefused) as refused:
        wire.decode_command(unsigned, KEYRING, gateway="gw", now=T0)
    assert refused.value.reason == RefusalReason.UNSIGNED


def test_command_for_another_gateway_refused() -> None:
    cmd = wire.Command("c-1", "m", "relay_open", T0, T0 + timedelta(minutes=5))
    with pytest.raises(SignatureRefused) as refused:
        wire.decode_command(wire.encode_command(cmd, "gw-a", SIGNER), KEYRING,
                            gateway="gw-b", now=T0)
    assert refused.value.reason == RefusalReason.WRONG_GATEWAY


def test_naive_time_refused_on_encode() -> None:
    with pytest.raises(wire.WireError, match="timezone-aware"):
        wire.utc_iso(datetime(2026, 1, 1))


def test_reading_fields_are_the_reading_as_plain_data() -> None:
    raw = {"meter": "m1", "taken_at": "2026-03-02T00:15:00Z", "relay": "closed",
           "values": {"energy_import_total": {"value": 12, "unit": "kWh"},
                      "voltage_a": {"value": 230.5, "unit": "V"}}}
    times: dict[str, datetime] = {}
    meter, taken_at, values, relay = wire.decode_reading_fields(raw, "r", times)
    reading = wire.decode_reading(raw, "r")
    assert (meter, taken_at, relay) == (reading.meter, reading.taken_at, reading.relay)
    assert values == [(n, v.value, v.unit) for n, v in reading.values.items()]
    assert values[0] == ("energy_import_total", 12.0, "kWh") and type(values[0][1]) is float
    assert times == {"2026-03-02T00:15:00Z": taken_at}
    # the cache is only a shortcut: a cached stamp gives the same time
    assert wire.decode_reading_fields(raw, "r", times)[1] == taken_at


@pytest.mark.parametrize(("value", "message"), [
    (10**400, "is not finite"), (float("inf"), "is not finite"), (True, "expected a number"),
    ("1", "expected a number"),
])
def test_reading_value_refusals(value: object, message: str) -> None:
    raw = {"meter": "m1", "taken_at": "2026-03-02T00:15:00Z",
           "values": {"voltage_a": {"value": value, "unit": "V"}}}
    with pytest.raises(wire.WireError, match=rf"r\.values\.voltage_a\.value: .*{message}"):
        wire.decode_reading_fields(raw, "r")
