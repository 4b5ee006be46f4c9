"""Modbus TCP framing (MBAP header) for the meter side.

``transaction id (2) | protocol id (2, always 0) | length (2, unit + PDU) | unit (1) | PDU``.
TCP already guarantees the bytes, so a bad header is not noise to skip: it means the peer
does not speak Modbus, and :class:`MbapDecoder` raises so the server drops the connection.

Reference: Modbus Messaging on TCP/IP Implementation Guide V1.0b (modbus.org), 3.1.3.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = 7
MAX_LENGTH = 254  # unit id + 253-byte PDU


class MbapError(ValueError):
    """A header that breaks the MBAP rules; the connection cannot be trusted any more."""


@dataclass(frozen=True, slots=True)
class MbapFrame:
    transaction: int
    unit: int
    pdu: bytes


def encode(transaction: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    """One MBAP frame. ``protocol`` other than 0 only for fault injection."""
    return (
        transaction.to_bytes(2, "big")
        + protocol.to_bytes(2, "big")
        + (len(pdu) + 1).to_bytes(2, "big")
        + bytes([unit])
        + pdu
    )


class MbapDecoder:
    """Cuts MBAP frames from a TCP stream, however the bytes are split."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[MbapFrame]:
        self._buf += data
        frames: list[MbapFrame] = []
        while len(self._buf) >= HEADER:
            protocol = int.from_bytes(self._buf[2:4], "big")
            length = int.from_bytes(self._buf[4:6], "big")
            if protocol != 0:
                raise MbapError(f"protocol id {protocol} is not 0 (Modbus)")
            if not 2 <= length <= MAX_LENGTH:
                raise MbapError(f"length {length} is not 2..{MAX_LENGTH}")
            if len(self._buf) < 6 + length:
                break
            frame = bytes(self._buf[: 6 + length])
            del self._buf[: 6 + length]
            frames.append(MbapFrame(int.from_bytes(frame[0:2], "big"), frame[6], frame[7:]))
        return frames
