"""DL/T645 application layer: requests and replies for both sides, abnormal replies."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.dlt645.errors import (
    AbnormalReplyError,
    AddressMismatchError,
    LengthError,
    UnexpectedReplyError,
    error_meaning,
)
from meterhub.protocols.dlt645.frame import BROADCAST, WILDCARD, Frame, decode, encode

H = bytes.fromhex
METER = "000000000161"


def test_relay_vector() -> None:
    # PROTOCOLS.md trip vector; source: chinawrj/esphome-component-dlt645 (relay frame builder)
    frame = msg.relay_control(METER, msg.RelayCommand.TRIP, valid_until=datetime(2030, 1, 1))
    assert encode(frame) == H(
        "68 61 01 00 00 00 00 68 1C 10 35 89 67 45 33 33 33 33 4D 33 33 33 33 34 34 63 78 16"
    )
    request = msg.parse_request(frame)
    assert request == msg.RelayRequest(2, "123456", "00000000", msg.RelayCommand.TRIP,
                                       datetime(2030, 1, 1))


def test_read_address_vector() -> None:
    # PROTOCOLS.md: 68 AA AA AA AA AA AA 68 13 00 DF 16
    assert encode(msg.read_address()) == H("68 AA AA AA AA AA AA 68 13 00 DF 16")
    reply = msg.normal_reply(METER, 0x13, H("61 01 00 00 00 00"))
    assert reply.control == 0x93
    assert msg.parse_address_reply(msg.read_address(), reply) == METER


def test_read_reply_round_trip_2007_and_1997() -> None:
    request = msg.read(METER, 0x00010000)
    assert msg.parse_request(request) == msg.ReadRequest(0x00010000)
    reply = decode(H("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"))
    assert msg.parse_read_reply(request, reply) == msg.ReadReply(0x00010000, H("26 00 00 00"),
                                                                 False)
    old = msg.read("000000000003", 0xB611, "1997")
    assert old.control == 0x01
    assert msg.parse_request(old, "1997") == msg.ReadRequest(0xB611)
    reply97 = decode(H("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"))
    assert msg.parse_read_reply(old, reply97, "1997").payload == H("00 01")


def test_follow_up_frames() -> None:
    first = msg.read_reply(METER, 0x0001FF00, b"\x01" * 4, more=True)
    assert first.control == 0xB1
    request = msg.read(METER, 0x0001FF00)
    assert msg.parse_read_reply(request, first).more
    follow = msg.read_follow_up(METER, 0x0001FF00, 1)
    assert follow.control == 0x12 and follow.data == H("00 FF 01 00 01")
    assert msg.parse_request(follow) == msg.FollowUpRequest(0x0001FF00, 1)
    last = msg.read_reply(METER, 0x0001FF00, b"\x02" * 4, follow_up=True, seq=1)
    assert last.control == 0x92 and last.data[-1] == 1
    parsed = msg.parse_read_reply(follow, last)
    assert parsed == msg.ReadReply(0x0001FF00, b"\x02" * 4, False, 1)
    old = msg.read_follow_up("000000000003", 0x901F, 1, "1997")
    assert old.control == 0x02 and old.data == H("1F 90")


@pytest.mark.parametrize(
    ("error_byte", "words"),
    [
        (0x02, "no requested data"),
        (0x04, "wrong password or unauthorised"),
        (0x08, "baud rate cannot be changed"),
        (0x01 | 0x40, "other error; too many tariffs"),
    ],
)
def test_abnormal_reply_says_why(error_byte: int, words: str) -> None:
    request = msg.read(METER, 0x04001001)
    reply = msg.error_reply(METER, request.control, error_byte)
    assert reply.control == 0xD1
    with pytest.raises(AbnormalReplyError, match=words) as caught:
        msg.parse_read_reply(request, reply)
    assert caught.value.error_byte == error_byte
    assert error_meaning(0x04, "1997") == "wrong password"


def test_reply_checks() -> None:
    request = msg.read(METER, 0x00010000)
    other = msg.read_reply("000000000162", 0x00010000, bytes(4))
    with pytest.raises(AddressMismatchError, match="000000000162"):
        msg.parse_read_reply(request, other)
    wrong_di = msg.read_reply(METER, 0x00020000, bytes(4))
    with pytest.raises(UnexpectedReplyError, match="00020000"):
        msg.parse_read_reply(request, wrong_di)
    with pytest.raises(UnexpectedReplyError, match="request"):
        msg.check_reply(request, request)
    with pytest.raises(UnexpectedReplyError):
        msg.check_reply(request, msg.normal_reply(METER, 0x14))
    with pytest.raises(LengthError):
        msg.check_reply(request, Frame(METER, 0xD1, b""))


def test_abbreviated_and_wildcard_addresses() -> None:
    assert msg.address_matches(WILDCARD, METER)
    assert msg.address_matches("AAAAAAAA0161", METER)
    assert not msg.address_matches("AAAAAAAA0162", METER)
    assert not msg.address_matches("0000AAAA0161", METER)  # AA only as the high part
    assert msg.address_matches(METER, METER)
    assert not msg.address_matches(BROADCAST, METER)


def test_broadcast_time_orders() -> None:
    when = datetime(2026, 11, 23, 13, 45, 7)
    frame = msg.broadcast_time(when)
    assert frame.address == BROADCAST and frame.control == 0x08
    assert frame.data == H("07 45 13 23 11 26")  # ss mm hh DD MM YY
    assert msg.parse_request(frame) == msg.TimeSyncRequest(when)
    yy_first = msg.Options(time_order="yy-first")
    other = msg.broadcast_time(when, options=yy_first)
    assert other.data == H("26 11 23 13 45 07")
    assert msg.parse_request(other, options=yy_first) == msg.TimeSyncRequest(when)


def test_change_baud_conventions() -> None:
    assert msg.change_baud(METER, 9600).data == H("20")  # bit 5
    assert msg.change_baud(METER, 19200).data == H("40")  # bit 6
    bcd = msg.Options(baud_code="bcd")
    assert msg.change_baud(METER, 2400, options=bcd).data == H("08")
    assert msg.change_baud(METER, 9600, options=bcd).data == H("32")
    assert msg.parse_request(msg.change_baud(METER, 4800)) == msg.ChangeBaudRequest(4800)
    assert msg.change_baud(METER, 2400, version="1997").control == 0x0C
    with pytest.raises(ValueError):
        msg.change_baud(METER, 14400)


def test_freeze_and_write() -> None:
    assert msg.freeze(BROADCAST).data == H("99 99 99 99")
    assert msg.freeze(METER, day=1, hour=0, minute=0).data == H("00 00 01 99")
    write = msg.write(METER, 0x04001001, H("00 50 00 00"))
    assert write.control == 0x14
    assert write.data == H("01 10 00 04 02 56 34 12 00 00 00 00 00 50 00 00")
    assert msg.parse_request(write) == msg.WriteRequest(0x04001001, 2, "123456", "00000000",
                                                        H("00 50 00 00"))
    old = msg.write("000000000003", 0xC010, H("01 23 11 26"), version="1997")
    assert old.control == 0x04
    assert msg.parse_request(old, "1997") == msg.WriteRequest(0xC010, 2, "123456", None,
                                                              H("01 23 11 26"))
    with pytest.raises(LengthError):
        msg.write(METER, 0x04001001, bytes(40))  # L <= 50 for writes


def test_malformed_requests() -> None:
    with pytest.raises(LengthError):
        msg.parse_request(Frame(METER, 0x11, H("00 00 01")))
    with pytest.raises(msg.UnsupportedRequestError):
        msg.parse_request(Frame(METER, 0x11, H("00 00 01 00")), "1997")
    bad_relay = msg.relay_control(METER, msg.RelayCommand.TRIP, valid_until=datetime(2030, 1, 1))
    data = bytearray(bad_relay.data)
    data[8] = 0x99
    with pytest.raises(Exception, match="N1 = 99H"):
        msg.parse_request(Frame(METER, 0x1C, bytes(data)))


@given(
    st.sampled_from(list(msg.RelayCommand)),
    st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.integers(0, 999999).map(lambda n: f"{n:06d}"),
    st.integers(0, 0xFFFFFFFF).map(lambda n: f"{n:08X}"),
)
def test_relay_round_trip(
    command: msg.RelayCommand, until: datetime, password: str, operator: str
) -> None:
    frame = msg.relay_control(METER, command, valid_until=until, password=password, level=4,
                              operator=operator)
    assert len(frame.data) == 16
    assert msg.parse_request(decode(encode(frame, 4))) == msg.RelayRequest(
        4, password, operator, command, until
    )
