"""DL/T645 frame layer (2007 and 1997 share it): ``[FE..] 68 A0..A5 68 C L DATA CS 16``.

Knows nothing about serial ports or identifiers. :class:`Frame` carries the data already
decoded (-33H); :func:`encode` adds the +33H, checksum and preamble; :func:`decode` checks one
whole frame; :class:`FrameParser` cuts frames out of a byte stream with noise, partial frames,
back-to-back frames and 0..4 FE wake-up bytes, and never returns a frame whose checksum fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meterhub.protocols.dlt645.errors import (
    BcdError,
    ChecksumError,
    Dlt645Error,
    FramingError,
    LengthError,
)

START = 0x68
END = 0x16
PREAMBLE_BYTE = 0xFE
OFFSET = 0x33
HEADER = 10  # 68 A0..A5 68 C L
OVERHEAD = 12  # header + CS + 16
# DL/T645-2007 7.1: "L ... 读数据时 L<=200, 写数据时 L<=50". A longer L is not a frame.
MAX_DATA = 200

WILDCARD = "AAAAAAAAAAAA"  # read address (13H) with one meter on the bus
BROADCAST = "999999999999"  # time sync (08H) and broadcast freeze; meters do not answer

# Control byte (DL/T645-2007 7.1.3)
DIR_REPLY = 0x80  # D7: sent by the meter
ABNORMAL = 0x40  # D6: abnormal reply, the data is one error byte
MORE = 0x20  # D5: follow-up frames exist
FUNCTION = 0x1F


def address_to_wire(address: str) -> bytes:
    """Printed 12-digit address -> 6 bytes, least significant byte first.

    ``A`` digits are allowed in pairs (AAH is the wildcard byte); anything else must be BCD.
    """
    if len(address) != 12:
        raise LengthError(f"address {address!r} must have 12 digits")
    try:
        raw = bytes.fromhex(address)
    except ValueError:
        raise BcdError(f"address {address!r} is not 12 BCD digits") from None
    for byte in raw:
        if byte != 0xAA and (byte >> 4 > 9 or byte & 0x0F > 9):
            raise BcdError(f"address {address!r}: byte {byte:02X}H is neither BCD nor AAH")
    return raw[::-1]


def address_from_wire(raw: bytes) -> str:
    """6 wire bytes (least significant first) -> printed address; checks BCD/AAH."""
    if len(raw) != 6:
        raise LengthError(f"an address has 6 bytes, got {len(raw)}")
    printed = raw[::-1].hex().upper()
    address_to_wire(printed)  # validates
    return printed


def checksum(body: bytes | bytearray) -> int:
    """Sum mod 256 of every byte from the first 68H to the last data byte."""
    return sum(body) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame. ``data`` is the application data, already minus 33H."""

    address: str
    control: int
    data: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not 0 <= self.control <= 0xFF:
            raise Dlt645Error(f"control byte {self.control} is out of range")
        if len(self.data) > MAX_DATA:
            raise LengthError(f"data of {len(self.data)} bytes exceeds L <= {MAX_DATA}")
        address_to_wire(self.address)

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIR_REPLY)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def has_more(self) -> bool:
        return bool(self.control & MORE)

    def encode(self, preamble: int = 0) -> bytes:
        return encode(self, preamble)


def encode(frame: Frame, preamble: int = 0) -> bytes:
    """Frame -> wire bytes with ``preamble`` FE wake-up bytes in front (masters send 4)."""
    if not 0 <= preamble <= 16:
        raise ValueError(f"preamble of {preamble} FE bytes is out of range 0..16")
    body = (
        bytes([START])
        + address_to_wire(frame.address)
        + bytes([START, frame.control, len(frame.data)])
        + bytes((b + OFFSET) & 0xFF for b in frame.data)
    )
    return bytes([PREAMBLE_BYTE]) * preamble + body + bytes([checksum(body), END])


