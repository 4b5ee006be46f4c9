"""Modbus PDUs as a meter (server) sees them: requests in, replies out.

Independent of pymodbus on purpose: the gateway talks through pymodbus and the simulator
through this module, so each checks the other byte for byte. Framing (RTU's CRC, TCP's MBAP)
lives in :mod:`.rtu` and :mod:`.tcp`; this module knows nothing about either.

Reference: Modbus Application Protocol Specification V1.1b3 (modbus.org), section 6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum


class FunctionCode(IntEnum):
    READ_COILS = 0x01
    READ_HOLDING_REGISTERS = 0x03
    READ_INPUT_REGISTERS = 0x04
    WRITE_SINGLE_COIL = 0x05
    WRITE_SINGLE_REGISTER = 0x06
    WRITE_MULTIPLE_REGISTERS = 0x10


class ExceptionCode(IntEnum):
    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED = 0x0B  # a TCP gateway's serial target did not answer


#: Quantity limits per request (spec 6.1, 6.3, 6.4, 6.12).
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_REGISTERS = 123
COIL_ON = 0xFF00
COIL_OFF = 0x0000


class PduError(ValueError):
    """A request the meter answers with an exception reply (``code``)."""

    def __init__(self, code: ExceptionCode, why: str) -> None:
        self.code = code
        super().__init__(f"exception {code.value:02X} ({code.name.lower()}): {why}")


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request PDU. ``values`` carries written data (coil: 0/1, registers: words)."""

    function: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()

    @property
    def is_write(self) -> bool:
        return self.function in (
            FunctionCode.WRITE_SINGLE_COIL,
            FunctionCode.WRITE_SINGLE_REGISTER,
            FunctionCode.WRITE_MULTIPLE_REGISTERS,
        )


def request_pdu_length(pdu_head: bytes) -> int | None:
    """Length of a request PDU from its first bytes: 0 when more bytes are needed to tell,
    None when the function code has no length we know (answered with ILLEGAL_FUNCTION)."""
    if not pdu_head:
        return 0
    function = pdu_head[0]
    if function in (1, 2, 3, 4, 5, 6):
        return 5
    if function in (0x0F, 0x10):
        return 6 + pdu_head[5] if len(pdu_head) >= 6 else 0
    return None


def decode_request(pdu: bytes) -> Request:
    """Parse a request PDU; PduError carries the exception code the meter must answer."""
    if not pdu:
        raise PduError(ExceptionCode.ILLEGAL_FUNCTION, "empty PDU")
    function = pdu[0]
    if function not in tuple(FunctionCode):
        raise PduError(ExceptionCode.ILLEGAL_FUNCTION, f"function 0x{function:02X} not supported")
    if len(pdu) < 5:
        raise PduError(ExceptionCode.ILLEGAL_DATA_VALUE, f"PDU of {len(pdu)} bytes is too short")
    address = int.from_bytes(pdu[1:3], "big")
    word = int.from_bytes(pdu[3:5], "big")
    match function:
        case FunctionCode.READ_COILS:
            _check_count(word, MAX_READ_BITS, address)
            return Request(function, address, word)
        case FunctionCode.READ_HOLDING_REGISTERS | FunctionCode.READ_INPUT_REGISTERS:
            _check_count(word, MAX_READ_REGISTERS, address)
            return Request(function, address, word)
        case FunctionCode.WRITE_SINGLE_COIL:
            if word not in (COIL_ON, COIL_OFF):
                raise PduError(
                    ExceptionCode.ILLEGAL_DATA_VALUE, f"coil value 0x{word:04X} is not FF00/0000"
                )
            return Request(function, address, 1, (1 if word == COIL_ON else 0,))
        case FunctionCode.WRITE_SINGLE_REGISTER:
            return Request(function, address, 1, (word,))
        case _:  # WRITE_MULTIPLE_REGISTERS
            _check_count(word, MAX_WRITE_REGISTERS, address)
            byte_count = pdu[5] if len(pdu) > 5 else -1
            if byte_count != 2 * word or len(pdu) != 6 + byte_count:
                raise PduError(
                    ExceptionCode.ILLEGAL_DATA_VALUE,
                    f"byte count {byte_count} does not match {word} registers",
                )
            values = tuple(
                int.from_bytes(pdu[6 + 2 * i : 8 + 2 * i], "big") for i in range(word)
            )
            return Request(function, address, word, values)


def _check_count(count: int, limit: int, address: int) -> None:
    if not 1 <= count <= limit:
        raise PduError(ExceptionCode.ILLEGAL_DATA_VALUE, f"quantity {count} is not 1..{limit}")
    if address + count > 0x10000:
        raise PduError(ExceptionCode.ILLEGAL_DATA_ADDRESS, "request runs past address 0xFFFF")


# --------------------------------------------------------------------------- replies


def read_registers_reply(function: int, words: Sequence[int]) -> bytes:
    return bytes([function, 2 * len(words)]) + b"".join(w.to_bytes(2, "big") for w in words)


def read_bits_reply(function: int, bits: Sequence[int]) -> bytes:
    """Bits packed LSB first, the first coil in bit 0 of the first byte (spec 6.1)."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i // 8] |= 1 << (i % 8)
    return bytes([function, len(packed)]) + bytes(packed)


def write_reply(request: Request) -> bytes:
    """The normal reply to a write echoes the address and the value (FC05/06) or count (FC16)."""
    head = bytes([request.function]) + request.address.to_bytes(2, "big")
    if request.function == FunctionCode.WRITE_SINGLE_COIL:
        return head + (COIL_ON if request.values[0] else COIL_OFF).to_bytes(2, "big")
    if request.function == FunctionCode.WRITE_SINGLE_REGISTER:
        return head + request.values[0].to_bytes(2, "big")
    return head + request.count.to_bytes(2, "big")


def exception_reply(function: int, code: ExceptionCode) -> bytes:
    return bytes([(function | 0x80) & 0xFF, code])
