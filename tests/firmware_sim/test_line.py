"""The UART model behind the simulated line: equal settings are transparent, others garble."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.line import char_bits, transcode
from meterhub.protocols.dlt645 import messages
from meterhub.protocols.dlt645.frame import FrameParser
from meterhub.serialline import LineSettings

lines = st.builds(
    LineSettings,
    baud=st.sampled_from([1200, 2400, 4800, 9600, 19200]),
    parity=st.sampled_from("NEO"),
    bytesize=st.sampled_from([7, 8]),
    stopbits=st.sampled_from([1, 2]),
)
# a shared 2-core machine: generation time is the machine's, not the strategy's
ON_A_BUSY_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
READ_ENERGY = messages.read("000000000001", 0x00010000).encode(preamble=4)  # a DL/T645 request


@ON_A_BUSY_MACHINE
@given(data=st.binary(max_size=64), line=lines)
def test_equal_settings_decode_exactly(data: bytes, line: LineSettings) -> None:
    mask = (1 << line.bytesize) - 1
    assert transcode(data, line, line) == bytes(b & mask for b in data)


@ON_A_BUSY_MACHINE
@given(byte=st.integers(0, 255), line=lines)
def test_a_character_has_start_data_parity_and_stop_bits(byte: int, line: LineSettings) -> None:
    bits = char_bits(byte, line)
    assert len(bits) == line.bits_per_char and bits[0] == 0 and bits[-1] == 1
    if line.parity != "N":
        ones = sum(bits[1 : 1 + line.bytesize + 1])
        assert ones % 2 == (0 if line.parity == "E" else 1)


@ON_A_BUSY_MACHINE
@given(data=st.binary(min_size=1, max_size=64))
def test_even_sent_odd_heard_drops_every_character(data: bytes) -> None:
    assert transcode(data, LineSettings(9600, "E"), LineSettings(9600, "O")) == b""


@ON_A_BUSY_MACHINE
@given(data=st.binary(max_size=64), sent=lines, heard=lines)
def test_never_more_characters_than_start_bits(
    data: bytes, sent: LineSettings, heard: LineSettings
) -> None:
    wire = [b for byte in data for b in char_bits(byte, sent)]
    falling_edges = sum(1 for i, b in enumerate(wire) if b == 0 and (i == 0 or wire[i - 1]))
    assert len(transcode(data, sent, heard)) <= falling_edges


def test_a_request_at_the_wrong_baud_is_no_frame_for_the_meter() -> None:
    for sent, heard in ((2400, 9600), (9600, 2400), (4800, 9600), (9600, 19200)):
        garbled = transcode(READ_ENERGY, LineSettings(sent), LineSettings(heard))
        assert garbled != READ_ENERGY
        assert FrameParser().feed(garbled) == [], (sent, heard, garbled.hex())
    assert len(FrameParser().feed(READ_ENERGY)) == 1
