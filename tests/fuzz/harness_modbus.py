"""Fuzz the Modbus codec: the master's RTU reply framer, the meter's request framers (RTU,
MBAP) and PDU decoder, register-map value decoding and register-map files.

Contract: ``rtu.ReplyFramer.feed`` returns or raises :class:`GarbledReply`;
``RtuRequestFramer.feed`` never raises; ``MbapDecoder.feed`` raises only :class:`MbapError`;
``decode_request`` only :class:`PduError`; register decoding only :class:`RegisterValueError`;
``load_map`` only :class:`RegisterMapError`. Anything else is a crash.

    python tests/fuzz/harness_modbus.py corpus/ tests/fuzz/corpus/modbus
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris
from fuzzkit import chunks, run, split

with atheris.instrument_imports(include=["meterhub", "tomllib"]):
    from meterhub.protocols.modbus import rtu, tcp
    from meterhub.protocols.modbus.pdu import PduError, decode_request
    from meterhub.protocols.modbus.registermap import (
        ReadRequest,
        RegisterMapError,
        RegisterValueError,
        load_map,
        load_maps,
        plan_reads,
    )

# every read the gateway would plan for a shipped map, one request per register block
PLANS: tuple[ReadRequest, ...] = tuple(
    request for regmap in load_maps().values()
    for request in plan_reads(regmap, regmap.quantities)
)
ASKED = ((1, 3), (1, 4), (17, 3), (1, 1), (1, 5), (1, 6), (2, 0x10))  # (unit, function)
_MAP_FILE = Path(tempfile.mkdtemp(prefix="fuzz-modbus-")) / "fuzzed.toml"


def _reply(selector: int, sizes: bytes, payload: bytes) -> None:
    unit, function = ASKED[selector // 8 % len(ASKED)]
    framer = rtu.ReplyFramer(unit, function)
    for part in chunks(payload, sizes):
        try:
            frames = framer.feed(part)
        except rtu.GarbledReply:
            return
        for frame in frames:
            assert rtu.crc_ok(frame) and frame[0] == unit and frame[1] & 0x7F == function
        assert framer.needed() >= 1, "needed() must ask for at least one byte"


def _pdu(pdu: bytes) -> None:
    with contextlib.suppress(PduError):
        decode_request(pdu)


def _rtu_requests(sizes: bytes, payload: bytes) -> None:
    framer = rtu.RtuRequestFramer()
    for part in chunks(payload, sizes):
        for frame in framer.feed(part):
            _pdu(frame.pdu)


def _mbap(sizes: bytes, payload: bytes) -> None:
    decoder = tcp.MbapDecoder()
    for part in chunks(payload, sizes):
        try:
            frames = decoder.feed(part)
        except tcp.MbapError:
            return
        for frame in frames:
            _pdu(frame.pdu)


def _registers(selector: int, payload: bytes) -> None:
    request = PLANS[selector // 8 % len(PLANS)]
    words = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload) - 1, 2)]
    with contextlib.suppress(RegisterValueError):
        request.decode(words)


def _map_file(payload: bytes) -> None:
    _MAP_FILE.write_bytes(payload)
    with contextlib.suppress(RegisterMapError):
        load_map(_MAP_FILE)


def one_input(data: bytes) -> None:
    """One fuzz input: the first byte picks the entry point (see :func:`fuzzkit.split`)."""
    selector, sizes, payload = split(data)
    match selector % 8:
        case 0 | 1:
            _reply(selector, sizes, payload)
        case 2:
            _rtu_requests(sizes, payload)
        case 3:
            _pdu(payload)
        case 4:
            _mbap(sizes, payload)
        case 5 | 6:
            _registers(selector, payload)
        case _:
            _map_file(payload)


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
