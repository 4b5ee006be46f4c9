"""The simulator's DL/T645 meter side (firmware_sim.dlt645) on frames, without a line:
who answers, what it refuses and why, and what relay, write and broadcast commands change."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from firmware_sim.dlt645 import Dlt645BusProtocol
from firmware_sim.meter import SimMeter
from meterhub.protocols.dlt645 import messages as msg
from meterhub.protocols.dlt645.frame import BROADCAST, Frame, decode, encode
from meterhub.protocols.dlt645.identifiers import (
    STATUS3_KEEP_POWER,
    STATUS3_PRE_TRIP_ALARM,
    STATUS3_RELAY_OPEN,
    decode_value,
    lookup,
)

NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
A = "000000000161"
B = "000000000162"
OLD = "000000000003"
FUTURE = datetime(2030, 1, 1)


def frozen() -> float:
    return NOW.timestamp()


@pytest.fixture
def meters() -> list[SimMeter]:
    return [
        SimMeter(A, energy_kwh=5.0, now=frozen),
        SimMeter(B, energy_kwh=6.0, now=frozen),
        SimMeter(OLD, protocol="dlt645-1997", energy_kwh=7.0, now=frozen),
    ]


def ask(protocol: Dlt645BusProtocol, meters: list[SimMeter], frame: Frame) -> Frame | None:
    """Send one request through feed/respond as the bus would; the decoded reply or None."""
    requests = protocol.feed(encode(frame, 4))
    assert len(requests) == 1
    _, reply = protocol.respond(requests[0], meters)
    return None if reply is None else decode(reply)


def value(reply: Frame | None, di: int, version: str = "2007") -> object:
    assert reply is not None and not reply.is_abnormal
    width = 4 if version == "2007" else 2
    return decode_value(lookup(di, version), reply.data[width:])


def test_each_meter_answers_only_its_own_address(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    assert value(ask(p, meters, msg.read(A, 0x00010000)), 0x00010000) == 5.0
    assert value(ask(p, meters, msg.read(B, 0x00010000)), 0x00010000) == 6.0
    assert ask(p, meters, msg.read("000000000999", 0x00010000)) is None
    # a 1997 meter does not answer a 2007 read, even at its own address
    assert ask(p, meters, msg.read(OLD, 0x00010000)) is None
    assert value(ask(p, meters, msg.read(OLD, 0x9010, "1997")), 0x9010, "1997") == 7.0


def test_replies_are_what_the_standard_says(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol(reply_preamble=0)
    request = msg.read(A, 0x00010000)
    _, wire = p.respond(p.feed(encode(request))[0], meters)
    assert wire is not None and wire[0] == 0x68  # no preamble when asked for none
    reply = decode(wire)
    assert reply.control == 0x91 and reply.address == A
    assert msg.parse_read_reply(request, reply).payload == bytes.fromhex("00 05 00 00")


def test_unknown_data_gets_the_no_data_error(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    reply = ask(p, meters, msg.read(A, 0x12345678))
    assert reply is not None and reply.control == 0xD1 and reply.data == b"\x02"


def test_broadcast_time_sets_every_clock_without_a_reply(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    when = datetime(2027, 1, 2, 3, 4, 5)
    assert ask(p, meters, msg.broadcast_time(when)) is None
    assert [m.clock() for m in meters] == [when.replace(tzinfo=UTC)] * 3
    assert ask(p, meters, Frame(BROADCAST, 0x11, bytes(4))) is None  # a broadcast read: silence


def test_wildcard_read_address_and_collision(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    one = ask(p, meters[:1], msg.read_address())
    assert one is not None and msg.parse_address_reply(msg.read_address(), one) == A
    _, wire = p.respond(p.feed(encode(msg.read_address()))[0], meters)
    assert wire is not None
    with pytest.raises(ValueError, match="checksum"):  # two meters at once garble the line
        decode(wire)
    assert ask(p, meters, Frame(A, 0x13)) is None  # read address wants the wildcard


def test_relay_commands_and_status_word(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    meter = meters[0]

    def relay(command: msg.RelayCommand, **kwargs: object) -> Frame | None:
        frame = msg.relay_control(A, command, valid_until=FUTURE, **kwargs)  # type: ignore[arg-type]
        return ask(p, meters, frame)

    def status() -> int:
        word = value(ask(p, meters, msg.read(A, 0x04000503)), 0x04000503)
        assert isinstance(word, int)
        return word

    reply = relay(msg.RelayCommand.TRIP)
    assert reply is not None and reply.control == 0x9C and reply.data == b""
    assert meter.relay_open and status() & STATUS3_RELAY_OPEN
    relay(msg.RelayCommand.ALARM)
    assert status() & STATUS3_PRE_TRIP_ALARM
    relay(msg.RelayCommand.ALARM_RELEASE)
    assert not status() & STATUS3_PRE_TRIP_ALARM
    relay(msg.RelayCommand.KEEP_POWER)
    assert not meter.relay_open and status() & STATUS3_KEEP_POWER
    refused = relay(msg.RelayCommand.TRIP)  # keep power: a trip is refused
    assert refused is not None and refused.control == 0xDC and not meter.relay_open
    relay(msg.RelayCommand.KEEP_POWER_RELEASE)
    relay(msg.RelayCommand.TRIP)
    assert meter.relay_open
    wrong = relay(msg.RelayCommand.CLOSE_DIRECTLY, password="000000")
    assert wrong is not None and wrong.data == bytes([msg.ERR_PASSWORD]) and meter.relay_open
    expired = ask(p, meters, msg.relay_control(A, msg.RelayCommand.CLOSE_DIRECTLY,
                                               valid_until=datetime(2026, 11, 23, 10, 29)))
    assert expired is not None and expired.is_abnormal and meter.relay_open
    assert not meters[1].relay_open


def test_write_parameters_need_the_password(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    amount = bytes.fromhex("00 20 00 00")  # 20.00 yuan
    ok = ask(p, meters, msg.write(A, 0x04001001, amount))
    assert ok is not None and ok.control == 0x94
    assert value(ask(p, meters, msg.read(A, 0x04001001)), 0x04001001) == 20.0
    assert value(ask(p, meters, msg.read(B, 0x04001001)), 0x04001001) == 50.0
    refused = ask(p, meters, msg.write(A, 0x04001001, amount, password="111111"))
    assert refused is not None and refused.control == 0xD4
    assert refused.data == bytes([msg.ERR_PASSWORD])
    read_only = ask(p, meters, msg.write(A, 0x00010000, amount))
    assert read_only is not None and read_only.is_abnormal
    assert meters[0].value("energy_import_total") == 5.0


def test_baud_change_is_refused_and_freeze_acknowledged(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    baud = ask(p, meters, msg.change_baud(A, 9600))
    assert baud is not None and baud.control == 0xD7 and baud.data == bytes([msg.ERR_BAUD])
    freeze = ask(p, meters, msg.freeze(A))
    assert freeze is not None and freeze.control == 0x96
    assert ask(p, meters, msg.freeze(BROADCAST)) is None


def test_garbage_between_requests_and_corrupt(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol()
    stream = b"\x00\x68\xff" + encode(msg.read(A, 0x00010000), 2) + b"\x16\x16"
    stream += encode(msg.read(B, 0x00010000))
    requests = p.feed(stream)
    assert [r.address for r in requests if isinstance(r, Frame)] == [A, B]
    # replies heard on the line (another meter's) are not requests
    assert p.feed(encode(msg.read_reply(A, 0x00010000, bytes(4)))) == []
    _, wire = p.respond(requests[0], meters)
    assert wire is not None
    with pytest.raises(ValueError, match="checksum"):
        decode(p.corrupt(wire))


def test_long_answers_use_follow_up_frames(meters: list[SimMeter]) -> None:
    p = Dlt645BusProtocol(max_reply_data=10)
    first = ask(p, meters, msg.read(A, 0x0001FF00))
    assert first is not None and first.control == 0xB1 and len(first.data) == 10
    payload = first.data[4:]
    seq = 0
    while True:
        seq += 1
        part = ask(p, meters, msg.read_follow_up(A, 0x0001FF00, seq))
        assert part is not None and part.function == 0x12 and part.data[-1] == seq
        payload += part.data[4:-1]
        if not part.has_more:
            break
    assert decode_value(lookup(0x0001FF00), payload) == pytest.approx((5.0, 0, 0, 0, 0))
    no_more = ask(p, meters, msg.read_follow_up(A, 0x0001FF00, seq + 1))
    assert no_more is not None and no_more.control == 0xD2
