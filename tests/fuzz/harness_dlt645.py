"""Fuzz the DL/T645 codec: frame cutting, reply checks, value decoding, request parsing.

Contract: every entry point returns or raises a :class:`Dlt645Error` (``ReplyFramer.feed``:
only :class:`ChecksumError`; ``FrameParser.feed``: never raises). Anything else is a crash.

    python tests/fuzz/harness_dlt645.py corpus/ tests/fuzz/corpus/dlt645
"""

from __future__ import annotations

import contextlib
import sys
from datetime import datetime

import atheris
from fuzzkit import chunks, run, split

with atheris.instrument_imports(include=["meterhub"]):
    from meterhub.protocols.dlt645 import frame as dlt_frame
    from meterhub.protocols.dlt645 import messages
    from meterhub.protocols.dlt645.errors import ChecksumError, Dlt645Error
    from meterhub.protocols.dlt645.identifiers import decode_value, lookup

METER = "000000000161"
# Requests a master sends, each with the version it speaks: the replies are fuzzed against them.
REQUESTS: tuple[tuple[dlt_frame.Frame, str], ...] = (
    (messages.read(METER, 0x00010000), "2007"),
    (messages.read(METER, 0x0001FF00), "2007"),
    (messages.read(METER, 0x04000503), "2007"),  # status word 3
    (messages.read(METER, 0x04000401), "2007"),  # meter address
    (messages.read_follow_up(METER, 0x00010000, 1), "2007"),
    (messages.read_address(), "2007"),
    (messages.relay_control(METER, messages.RelayCommand.TRIP,
                            valid_until=datetime(2030, 1, 1)), "2007"),
    (messages.read("000000000003", 0xB611, "1997"), "1997"),
    (messages.read("000000000003", 0x9010, "1997"), "1997"),
    (messages.read_follow_up("000000000003", 0xC010, 0, "1997"), "1997"),
)
OPTIONS = (messages.DEFAULT_OPTIONS, messages.Options(baud_code="bcd", time_order="yy-first"))


def _master(request: dlt_frame.Frame, version: str, sizes: bytes, payload: bytes) -> None:
    """What the gateway does with the bytes after a request: frame, check, decode."""
    framer = messages.ReplyFramer(request, version)
    replies: list[dlt_frame.Frame] = []
    for part in chunks(payload, sizes):
        try:
            replies += framer.feed(part)
        except ChecksumError:
            return
        assert framer.needed() >= 1, "needed() must ask for at least one byte"
    for reply in replies:
        try:
            if request.function == messages.READ_ADDRESS:
                messages.parse_address_reply(request, reply)
                continue
            if request.function == messages.RELAY:
                messages.check_reply(request, reply, version)
                continue
            answer = messages.parse_read_reply(request, reply, version)
            decode_value(lookup(answer.di, version), answer.payload)
        except Dlt645Error:
            pass


def _stream(sizes: bytes, payload: bytes) -> None:
    """A bus monitor: cut every frame; what comes out must encode back to a frame."""
    parser = dlt_frame.FrameParser()
    for part in chunks(payload, sizes):
        for got in parser.feed(part):
            assert dlt_frame.decode(got.encode()) == got, "a parsed frame does not round-trip"
        assert parser.needed() >= 1, "needed() must ask for at least one byte"


def one_input(data: bytes) -> None:
    """One fuzz input: the first byte picks the entry point (see :func:`fuzzkit.split`)."""
    selector, sizes, payload = split(data)
    match selector % 6:
        case 0:
            with contextlib.suppress(Dlt645Error):
                dlt_frame.decode(payload)
        case 1:
            _stream(sizes, payload)
        case 2:
            request, version = REQUESTS[selector // 6 % len(REQUESTS)]
            _master(request, version, sizes, payload)
        case 3:  # meter side: a request frame from the bus
            version = "1997" if selector & 0x40 else "2007"
            with contextlib.suppress(Dlt645Error):
                messages.parse_request(dlt_frame.decode(payload), version,
                                       OPTIONS[selector >> 7])
        case 4:  # a value after an identifier: DI from the payload head
            version = "1997" if selector & 0x40 else "2007"
            width = 2 if version == "1997" else 4
            di = int.from_bytes(payload[:width], "little")
            with contextlib.suppress(Dlt645Error):
                decode_value(lookup(di, version), payload[width:])
        case _:
            with contextlib.suppress(Dlt645Error):
                messages.baud_from_code(payload[0] if payload else 0, OPTIONS[selector >> 7])


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
