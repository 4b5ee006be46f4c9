"""DL/T645 application layer for both sides of the line.

Master side (the gateway): ``read``, ``read_follow_up``, ``read_address``, ``write``,
``broadcast_time``, ``freeze``, ``change_baud``, ``relay_control`` build request frames;
``check_reply``, ``parse_read_reply``, ``parse_address_reply`` check what came back.
Meter side (the simulator): ``parse_request`` turns a frame into a typed request;
``normal_reply``, ``read_reply``, ``error_reply`` build the answers.

2007 and 1997 share this API; ``version`` picks the control codes and identifier width. Where
public sources disagree (change-baud code byte, broadcast-time byte order) :class:`Options`
holds the choice, defaulting to the standard's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Literal

from meterhub.protocols.dlt645.errors import (
    AbnormalReplyError,
    AddressMismatchError,
    BcdError,
    ChecksumError,
    Dlt645Error,
    LengthError,
    UnexpectedReplyError,
)
from meterhub.protocols.dlt645.frame import (
    ABNORMAL,
    BROADCAST,
    DIR_REPLY,
    MORE,
    WILDCARD,
    Frame,
    FrameParser,
    address_from_wire,
    address_to_wire,
)
from meterhub.protocols.dlt645.identifiers import Version, bcd_to_int, format_di, int_to_bcd

# DL/T645-2007 7.1.3 / DL/T645-1997 control codes (function bits D4..D0).
READ = {"2007": 0x11, "1997": 0x01}
READ_FOLLOW_UP = {"2007": 0x12, "1997": 0x02}
WRITE = {"2007": 0x14, "1997": 0x04}
BROADCAST_TIME = 0x08  # same in both
READ_ADDRESS = 0x13  # 2007 only
FREEZE = 0x16  # 2007 only
CHANGE_BAUD = {"2007": 0x17, "1997": 0x0C}
RELAY = 0x1C  # 2007 only

MAX_WRITE_DATA = 50  # DL/T645-2007 7.1: "写数据时 L<=50"

# Change-baud code byte: the standard's bit flags (Z: bit1 600 ... bit5 9600, bit6 19200)
_BAUD_FLAGS = {600: 0x02, 1200: 0x04, 2400: 0x08, 4800: 0x10, 9600: 0x20, 19200: 0x40}


class RelayCommand(IntEnum):
    """N1 of relay control 1CH (DL/T645-2007, 2013 amendment)."""

    TRIP = 0x1A
    CLOSE_PERMITTED = 0x1B  # the customer presses the meter's button to close
    CLOSE_DIRECTLY = 0x1C
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    KEEP_POWER = 0x3A
    KEEP_POWER_RELEASE = 0x3B


@dataclass(frozen=True, slots=True)
class Options:
    """Choices where public sources disagree (see PROTOCOLS.md, open points)."""

    baud_code: Literal["flags", "bcd"] = "flags"  # "bcd": BCD of bps/300 (2400 -> 08H)
    time_order: Literal["ss-first", "yy-first"] = "ss-first"  # broadcast time data order


DEFAULT_OPTIONS = Options()


def _check_version(version: str) -> Version:
    if version not in ("2007", "1997"):
        raise ValueError(f"DL/T645 version {version!r} is not 2007 or 1997")
    return version  # type: ignore[return-value]


def _di_bytes(di: int, version: Version) -> bytes:
    width = 4 if version == "2007" else 2
    if not 0 <= di < 256**width:
        raise ValueError(f"identifier {di:X} does not fit {width} bytes (DL/T645-{version})")
    return di.to_bytes(width, "little")


def _digits(text: str, size: int, what: str) -> bytes:
    """A printed code (password, operator) -> ``size`` bytes, least significant first."""
    if len(text) != 2 * size:
        raise LengthError(f"{what} {text!r} must have {2 * size} digits")
    try:
        return bytes.fromhex(text)[::-1]
    except ValueError:
        raise BcdError(f"{what} {text!r} must be hexadecimal/BCD digits") from None


def _datetime_bytes(when: datetime) -> bytes:
    """ss mm hh DD MM YY (the order the standard sends a YYMMDDhhmmss value)."""
    parts = (when.second, when.minute, when.hour, when.day, when.month, when.year % 100)
    return b"".join(int_to_bcd(p, 1) for p in parts)


def _datetime_from(raw: bytes, what: str) -> datetime:
    if len(raw) != 6:
        raise LengthError(f"{what} has 6 bytes, got {len(raw)}")
    ss, mm, hh, day, month, yy = (bcd_to_int(raw[i : i + 1]) for i in range(6))
    try:
        return datetime(2000 + yy, month, day, hh, mm, ss)
    except ValueError:
        raise BcdError(f"{what} {raw.hex(' ').upper()} is not a valid ssmmhhDDMMYY") from None


# ----------------------------------------------------------------------------- master side


def read(address: str, di: int, version: str = "2007") -> Frame:
    v = _check_version(version)
    return Frame(address, READ[v], _di_bytes(di, v))


def read_follow_up(address: str, di: int, seq: int, version: str = "2007") -> Frame:
    """Ask for the next part of a reply that had D5 (more) set. 2007 carries a frame
    sequence number (1 for the first follow-up); 1997 only repeats the identifier."""
    v = _check_version(version)
    if v == "1997":
        return Frame(address, READ_FOLLOW_UP[v], _di_bytes(di, v))
    if not 0 <= seq <= 0xFF:
        raise ValueError(f"follow-up sequence {seq} is out of range 0..255")
    return Frame(address, READ_FOLLOW_UP[v], _di_bytes(di, v) + bytes([seq]))


def read_address() -> Frame:
    """Read address (13H) to the AA wildcard: only sensible with one meter on the bus."""
    return Frame(WILDCARD, READ_ADDRESS)


def write(
    address: str,
    di: int,
    value: bytes,
    *,
    password: str = "123456",
    level: int = 2,
    operator: str = "00000000",
    version: str = "2007",
) -> Frame:
    """Write data: 2007 DI + PA P0..P2 + C0..C3 + value; 1997 DI + PA P0..P2 + value."""
    v = _check_version(version)
    auth = bytes([level]) + _digits(password, 3, "password")
    if v == "2007":
        auth += _digits(operator, 4, "operator code")
    data = _di_bytes(di, v) + auth + value
    if len(data) > MAX_WRITE_DATA:
        raise LengthError(f"write data of {len(data)} bytes exceeds L <= {MAX_WRITE_DATA}")
    return Frame(address, WRITE[v], data)


def broadcast_time(when: datetime, *, options: Options = DEFAULT_OPTIONS) -> Frame:
    """Broadcast time sync (08H) to 999999999999; meters set their clocks and do not reply.
    ``when`` is written as its wall-clock fields: pass it in the meters' own time zone."""
    data = _datetime_bytes(when)
    if options.time_order == "yy-first":
        data = data[::-1]
    return Frame(BROADCAST, BROADCAST_TIME, data)


