"""DL/T645-2007 and -1997 codec: frames, identifiers and messages, no I/O.

``frame`` cuts and builds frames, ``identifiers`` knows what each data identifier holds,
``messages`` builds requests and replies for both sides of the line, ``errors`` says what was
wrong. The gateway driver and the simulator both import from here.
"""

from meterhub.protocols.dlt645.errors import (
    AbnormalReplyError,
    AddressMismatchError,
    BcdError,
    ChecksumError,
    Dlt645Error,
    FramingError,
    LengthError,
    UnexpectedReplyError,
    UnknownIdentifierError,
    error_meaning,
)
from meterhub.protocols.dlt645.frame import (
    BROADCAST,
    WILDCARD,
    Frame,
    FrameParser,
    decode,
    encode,
)
from meterhub.protocols.dlt645.identifiers import (
    TABLE_1997,
    TABLE_2007,
    DataId,
    decode_value,
    encode_value,
    for_quantity,
    lookup,
)
from meterhub.protocols.dlt645.messages import Options, RelayCommand

__all__ = [
    "BROADCAST",
    "TABLE_1997",
    "TABLE_2007",
    "WILDCARD",
    "AbnormalReplyError",
    "AddressMismatchError",
    "BcdError",
    "ChecksumError",
    "DataId",
    "Dlt645Error",
    "Frame",
    "FrameParser",
    "FramingError",
    "LengthError",
    "Options",
    "RelayCommand",
    "UnexpectedReplyError",
    "UnknownIdentifierError",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
    "error_meaning",
    "for_quantity",
    "lookup",
]
