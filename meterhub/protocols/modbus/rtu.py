"""Modbus RTU framing: CRC-16/MODBUS, cutting requests (meter side) and replies (master side)
from a byte stream.

An RTU frame is ``unit, PDU, CRC-lo, CRC-hi``. Real meters find frame ends by 3.5 characters of
silence; a simulated bus only sees bytes, so :class:`RtuRequestFramer` cuts by length (known
from the function code) and confirms by CRC, and resynchronises after noise by taking the
earliest complete frame whose CRC checks. :class:`ReplyFramer` cuts the reply to one request
and says how many bytes it still needs. Nothing here knows about serial ports.

Reference: Modbus over Serial Line Specification V1.02 (modbus.org), 2.5.1 and 6.2.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterhub.protocols.modbus.pdu import request_pdu_length

BROADCAST_UNIT = 0
MAX_FRAME = 256  # unit + 253-byte PDU + CRC (Serial Line spec 2.5.1)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + crc16(frame).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def encode(unit: int, pdu: bytes) -> bytes:
    """One RTU frame: unit id, PDU, CRC."""
    if not 0 <= unit <= 255:
        raise ValueError(f"unit id {unit} is not 0..255")
    return with_crc(bytes([unit]) + pdu)


def garble(frame: bytes) -> bytes:
    """The same frame with a CRC that cannot check (for fault injection)."""
    return frame[:-2] + bytes([frame[-2] ^ 0xFF, frame[-1] ^ 0x5A])


def _reply_size(head: bytes | bytearray) -> int | None:
    """Length of the reply frame at the head: 0 when more bytes must come to tell, None when
    the head cannot start a reply (a function we cannot size)."""
    if len(head) < 2:
        return 0
    function = head[1]
    if function & 0x80:
        return 5  # unit, function | 0x80, exception code, CRC
    if function in (1, 2, 3, 4):
        return 5 + head[2] if len(head) >= 3 else 0  # unit, function, count, data, CRC
    if function in (5, 6, 0x0F, 0x10):
        return 8
    return None


def reply_length(frame: bytes) -> int:
    """Expected length of a reply frame from its first bytes (unit, function, ...); 0 when
    more bytes are needed to tell. Lets a master tell a truncated reply from a garbled one."""
    return _reply_size(frame) or 0


class GarbledReply(Exception):
    """A reply frame was complete by its length but its CRC did not check."""


class ReplyFramer:
    """Cuts the reply to one request (``unit``, ``function``) from the bytes a master receives.

    A reply is sized from its head (exception 5 bytes; FC01-04 5 + byte count; FC05/06/0F/10
    8) and checked by CRC. A byte that cannot start a reply is dropped (hunting after noise); a
    frame whose CRC fails ends the wait at once (:class:`GarbledReply`); a good frame from
    another unit or for another function is skipped, so the wait goes on. :meth:`needed` tells
    a serial reader how many bytes to wait for before looking again.
    """

    def __init__(self, unit: int, function: int) -> None:
        self.unit = unit
        self.function = function
        self.received = bytearray()  # everything fed, for diagnostics
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.received += data
        buf = self._buf
        buf += data
        while buf:
            length = _reply_size(buf)
            if length is None:
                del buf[:1]
                continue
            if not length or len(buf) < length:
                break
            frame = bytes(buf[:length])
            if not crc_ok(frame):
                raise GarbledReply(frame.hex(" "))
            del buf[:length]
            if frame[0] == self.unit and frame[1] & 0x7F == self.function:
                return [frame]
        return []

    def needed(self) -> int:
        """Bytes that must still arrive before :meth:`feed` can give a frame or raise: the
        rest of the frame at the head once its length is known, else the rest of the
        shortest reply (5 bytes); at least 1. (After ``feed`` found the answer, what came
        behind it is not hunted through, so the head may be noise longer than 5 bytes.)"""
        length = _reply_size(self._buf) if len(self._buf) >= 3 else None
        return max(1, (length or 5) - len(self._buf))


@dataclass(frozen=True, slots=True)
class RtuFrame:
    """A frame cut from the stream with a good CRC; ``pdu`` excludes unit id and CRC."""

    unit: int
    pdu: bytes


class RtuRequestFramer:
    """Cuts request frames from the master's byte stream, however the bytes are split.

    Like a meter in "hunting" mode: the bytes at the head are taken as a frame start if they
    can be one (unit 0..247, a function we can size), and the framer waits until that frame is
    complete. A frame whose CRC fails, or a head that cannot start a frame, costs one byte and
    the search goes on. Waiting on the head rather than grabbing any CRC-valid run further on
    matters: a write's data may itself contain bytes that look like a whole request.
    A function code we cannot size is recognised only when the buffer is exactly one frame
    (the master sent it in one write and now waits for the reply).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0  # noise bytes dropped while resynchronising

    def feed(self, data: bytes) -> list[RtuFrame]:
        self._buf += data
        buf = self._buf
        frames: list[RtuFrame] = []
        while len(buf) >= 4:
            length = _request_length(buf)
            if length == 0:
                break  # a plausible start; wait for the bytes that tell its length
            if length is None:
                if crc_ok(bytes(buf)):
                    frames.append(RtuFrame(buf[0], bytes(buf[1:-2])))
                    buf.clear()
                    break
                self._drop(1)
                continue
            if len(buf) < length:
                break
            frame = bytes(buf[:length])
            if crc_ok(frame):
                frames.append(RtuFrame(frame[0], frame[1:-2]))
                del buf[:length]
            else:
                self._drop(1)
        return frames

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self.discarded += count


def _request_length(buf: bytearray) -> int | None:
    """Frame length if ``buf`` starts like a request we can size, 0 if more bytes are needed,
    None if the head cannot start a request we know."""
    if buf[0] > 247:
        return None
    pdu_length = request_pdu_length(bytes(buf[1:7]))
    if pdu_length is None:
        return None
    if pdu_length and buf[1] in (0x0F, 0x10):
        quantity = int.from_bytes(buf[4:6], "big")
        byte_count = 2 * quantity if buf[1] == 0x10 else (quantity + 7) // 8
        if buf[6] != byte_count:  # a write whose byte count disagrees is noise, not a frame
            return None
    return 1 + pdu_length + 2 if pdu_length else 0
