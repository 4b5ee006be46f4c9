"""Meter clocks in DL/T645: reading date and time (2007 04000101 / 04000102, 1997 C010 /
C011), broadcast time sync (08H to 999999999999) and per-meter set (write 14H), with vectors
whose checksums were computed by hand from the frame rules in PROTOCOLS.md."""

from __future__ import annotations

from datetime import date, datetime, time

from hypothesis import given
from hypothesis import strategies as st

from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.dlt645.frame import BROADCAST, decode, encode
from meterhub.protocols.dlt645.identifiers import (
    DI_DATE,
    DI_TIME,
    decode_value,
    encode_value,
    lookup,
)

H = bytes.fromhex
METER = "000000000161"
WHEN = datetime(2026, 12, 3, 13, 45, 30)  # a Thursday (WW = 04)


def test_broadcast_time_sync_vector() -> None:
    # data ss mm hh DD MM YY = 30 45 13 03 12 26, +33H each; CS = 1641 mod 256 = 69H
    frame = msg.broadcast_time(WHEN)
    assert encode(frame) == H("68 99 99 99 99 99 99 68 08 06 63 78 46 36 45 59 69 16")
    assert frame.address == BROADCAST
    assert msg.parse_request(decode(encode(frame))) == msg.TimeSyncRequest(WHEN)


def test_read_date_and_time_vectors_2007() -> None:
    date_req = msg.read(METER, DI_DATE["2007"])
    assert encode(date_req) == H("68 61 01 00 00 00 00 68 11 04 34 34 33 37 19 16")
    date_reply = decode(H("68 61 01 00 00 00 00 68 91 08 34 34 33 37 37 36 45 59 A8 16"))
    payload = msg.parse_read_reply(date_req, date_reply).payload
    assert decode_value(lookup(DI_DATE["2007"], "2007"), payload) == date(2026, 12, 3)

    time_req = msg.read(METER, DI_TIME["2007"])
    time_reply = decode(H("68 61 01 00 00 00 00 68 91 07 35 34 33 37 63 78 46 BE 16"))
    payload = msg.parse_read_reply(time_req, time_reply).payload
    assert decode_value(lookup(DI_TIME["2007"], "2007"), payload) == time(13, 45, 30)


def test_read_date_vector_1997() -> None:
    meter = "000000000003"
    req = msg.read(meter, DI_DATE["1997"], "1997")
    assert encode(req) == H("68 03 00 00 00 00 00 68 01 02 43 F3 0C 16")
    reply = decode(H("68 03 00 00 00 00 00 68 81 06 43 F3 37 36 45 59 9B 16"))
    payload = msg.parse_read_reply(req, reply, "1997").payload
    assert decode_value(lookup(DI_DATE["1997"], "1997"), payload) == date(2026, 12, 3)


def test_date_write_carries_the_weekday() -> None:
    # write 04000101 (per-meter set): WW DD MM YY; 2026-12-06 is a Sunday, WW = 00
    entry = lookup(DI_DATE["2007"], "2007")
    assert encode_value(entry, date(2026, 12, 6)) == H("00 06 12 26")
    request = msg.write(METER, DI_DATE["2007"], encode_value(entry, date(2026, 12, 6)))
    parsed = msg.parse_request(request)
    assert isinstance(parsed, msg.WriteRequest) and parsed.di == DI_DATE["2007"]
    assert parsed.value == H("00 06 12 26")


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59))


@given(moments)
def test_broadcast_time_round_trips(when: datetime) -> None:
    when = when.replace(microsecond=0)
    frame = decode(encode(msg.broadcast_time(when)))
    assert msg.parse_request(frame) == msg.TimeSyncRequest(when)


@given(moments, st.sampled_from(["2007", "1997"]))
def test_date_and_time_values_round_trip(when: datetime, version: str) -> None:
    for di, value in (
        (DI_DATE[version], when.date()),
        (DI_TIME[version], when.time().replace(microsecond=0)),
    ):
        entry = lookup(di, version)
        assert decode_value(entry, encode_value(entry, value)) == value
        reply = msg.read_reply(METER, di, encode_value(entry, value), version=version)
        got = msg.parse_read_reply(msg.read(METER, di, version), decode(encode(reply)), version)
        assert decode_value(entry, got.payload) == value