def freeze(
    address: str,
    *,
    month: int | None = None,
    day: int | None = None,
    hour: int | None = None,
    minute: int | None = None,
) -> Frame:
    """Freeze (16H), data mmhhDDMM; a field left None is 99H ("every"), all None = now."""
    parts = (minute, hour, day, month)
    return Frame(address, FREEZE, b"".join(b"\x99" if p is None else int_to_bcd(p, 1)
                                           for p in parts))


def baud_code(baud: int, options: Options = DEFAULT_OPTIONS) -> int:
    if options.baud_code == "bcd":
        if baud % 300:
            raise ValueError(f"{baud} bps is not a multiple of 300")
        return int_to_bcd(baud // 300, 1)[0]
    try:
        return _BAUD_FLAGS[baud]
    except KeyError:
        raise ValueError(f"{baud} bps is not one of {sorted(_BAUD_FLAGS)}") from None


def baud_from_code(code: int, options: Options = DEFAULT_OPTIONS) -> int:
    if options.baud_code == "bcd":
        return bcd_to_int(bytes([code])) * 300
    for baud, flag in _BAUD_FLAGS.items():
        if code == flag:
            return baud
    raise Dlt645Error(f"baud code {code:02X}H is not a single rate flag")


def change_baud(
    address: str, baud: int, *, version: str = "2007", options: Options = DEFAULT_OPTIONS
) -> Frame:
    v = _check_version(version)
    return Frame(address, CHANGE_BAUD[v], bytes([baud_code(baud, options)]))


def relay_control(
    address: str,
    command: RelayCommand,
    *,
    valid_until: datetime,
    password: str = "123456",
    level: int = 2,
    operator: str = "00000000",
) -> Frame:
    """Relay control (1CH), L = 16: PA P0..P2 C0..C3 N1 N2 N3..N8 (valid until ssmmhhDDMMYY)."""
    data = (
        bytes([level])
        + _digits(password, 3, "password")
        + _digits(operator, 4, "operator code")
        + bytes([RelayCommand(command), 0x00])
        + _datetime_bytes(valid_until)
    )
    return Frame(address, RELAY, data)


def address_matches(pattern: str, address: str) -> bool:
    """Does ``address`` answer to ``pattern``? AAH bytes are wildcards, but only as the high
    part (DL/T645-2007 abbreviated addressing: low bytes given, the rest AAH)."""
    pat, own = address_to_wire(pattern)[::-1], address_to_wire(address)[::-1]  # high first
    given = len(pat.lstrip(b"\xaa"))
    wild = len(pat) - given
    return 0xAA not in pat[wild:] and pat[wild:] == own[wild:]


def check_reply(request: Frame, reply: Frame, version: str = "2007") -> Frame:
    """The reply belongs to the request (direction, function, address) and is not abnormal;
    an abnormal reply raises :class:`AbnormalReplyError` with the error byte in words."""
    v = _check_version(version)
    if not reply.is_reply:
        raise UnexpectedReplyError(
            f"frame {reply.control:02X}H from {reply.address} is a request, not a reply"
        )
    if reply.function != request.function:
        raise UnexpectedReplyError(
            f"reply control {reply.control:02X}H does not answer request {request.control:02X}H"
        )
    if not address_matches(request.address, reply.address):
        raise AddressMismatchError(
            f"asked meter {request.address}, reply came from {reply.address}"
        )
    if reply.is_abnormal:
        if len(reply.data) != 1:
            raise LengthError(
                f"abnormal reply from {reply.address} has {len(reply.data)} data bytes, not 1"
            )
        raise AbnormalReplyError(reply.address, reply.control, reply.data[0], v)
    return reply


@dataclass(frozen=True, slots=True)
class ReadReply:
    """A normal read reply: the value bytes (without DI and SEQ) and whether more follow."""

    di: int
    payload: bytes
    more: bool
    seq: int | None = None


def parse_read_reply(request: Frame, reply: Frame, version: str = "2007") -> ReadReply:
    """Check a reply to ``read`` or ``read_follow_up`` and cut out its value bytes."""
    v = _check_version(version)
    check_reply(request, reply, v)
    width = 4 if v == "2007" else 2
    asked = request.data[:width]
    if len(reply.data) < width or reply.data[:width] != asked:
        got = reply.data[:width][::-1].hex().upper() or "nothing"
        raise UnexpectedReplyError(
            f"meter {reply.address} answered identifier {got}, asked "
            f"{format_di(int.from_bytes(asked, 'little'), v)}"
        )
    di = int.from_bytes(asked, "little")
    payload = reply.data[width:]
    seq = None
    if v == "2007" and request.function == READ_FOLLOW_UP[v]:
        if not payload:
            raise LengthError(f"follow-up reply from {reply.address} has no sequence byte")
        payload, seq = payload[:-1], payload[-1]
    return ReadReply(di, payload, reply.has_more, seq)


def parse_address_reply(request: Frame, reply: Frame) -> str:
    check_reply(request, reply)
    if len(reply.data) != 6:
        raise LengthError(f"read-address reply has {len(reply.data)} data bytes, not 6")
    return address_from_wire(reply.data)


class ReplyFramer:
    """Frames that answer ``request`` only, cut from what a master receives after sending it.

    An adapter echoing our own request, or a late reply to an earlier request that timed out,
    is kept in ``skipped`` rather than taken for this answer. A complete frame with a bad
    checksum, when nothing answering came with it, raises :class:`ChecksumError` at once: the
    reply was garbled on the line, so the wait need not run into the timeout. :meth:`needed`
    sizes the wait for a serial reader.
    """

    def __init__(self, request: Frame, version: str = "2007") -> None:
        v = _check_version(version)
        self.request = request
        self.width = 4 if v == "2007" else 2
        self.echoes_di = request.function in (READ[v], READ_FOLLOW_UP[v])
        self.parser = FrameParser()
        self.skipped: list[Frame] = []

    def needed(self) -> int:
        """Bytes that must still arrive before :meth:`feed` can give a frame or raise."""
        return self.parser.needed()

    def _answers(self, frame: Frame) -> bool:
        request = self.request
        if not frame.is_reply or frame.function != request.function:
            return False
        if not address_matches(request.address, frame.address):
            return False
        if frame.is_abnormal or not self.echoes_di:
            return True
        return frame.data[: self.width] == request.data[: self.width]  # echoed identifier

    def feed(self, data: bytes) -> list[Frame]:
        seen = len(self.parser.errors)
        replies: list[Frame] = []
        for frame in self.parser.feed(data):
            (replies if self._answers(frame) else self.skipped).append(frame)
        if not replies:
            for exc in self.parser.errors[seen:]:
                if isinstance(exc, ChecksumError):
                    raise exc
        return replies


# ----------------------------------------------------------------------------- meter side


@dataclass(frozen=True, slots=True)
class ReadRequest:
    di: int


@dataclass(frozen=True, slots=True)
class FollowUpRequest:
    di: int
    seq: int | None  # None in 1997


@dataclass(frozen=True, slots=True)
class ReadAddressRequest:
    pass


@dataclass(frozen=True, slots=True)
class WriteRequest:
    di: int
    level: int
    password: str
    operator: str | None  # None in 1997
    value: bytes


@dataclass(frozen=True, slots=True)
class TimeSyncRequest:
    when: datetime


@dataclass(frozen=True, slots=True)
class FreezeRequest:
    pattern: bytes  # mmhhDDMM, 99H = every


@dataclass(frozen=True, slots=True)
class ChangeBaudRequest:
    baud: int


@dataclass(frozen=True, slots=True)
class RelayRequest:
    level: int
    password: str
    operator: str
    command: RelayCommand
    valid_until: datetime


Request = (
    ReadRequest
    | FollowUpRequest
    | ReadAddressRequest
    | WriteRequest
    | TimeSyncRequest
    | FreezeRequest
    | ChangeBaudRequest
    | RelayRequest
)


class UnsupportedRequestError(Dlt645Error):
    """A request this side does not implement (answer it with an abnormal reply)."""


def _need(frame: Frame, size: int, what: str, exact: bool = True) -> None:
    if len(frame.data) < size or (exact and len(frame.data) != size):
        raise LengthError(f"{what} carries {len(frame.data)} data bytes, expected {size}")


def parse_request(
    frame: Frame, version: str = "2007", options: Options = DEFAULT_OPTIONS
) -> Request:
    """A request frame (D7 = 0) -> a typed request, checking its lengths and BCD."""
    v = _check_version(version)
    if frame.is_reply:
        raise UnexpectedReplyError(f"frame {frame.control:02X}H is a reply, not a request")
    width = 4 if v == "2007" else 2
    c = frame.control
    data = frame.data
    if c == READ[v]:
        _need(frame, width, "read request")
        return ReadRequest(int.from_bytes(data, "little"))
    if c == READ_FOLLOW_UP[v]:
        _need(frame, width + (1 if v == "2007" else 0), "follow-up request")
        return FollowUpRequest(
            int.from_bytes(data[:width], "little"), data[width] if v == "2007" else None
        )
    if v == "2007" and c == READ_ADDRESS:
        _need(frame, 0, "read-address request")
        return ReadAddressRequest()
    if c == WRITE[v]:
        auth = 8 if v == "2007" else 4
        _need(frame, width + auth + 1, "write request", exact=False)
        pos = width
        return WriteRequest(
            int.from_bytes(data[:width], "little"),
            data[pos],
            data[pos + 1 : pos + 4][::-1].hex().upper(),
            data[pos + 4 : pos + 8][::-1].hex().upper() if v == "2007" else None,
            data[width + auth :],
        )
    if c == BROADCAST_TIME:
        _need(frame, 6, "broadcast time")
        raw = data if options.time_order == "ss-first" else data[::-1]
        return TimeSyncRequest(_datetime_from(raw, "broadcast time"))
    if v == "2007" and c == FREEZE:
        _need(frame, 4, "freeze request")
        return FreezeRequest(data)
    if c == CHANGE_BAUD[v]:
        _need(frame, 1, "change-baud request")
        return ChangeBaudRequest(baud_from_code(data[0], options))
    if v == "2007" and c == RELAY:
        _need(frame, 16, "relay control")
        try:
            command = RelayCommand(data[8])
        except ValueError:
            raise Dlt645Error(f"relay command N1 = {data[8]:02X}H is not defined") from None
        return RelayRequest(
            data[0],
            data[1:4][::-1].hex().upper(),
            data[4:8][::-1].hex().upper(),
            command,
            _datetime_from(data[10:16], "relay valid-until time"),
        )
    raise UnsupportedRequestError(f"control code {c:02X}H is not supported (DL/T645-{v})")


def normal_reply(address: str, request_control: int, data: bytes = b"", *,
                 more: bool = False) -> Frame:
    return Frame(address, (request_control & 0x1F) | DIR_REPLY | (MORE if more else 0), data)


def read_reply(
    address: str,
    di: int,
    payload: bytes,
    *,
    version: str = "2007",
    more: bool = False,
    follow_up: bool = False,
    seq: int = 0,
) -> Frame:
    """Reply to a read, or to a follow-up (``follow_up``; 2007 echoes ``seq`` at the end)."""
    v = _check_version(version)
    data = _di_bytes(di, v) + payload
    if follow_up and v == "2007":
        data += bytes([seq])
    control = READ_FOLLOW_UP[v] if follow_up else READ[v]
    return normal_reply(address, control, data, more=more)


def error_reply(address: str, request_control: int, error_byte: int) -> Frame:
    """Abnormal reply (D6 = 1) carrying the error byte (see errors.error_meaning)."""
    return Frame(address, (request_control & 0x1F) | DIR_REPLY | ABNORMAL, bytes([error_byte]))


# Error bits a meter sets (DL/T645-2007 ERR byte).
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_PASSWORD = 0x04
ERR_BAUD = 0x08
