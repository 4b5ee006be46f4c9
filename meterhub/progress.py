"""One progress bar for long commands (scan, revalidate, migrate, imports), on stderr.

On a terminal it redraws one line in place; into a file or a pipe it writes a plain line at
each tenth of the way, so a log is not filled with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    """``Progress(total, "scan")``; call ``update(done, note)``; ``done`` may reach ``total``."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()
        self._tenth = -1
        self._started = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        done = min(done, self.total)
        filled = WIDTH * done // self.total
        elapsed = time.monotonic() - self._started
        left = (
            f", about {elapsed * (self.total - done) / done:.0f} s left"
            if 0 < done < self.total
            else ""
        )
        text = (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{self.total}"
            f"{left}" + (f" {note}" if note else "")
        )
        if self._tty:
            end = "\n" if done >= self.total else ""
            print(f"\r{text}\033[K", end=end, file=self.stream, flush=True)
            return
        tenth = 10 * done // self.total
        if tenth != self._tenth:
            self._tenth = tenth
            print(text, file=self.stream, flush=True)
