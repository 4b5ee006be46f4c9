"""What a UART set to one line setting makes of bytes sent at another.

Bytes sent at ``sent`` (baud, data bits, parity, stop bits) become a bit stream on the wire:
idle high, per character a start bit (low), data bits LSB first, the parity bit, stop bits
(high), characters back to back as a master writes a frame. A receiver set to ``heard`` waits
for a falling edge, samples the middle of each of its own bit times, and keeps a character
only when the start bit is still low, the parity checks and the stop bits are high (a
character with a framing or parity error is dropped, as a meter's firmware discards it). It
then hunts for the next falling edge from the middle of its stop bit.

So a master at the wrong baud rate or parity gets what it would on a real line: the meter
hears garbage (no frame, so no answer) and any reply reaches the master garbled. Limits: each
chunk the pty hands over is taken as starting from an idle line (a master writes a request in
one go, so a chunk is a frame), and the timing is ideal (no clock drift, no noise), so equal
settings always decode exactly.
"""

from __future__ import annotations

from fractions import Fraction

from meterhub.serialline import LineSettings


def char_bits(byte: int, line: LineSettings) -> list[int]:
    """The bits of one character on the wire, start bit first."""
    data = [(byte >> i) & 1 for i in range(line.bytesize)]
    bits = [0, *data]
    if line.parity != "N":
        ones = sum(data) % 2
        bits.append(ones if line.parity == "E" else 1 - ones)
    return bits + [1] * line.stopbits


def transcode(data: bytes, sent: LineSettings, heard: LineSettings) -> bytes:
    """The bytes a receiver at ``heard`` takes from ``data`` sent at ``sent``."""
    wire = [bit for byte in data for bit in char_bits(byte, sent)]

    def level(at: Fraction) -> int:
        index = int(at * sent.baud)  # which sent bit the line carries at time ``at``
        return wire[index] if 0 <= index < len(wire) else 1

    out = bytearray()
    sample_at = [Fraction(2 * j + 1, 2 * heard.baud) for j in range(heard.bits_per_char)]
    edge = 0  # index of the sent bit boundary where the hunt for a start bit resumes
    while True:
        while edge < len(wire) and not (wire[edge] == 0 and (edge == 0 or wire[edge - 1])):
            edge += 1
        if edge >= len(wire):
            return bytes(out)
        start = Fraction(edge, sent.baud)
        bits = [level(start + offset) for offset in sample_at]
        if bits[0] != 0:  # a glitch, not a start bit: look again half a bit later
            edge = _boundary_after(start + sample_at[0], sent.baud)
            continue
        edge = _boundary_after(start + sample_at[-1], sent.baud)
        data_bits = bits[1 : 1 + heard.bytesize]
        rest = bits[1 + heard.bytesize :]
        if heard.parity != "N":
            expected = sum(data_bits) % 2 if heard.parity == "E" else 1 - sum(data_bits) % 2
            if rest[0] != expected:
                continue  # parity error: dropped
            rest = rest[1:]
        if not all(rest):
            continue  # framing error (stop bit low): dropped
        out.append(sum(bit << i for i, bit in enumerate(data_bits)))


def _boundary_after(at: Fraction, baud: int) -> int:
    """The first sent bit boundary at or after ``at``."""
    index = at * baud
    return int(index) if index.denominator == 1 else int(index) + 1
