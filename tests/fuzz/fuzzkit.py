"""Shared plumbing of the atheris harnesses: start the fuzzer, cut an input into stream chunks.

The harnesses are scripts (``python tests/fuzz/harness_<target>.py [libFuzzer flags] corpus``),
so this module sits next to them and is found on ``sys.path[0]``. Each harness keeps its entry
function (``one_input``) free of atheris so the regression tests can call it on a reproducer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any


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


def run(one_input: Callable[[bytes], Any]) -> None:
    """Hand ``one_input`` to libFuzzer with the command line's flags and corpus folders."""
    import atheris

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
