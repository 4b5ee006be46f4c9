"""Meter-side Modbus codec: CRC, RTU request framing, MBAP, PDUs; checked against the spec's
worked examples and against pymodbus (an independent implementation)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from meterhub.protocols.modbus import rtu, tcp
from meterhub.protocols.modbus.pdu import (
    ExceptionCode,
    PduError,
    Request,
    decode_request,
    exception_reply,
    read_bits_reply,
    read_registers_reply,
    write_reply,
)

# --------------------------------------------------------------------------- CRC golden values


def test_crc_check_value_from_the_crc_catalogue() -> None:
    # CRC-16/MODBUS: width 16, poly 0x8005 (reflected 0xA001), init 0xFFFF, check 0x4B37
    # (Greg Cook, "Catalogue of parametrised CRC algorithms", CRC-16/MODBUS entry).
    assert rtu.crc16(b"123456789") == 0x4B37


def test_crc_example_from_the_serial_line_spec() -> None:
    # Modbus over Serial Line V1.02, 6.2.2 "CRC Generation" example: frame 02 07 gives CRC
    # 0x1241, sent low byte first: 02 07 41 12.
    assert rtu.crc16(bytes([0x02, 0x07])) == 0x1241
    assert rtu.with_crc(bytes([0x02, 0x07])) == bytes.fromhex("02 07 41 12")


@pytest.mark.parametrize(
    ("frame", "source"),
    [
        # Modbus Application Protocol V1.1b3 6.3 example (read holding 108..110 of unit 17),
        # as an RTU frame (simplymodbus.ca "Function 03" example).
        ("11 03 00 6B 00 03 76 87", "spec 6.3 / simplymodbus"),
        # Eastron SDM120 manual: read voltage (input register 30001) from unit 1.
        ("01 04 00 00 00 02 71 CB", "Eastron SDM120 manual"),
        # simplymodbus.ca "Function 05" example: force coil 173 ON on unit 17.
        ("11 05 00 AC FF 00 4E 8B", "simplymodbus function 05"),
    ],
)
def test_known_frames_have_good_crcs(frame: str, source: str) -> None:
    data = bytes.fromhex(frame)
    assert rtu.crc_ok(data), source
    assert rtu.encode(data[0], data[1:-2]) == data


@given(st.binary(max_size=256))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    # pymodbus returns the CRC byte-swapped into wire order; ours is the CRC value.
    assert rtu.crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def test_garble_breaks_the_crc_only() -> None:
    frame = rtu.encode(1, bytes.fromhex("0404435B999A"))
    bad = rtu.garble(frame)
    assert bad[:-2] == frame[:-2] and not rtu.crc_ok(bad)


# --------------------------------------------------------------------------- RTU framing

_pymodbus_requests = st.one_of(
    st.builds(
        lambda a, c, u: ReadHoldingRegistersRequest(address=a, count=c, dev_id=u),
        st.integers(0, 0xFF00), st.integers(1, 125), st.integers(0, 247),
    ),
    st.builds(
        lambda a, c, u: ReadInputRegistersRequest(address=a, count=c, dev_id=u),
        st.integers(0, 0xFF00), st.integers(1, 125), st.integers(0, 247),
    ),
    st.builds(
        lambda a, c, u: ReadCoilsRequest(address=a, count=c, dev_id=u),
        st.integers(0, 0xF000), st.integers(1, 2000), st.integers(0, 247),
    ),
    st.builds(
        lambda a, v, u: WriteSingleCoilRequest(address=a, bits=[v], dev_id=u),
        st.integers(0, 0xFFFF), st.booleans(), st.integers(0, 247),
    ),
    st.builds(
        lambda a, v, u: WriteSingleRegisterRequest(address=a, registers=[v], dev_id=u),
        st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 247),
    ),
    st.builds(
        lambda a, v, u: WriteMultipleRegistersRequest(address=a, registers=v, dev_id=u),
        st.integers(0, 0xFF00), st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
        st.integers(0, 247),
    ),
)


@given(st.lists(_pymodbus_requests, min_size=1, max_size=4), st.data())
def test_requests_built_by_pymodbus_are_cut_and_decoded(
    requests: list, data: st.DataObject
) -> None:
    """pymodbus builds the frames (the gateway side), our framer cuts them however the bytes
    arrive, and our decoder reads the same fields pymodbus put in."""
    framer = FramerRTU(DecodePDU(is_server=False))
    stream = b"".join(framer.buildFrame(r) for r in requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    ours = rtu.RtuRequestFramer()
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames.extend(ours.feed(stream[start:end]))
    assert [f.unit for f in frames] == [r.dev_id for r in requests]
    for frame, request in zip(frames, requests, strict=True):
        decoded = decode_request(frame.pdu)
        assert decoded.function == request.function_code
        assert decoded.address == request.address
        if request.function_code in (5,):
            assert decoded.values == (int(request.bits[0]),)
        elif request.function_code in (6, 16):
            assert decoded.values == tuple(request.registers)
        else:
            assert decoded.count == request.count
    assert ours.discarded == 0


def test_framer_resyncs_after_noise() -> None:
    good = bytes.fromhex("01 04 00 00 00 02 71 CB")
    framer = rtu.RtuRequestFramer()
    assert framer.feed(bytes.fromhex("FF 00 13 03") + good) == [
        rtu.RtuFrame(1, bytes.fromhex("04 00 00 00 02"))
    ]
    assert framer.discarded == 4


def test_framer_waits_for_a_partial_frame_then_takes_the_next() -> None:
    good = bytes.fromhex("11 03 00 6B 00 03 76 87")
    framer = rtu.RtuRequestFramer()
    assert framer.feed(good[:5]) == []
    assert framer.feed(good[5:] + good[:3]) == [rtu.RtuFrame(0x11, good[1:-2])]
    assert framer.feed(good[3:]) == [rtu.RtuFrame(0x11, good[1:-2])]


def test_framer_drops_a_frame_with_a_bad_crc() -> None:
    framer = rtu.RtuRequestFramer()
    bad = rtu.garble(bytes.fromhex("01 04 00 00 00 02 71 CB"))
    good = bytes.fromhex("11 03 00 6B 00 03 76 87")
    assert framer.feed(bad + good) == [rtu.RtuFrame(0x11, good[1:-2])]


def test_unknown_function_is_cut_when_the_whole_buffer_checks() -> None:
    frame = rtu.encode(1, bytes([0x2B, 0x0E, 0x01, 0x00]))  # read device identification
    assert rtu.RtuRequestFramer().feed(frame) == [rtu.RtuFrame(1, frame[1:-2])]


@given(st.binary(max_size=600))
def test_framer_survives_random_bytes_and_only_returns_checked_frames(noise: bytes) -> None:
    framer = rtu.RtuRequestFramer()
    for frame in framer.feed(noise):
        assert rtu.crc_ok(rtu.encode(frame.unit, frame.pdu))
    assert len(framer._buf) <= 2 * rtu.MAX_FRAME


@pytest.mark.parametrize(
    ("head", "length"),
    [("01 03 04", 9), ("01 83 02", 5), ("01 05 00", 8), ("01 10 00", 8), ("01", 0), ("01 03", 0)],
)
def test_reply_length(head: str, length: int) -> None:
    assert rtu.reply_length(bytes.fromhex(head)) == length


# --------------------------------------------------------------------------- PDUs


def test_decode_write_multiple_registers() -> None:
    pdu = bytes.fromhex("10 00 01 00 02 04 00 0A 01 02")  # spec 6.12 example
    assert decode_request(pdu) == Request(0x10, 1, 2, (0x000A, 0x0102))


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("2B 0E 01 00", ExceptionCode.ILLEGAL_FUNCTION),
        ("03 00 00 00 00", ExceptionCode.ILLEGAL_DATA_VALUE),  # quantity 0
        ("03 00 00 00 7E", ExceptionCode.ILLEGAL_DATA_VALUE),  # 126 > 125
        ("03 FF FF 00 02", ExceptionCode.ILLEGAL_DATA_ADDRESS),  # past 0xFFFF
        ("05 00 00 12 34", ExceptionCode.ILLEGAL_DATA_VALUE),  # coil not FF00/0000
        ("10 00 01 00 02 03 00 0A 01", ExceptionCode.ILLEGAL_DATA_VALUE),  # byte count
        ("03 00", ExceptionCode.ILLEGAL_DATA_VALUE),
    ],
)
def test_bad_requests_carry_their_exception_code(pdu: str, code: ExceptionCode) -> None:
    with pytest.raises(PduError) as caught:
        decode_request(bytes.fromhex(pdu))
    assert caught.value.code == code


def test_exception_reply_matches_the_spec() -> None:
    # spec 7, example: function 01 with exception 02 -> 81 02
    assert exception_reply(0x01, ExceptionCode.ILLEGAL_DATA_ADDRESS) == bytes.fromhex("81 02")


def test_read_bits_reply_packs_lsb_first() -> None:
    # spec 6.1 example: coils 20..38 status CD 6B 05
    bits = [1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1]
    assert read_bits_reply(1, bits) == bytes.fromhex("01 03 CD 6B 05")


@given(
    st.sampled_from([3, 4]),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    st.integers(1, 247),
)
def test_pymodbus_decodes_our_register_replies(function: int, words: list[int], unit: int) -> None:
    frame = rtu.encode(unit, read_registers_reply(function, words))
    used, pdu = FramerRTU(DecodePDU(is_server=False)).handleFrame(frame, unit, 0)
    assert used == len(frame) and pdu is not None
    assert pdu.function_code == function and list(pdu.registers) == words


@given(st.integers(0, 0xFFFF), st.booleans(), st.integers(0, 0xFFFF))
def test_pymodbus_decodes_our_write_replies(address: int, coil: bool, value: int) -> None:
    decoder = FramerRTU(DecodePDU(is_server=False))
    coil_frame = rtu.encode(1, write_reply(Request(5, address, 1, (int(coil),))))
    _, pdu = decoder.handleFrame(coil_frame, 1, 0)
    assert pdu is not None and pdu.address == address and pdu.bits[0] is coil
    reg_frame = rtu.encode(1, write_reply(Request(6, address, 1, (value,))))
    _, pdu = decoder.handleFrame(reg_frame, 1, 0)
    assert pdu is not None and pdu.address == address and pdu.registers == [value]


def test_pymodbus_decodes_our_exception_reply() -> None:
    frame = rtu.encode(7, exception_reply(4, ExceptionCode.ILLEGAL_DATA_ADDRESS))
    _, pdu = FramerRTU(DecodePDU(is_server=False)).handleFrame(frame, 7, 0)
    assert pdu is not None and pdu.isError() and pdu.exception_code == 2


# --------------------------------------------------------------------------- MBAP


def test_mbap_example() -> None:
    # Modbus TCP implementation guide 3.1.3 layout; tid 1, unit 17, read holding 108+3.
    frame = tcp.encode(1, 0x11, bytes.fromhex("03 00 6B 00 03"))
    assert frame == bytes.fromhex("00 01 00 00 00 06 11 03 00 6B 00 03")
    assert tcp.MbapDecoder().feed(frame) == [tcp.MbapFrame(1, 0x11, frame[7:])]


@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255),
                       st.binary(min_size=1, max_size=253)), min_size=1, max_size=4),
    st.data(),
)
def test_mbap_split_anywhere(frames: list[tuple[int, int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(tcp.encode(*f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = tcp.MbapDecoder()
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(decoder.feed(stream[start:end]))
    assert out == [tcp.MbapFrame(*f) for f in frames]


@given(st.integers(0, 0xFFFF), st.integers(0, 247), st.lists(st.integers(0, 0xFFFF), max_size=5))
def test_pymodbus_reads_our_mbap(tid: int, unit: int, words: list[int]) -> None:
    frame = tcp.encode(tid, unit, read_registers_reply(3, words or [0]))
    used, pdu = FramerSocket(DecodePDU(is_server=False)).handleFrame(frame, 0, 0)
    assert used == len(frame) and pdu is not None
    assert pdu.transaction_id == tid and list(pdu.registers) == (words or [0])


@pytest.mark.parametrize(
    ("frame", "why"),
    [("00 01 00 01 00 06 11 03 00 6B 00 03", "protocol id"), ("00 01 00 00 01 00 11", "length")],
)
def test_mbap_rejects_bad_headers(frame: str, why: str) -> None:
    with pytest.raises(tcp.MbapError, match=why):
        tcp.MbapDecoder().feed(bytes.fromhex(frame))


def test_a_frame_inside_a_write_is_not_cut_out_of_it() -> None:
    """A write's data may hold bytes that look like a whole request; the framer waits for the
    frame that started at the head instead of grabbing the look-alike."""
    inner = bytes.fromhex("01 04 00 00 00 02 71 CB")
    words = [int.from_bytes(inner[i : i + 2], "big") for i in range(0, 8, 2)]
    outer = FramerRTU(DecodePDU(is_server=False)).buildFrame(
        WriteMultipleRegistersRequest(address=0, registers=words, dev_id=3)
    )
    framer = rtu.RtuRequestFramer()
    frames = [f for i in range(len(outer)) for f in framer.feed(outer[i : i + 1])]
    assert [f.unit for f in frames] == [3]
    assert decode_request(frames[0].pdu).values == tuple(words)