def _frame_at(buf: bytes | bytearray, start: int, max_data: int) -> tuple[Frame | None, int]:
    """Try a frame starting at ``buf[start]`` (a 68H).

    Returns (frame, end) for a good frame, (None, 0) when more bytes are needed; raises a
    :class:`Dlt645Error` when the bytes there cannot be a frame.
    """
    if len(buf) - start < HEADER:
        return None, 0
    if buf[start + 7] != START:
        raise FramingError(f"second start byte is {buf[start + 7]:02X}H, not 68H")
    length = buf[start + 9]
    if length > max_data:
        raise LengthError(f"L = {length} exceeds the maximum of {max_data}")
    end = start + OVERHEAD + length
    if len(buf) < end:
        return None, 0
    expected = checksum(buf[start : end - 2])
    if buf[end - 2] != expected:
        raise ChecksumError(expected, buf[end - 2])
    if buf[end - 1] != END:
        raise FramingError(f"end byte is {buf[end - 1]:02X}H, not 16H")
    address = address_from_wire(bytes(buf[start + 1 : start + 7]))
    data = bytes((b - OFFSET) & 0xFF for b in buf[start + HEADER : end - 2])
    return Frame(address, buf[start + 8], data), end


def decode(raw: bytes, *, max_data: int = MAX_DATA) -> Frame:
    """Exactly one frame, with any number of FE before it and nothing after it."""
    start = 0
    while start < len(raw) and raw[start] == PREAMBLE_BYTE:
        start += 1
    if start >= len(raw) or raw[start] != START:
        raise FramingError("no start byte 68H after the FE preamble")
    frame, end = _frame_at(raw, start, max_data)
    if frame is None:
        raise LengthError(f"frame is truncated: {len(raw) - start} bytes after the preamble")
    if end != len(raw):
        raise LengthError(f"{len(raw) - end} bytes after the end byte 16H")
    return frame


class FrameParser:
    """Streaming frame cutter: ``feed`` bytes as they arrive, get every complete frame.

    Bytes that cannot start a frame are skipped; a candidate that fails (wrong second 68H,
    L too large, checksum, end byte, BCD address) costs only its first byte, so a real frame
    hidden behind noise is still found. What was skipped and why is kept in ``errors`` (the
    last ``keep_errors``) and ``discarded`` for diagnostics.
    """

    def __init__(self, *, max_data: int = MAX_DATA, keep_errors: int = 16) -> None:
        self._buf = bytearray()
        self.max_data = max_data
        self.keep_errors = keep_errors
        self.errors: list[Dlt645Error] = []
        self.discarded = 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def needed(self) -> int:
        """Bytes that must still arrive before :meth:`feed` can give a frame or note an error
        (a lower bound, so a serial reader can sleep until they are there).

        The parser holds back nothing, or a candidate frame that starts with 68H and, once its
        10-byte header is in, has passed the header checks (second 68H, L in range). It looks
        at nothing past that candidate until the candidate is complete (12 + L bytes: header,
        data, checksum, 16H) or, header not yet in, has failed (it cannot end before byte 12
        either way, and a frame starting later ends later still). So the shortest wait is to
        the candidate's end, or to 12 bytes when the header is not in yet.
        """
        pending = len(self._buf)
        if pending < HEADER:
            return OVERHEAD - pending
        return max(1, OVERHEAD + self._buf[HEADER - 1] - pending)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while True:
            start = buf.find(START, pos)
            if start < 0:
                self.discarded += len(buf) - pos
                pos = len(buf)
                break
            self.discarded += start - pos
            try:
                frame, end = _frame_at(buf, start, self.max_data)
            except Dlt645Error as exc:
                self._note(exc)
                self.discarded += 1
                pos = start + 1
                continue
            if frame is None:
                pos = start
                break
            frames.append(frame)
            pos = end
        del buf[:pos]
        return frames

    def _note(self, exc: Dlt645Error) -> None:
        self.errors.append(exc)
        del self.errors[: -self.keep_errors]
