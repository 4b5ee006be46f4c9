"""Shared plumbing of the atheris harnesses: start the fuzzer, cut an input into stream chunks.

The harnesses are scripts (``python tests/fuzz/harness_<target>.py [libFuzzer flags] corpus``),
so this module sits next to them and is found on ``sys.path[0]``. Each harness keeps its entry
function (``one_input``) free of atheris so the regression tests can call it on a reproducer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Known:
    """A crash already reported and pinned by a strict-xfail regression test (``test``) whose
    fix lands in a file another branch owns. Tolerated so the fuzzer looks past it; set
    ``FUZZ_STRICT=1`` to stop on it again. Remove the entry with the xfail marker."""

    error: type[BaseException]
    text: str  # part of the message that identifies this crash
    test: str


def chunks(data: bytes, sizes: bytes) -> Iterator[bytes]:
    """``data`` split as a serial line might deliver it: each byte of ``sizes`` is the next
    chunk's length (0 means one byte), the rest comes in one piece."""
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        step = max(1, size)
        yield data[pos : pos + step]
        pos += step
    if pos < len(data):
        yield data[pos:]


def split(data: bytes) -> tuple[int, bytes, bytes]:
    """An input as (selector byte, chunk sizes, payload): the first byte picks the entry
    point, the second says how many chunk-size bytes follow, the rest is the payload."""
    if not data:
        return 0, b"", b""
    selector = data[0]
    count = data[1] % 8 if len(data) > 1 else 0
    return selector, data[2 : 2 + count], data[2 + count :]


def tolerating(one_input: Callable[[bytes], Any],
               known: Sequence[Known]) -> Callable[[bytes], Any]:
    """``one_input`` with the ``known`` crashes swallowed (unless ``FUZZ_STRICT`` is set)."""
    if not known or os.environ.get("FUZZ_STRICT"):
        return one_input
    errors = tuple(k.error for k in known)

    def wrapped(data: bytes) -> None:
        try:
            one_input(data)
        except errors as exc:
            if not any(isinstance(exc, k.error) and k.text in str(exc) for k in known):
                raise

    return wrapped


def run(one_input: Callable[[bytes], Any], known: Sequence[Known] = ()) -> None:
    """Hand ``one_input`` to libFuzzer with the command line's flags and corpus folders."""
    import atheris

    atheris.Setup(sys.argv, tolerating(one_input, known))
    atheris.Fuzz()
