"""Fuzz the wire contract's decoders of what arrives over MQTT: readings (strict and per
reading, the collector's path), acks, status and events.

Contract: each decoder returns or raises :class:`WireError`, and what it returns the matching
encoder writes back (a consumer re-publishes or stores it: an ack, a retained status, a row).
Anything else is a crash.

    python tests/fuzz/harness_wire.py -dict=tests/fuzz/json.dict corpus/ tests/fuzz/corpus/wire
"""

from __future__ import annotations

import contextlib
import sys

import atheris
from fuzzkit import run

with atheris.instrument_imports(include=["meterhub"]):
    from meterhub import wire


def _readings(payload: bytes) -> None:
    wire.encode_readings(wire.decode_readings(payload))


def _readings_per_reading(payload: bytes) -> None:
    """The collector's path: envelope first, then each reading on its own."""
    envelope = wire.decode_readings_envelope(payload)
    times: dict = {}
    for i, raw in enumerate(envelope.rows()):
        with contextlib.suppress(wire.WireError):
            wire.decode_reading_fields(raw, f"readings[{i}]", times)


def _ack(payload: bytes) -> None:
    wire.encode_ack(wire.decode_ack(payload))


def _status(payload: bytes) -> None:
    wire.encode_status(wire.decode_status(payload))


def _events(payload: bytes) -> None:
    gateway, events = wire.decode_events(payload)
    wire.encode_events(gateway, events)


TARGETS = (_readings, _readings_per_reading, _ack, _status, _events)


def one_input(data: bytes) -> None:
    """One fuzz input: the first byte picks the decoder, the rest is the payload."""
    if not data:
        return
    with contextlib.suppress(wire.WireError):
        TARGETS[data[0] % len(TARGETS)](data[1:])




if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
