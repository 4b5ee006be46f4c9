"""DL/T645 frame layer: golden frames, every malformed input, and the streaming parser.

Golden frames are the test vectors of ../shared/PROTOCOLS.md, each with its source.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterhub.protocols.dlt645.errors import (
    BcdError,
    ChecksumError,
    FramingError,
    LengthError,
)
from meterhub.protocols.dlt645.frame import (
    WILDCARD,
    Frame,
    FrameParser,
    address_from_wire,
    address_to_wire,
    decode,
    encode,
)

H = bytes.fromhex

# PROTOCOLS.md, DL/T645-2007 vectors; sources: PyPI dlt645 (600888/dlt645 protocol.py) and
# EmbedTalk (zerojacks/EmbedTalk frame_645.rs), checksums recomputed.
READ_ENERGY = H("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
READ_ENERGY_REPLY = H("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16")
READ_VOLTAGE = H("68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16")
READ_VOLTAGE_REPLY = H("68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16")
READ_ADDRESS = H("68 AA AA AA AA AA AA 68 13 00 DF 16")
# PROTOCOLS.md relay vector; source: chinawrj/esphome-component-dlt645 (relay frame builder).
TRIP = H("68 61 01 00 00 00 00 68 1C 10 35 89 67 45 33 33 33 33 4D 33 33 33 33 34 34 63 78 16")
# PROTOCOLS.md DL/T645-1997 vector; sources: hoanghon00/meter-dlt645-1997 (Data_Trans.c),
# heyuan ASDU-LS meter manual p. 18, cqqqq/go645.
READ_B611_1997 = H("68 03 00 00 00 00 00 68 01 02 44 E9 03 16")
READ_B611_1997_REPLY = H("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16")


def test_address_travels_least_significant_byte_first() -> None:
    # PROTOCOLS.md: 000000000161 -> 61 01 00 00 00 00; 123456781012 -> 12 10 78 56 34 12
    assert address_to_wire("000000000161") == H("61 01 00 00 00 00")
    assert address_to_wire("123456781012") == H("12 10 78 56 34 12")
    assert address_from_wire(H("12 10 78 56 34 12")) == "123456781012"
    assert address_to_wire(WILDCARD) == b"\xaa" * 6
    assert address_to_wire("AAAAAAAA0161") == H("61 01 AA AA AA AA")


@pytest.mark.parametrize("bad", ["00000000016", "0000000001611", "00000000016G", "0000000001B1"])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises((LengthError, BcdError)):
        address_to_wire(bad)


@pytest.mark.parametrize(
    ("frame", "wire", "preamble"),
    [
        (Frame("000000000161", 0x11, H("00 00 01 00")), READ_ENERGY, 4),
        (Frame("000000000161", 0x91, H("00 00 01 00 26 00 00 00")), READ_ENERGY_REPLY, 0),
        (Frame("000000000161", 0x11, H("00 01 01 02")), READ_VOLTAGE, 0),
        (Frame("000000000161", 0x91, H("00 01 01 02 01 10")), READ_VOLTAGE_REPLY, 0),
        (Frame(WILDCARD, 0x13), READ_ADDRESS, 0),
        (Frame("000000000161", 0x1C,
               H("02 56 34 12 00 00 00 00 1A 00 00 00 00 01 01 30")), TRIP, 0),
        (Frame("000000000003", 0x01, H("11 B6")), READ_B611_1997, 0),
        (Frame("000000000003", 0x81, H("11 B6 00 01")), READ_B611_1997_REPLY, 0),
    ],
)
def test_golden_frames(frame: Frame, wire: bytes, preamble: int) -> None:
    assert encode(frame, preamble) == wire
    assert decode(wire) == frame


def test_decode_accepts_any_preamble_length() -> None:
    for n in range(5):
        assert decode(b"\xfe" * n + READ_VOLTAGE_REPLY).data == H("00 01 01 02 01 10")


def test_control_bits() -> None:
    reply = decode(READ_ENERGY_REPLY)
    assert reply.is_reply and not reply.is_abnormal and not reply.has_more
    assert reply.function == 0x11
    assert Frame("000000000161", 0xB1).has_more
    assert Frame("000000000161", 0xD1, b"\x02").is_abnormal


def test_checksum_error_names_both_sums() -> None:
    bad = READ_VOLTAGE_REPLY[:-2] + b"\x11\x16"
    with pytest.raises(ChecksumError, match=r"11H.*expected 10H"):
        decode(bad)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (READ_VOLTAGE_REPLY[:-1], LengthError),  # truncated
        (READ_VOLTAGE_REPLY + b"\x00", LengthError),  # trailing byte
        (READ_VOLTAGE_REPLY[:-1] + b"\x17", FramingError),  # end byte
        (b"\x00" + READ_VOLTAGE_REPLY, FramingError),  # garbage in front
        (READ_VOLTAGE_REPLY[:7] + b"\x69" + READ_VOLTAGE_REPLY[8:], FramingError),  # 2nd 68
        (b"", FramingError),
    ],
)
def test_malformed_frames(wire: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode(wire)


def test_non_bcd_address_in_a_frame_is_refused() -> None:
    body = H("68 6B 01 00 00 00 00 68 13 00")
    with pytest.raises(BcdError):
        decode(body + bytes([sum(body) & 0xFF, 0x16]))


def test_length_over_200_is_not_a_frame() -> None:
    # DL/T645-2007 7.1: L <= 200 when reading
    with pytest.raises(LengthError):
        Frame("000000000161", 0x91, bytes(201))
    body = H("68 61 01 00 00 00 00 68 91") + bytes([201]) + bytes(201)
    with pytest.raises(LengthError):
        decode(body + bytes([sum(body) & 0xFF, 0x16]))


def test_parser_cuts_back_to_back_frames_with_noise() -> None:
    parser = FrameParser()
    stream = b"\x00\x68\x12" + READ_ENERGY + READ_VOLTAGE_REPLY + b"\xfe\xfe" + TRIP + b"\x68"
    frames = parser.feed(stream)
    assert frames == [decode(READ_ENERGY), decode(READ_VOLTAGE_REPLY), decode(TRIP)]
    assert parser.pending == 1  # the trailing 68 may start a frame


def test_parser_skips_a_garbled_frame_and_finds_the_next() -> None:
    parser = FrameParser()
    garbled = READ_VOLTAGE_REPLY[:-2] + b"\x00\x16"
    assert parser.feed(garbled + READ_ENERGY_REPLY) == [decode(READ_ENERGY_REPLY)]
    assert any(isinstance(e, ChecksumError) for e in parser.errors)


# ----------------------------------------------------------------------------- properties

addresses = st.lists(st.integers(0, 99), min_size=6, max_size=6).map(
    lambda pairs: "".join(f"{p:02d}" for p in pairs)
)
frames = st.builds(
    Frame, addresses, st.integers(0, 255), st.binary(max_size=200)
)


@given(frames, st.integers(0, 4))
def test_encode_decode_round_trip(frame: Frame, preamble: int) -> None:
    assert decode(encode(frame, preamble)) == frame


@given(st.binary(max_size=600))
def test_parser_never_crashes_and_never_invents_a_frame(noise: bytes) -> None:
    parser = FrameParser()
    found = parser.feed(noise)
    for frame in found:
        # anything it returns must be there, byte for byte, checksum and all
        assert encode(frame) in noise


@given(st.lists(st.tuples(frames, st.integers(0, 4)), min_size=1, max_size=6), st.data())
def test_random_splits_decode_to_the_same_frames(
    items: list[tuple[Frame, int]], data: st.DataObject
) -> None:
    stream = b"".join(encode(f, p) for f, p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    parser = FrameParser()
    got: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += parser.feed(stream[start:end])
    assert got == [f for f, _ in items]
    assert parser.pending == 0


@given(st.binary(max_size=40), frames, st.binary(max_size=40))
def test_a_frame_behind_noise_is_found(before: bytes, frame: Frame, after: bytes) -> None:
    # A 68H in the noise may open a false candidate that waits for up to 212 bytes; silence
    # (00H) after it lets that candidate fail, and the parser must then find the real frame.
    parser = FrameParser()
    found = parser.feed(before + encode(frame, 2) + after)
    found += parser.feed(bytes(220))
    assert frame in found
