"""DL/T645 errors: one class per way a frame or a reply can be wrong, with messages in words.

All derive from :class:`Dlt645Error` (a ``ValueError``) so a caller that only cares that the
input was bad catches one class, and a caller that cares why (a driver deciding between "garbled,
retry" and "the meter said no") catches the specific one.
"""

from __future__ import annotations

# Error byte of an abnormal reply (D6 = 1), bit by bit. DL/T645-2007 section 7.3, table "错误信息字"
# (ERR); DL/T645-1997 uses the same layout with older wording for b0..b2.
_ERROR_BITS_2007 = (
    "other error",
    "no requested data",
    "wrong password or unauthorised",
    "baud rate cannot be changed",
    "too many annual time zones",
    "too many daily time periods",
    "too many tariffs",
    "reserved bit 7",
)
_ERROR_BITS_1997 = (
    "illegal data",
    "wrong data identifier",
    "wrong password",
    "reserved bit 3",
    "too many annual time zones",
    "too many daily time periods",
    "too many tariffs",
    "reserved bit 7",
)


def error_meaning(error_byte: int, version: str = "2007") -> str:
    """The error byte of an abnormal reply in words, e.g. ``"no requested data"``."""
    table = _ERROR_BITS_1997 if version == "1997" else _ERROR_BITS_2007
    words = [text for bit, text in enumerate(table) if error_byte >> bit & 1]
    return "; ".join(words) if words else "no error bit set"


class Dlt645Error(ValueError):
    """Malformed DL/T645 input or an unexpected reply."""


class FramingError(Dlt645Error):
    """The bytes are not a DL/T645 frame: a start (68H) or end (16H) byte is missing."""


class ChecksumError(Dlt645Error):
    """The frame's CS byte does not match the sum of its bytes."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"checksum {got:02X}H does not match the frame (expected {expected:02X}H)")
        self.expected = expected
        self.got = got


class LengthError(Dlt645Error):
    """A length field, a data field or a value has the wrong number of bytes."""


class BcdError(Dlt645Error):
    """A byte that should hold two BCD digits does not (a nibble above 9)."""


class UnknownIdentifierError(Dlt645Error):
    """A data identifier (DI) that the table does not describe."""


class AddressMismatchError(Dlt645Error):
    """A reply came from another meter than the one asked."""


class UnexpectedReplyError(Dlt645Error):
    """A reply whose control code or echoed identifier does not belong to the request."""


class AbnormalReplyError(Dlt645Error):
    """The meter answered with an abnormal reply (D6 = 1): it understood and refused."""

    def __init__(self, address: str, control: int, error_byte: int, version: str = "2007") -> None:
        self.address = address
        self.control = control
        self.error_byte = error_byte
        self.version = version
        self.meaning = error_meaning(error_byte, version)
        super().__init__(
            f"meter {address} refused (control {control:02X}H, error byte {error_byte:02X}H: "
            f"{self.meaning})"
        )
