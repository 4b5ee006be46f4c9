"""Seen command ids, kept until the command expires, so a captured command cannot run twice.

The ids live in SQLite (the gateway's own store file, or any path) and survive a restart: a
gateway that reboots does not reopen the replay window. A row is kept until its command's
expiry plus a grace period; after that :func:`meterhub.security.signing.verify` refuses the
command as expired anyway, so the row is no longer needed.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

# Keep ids a little past expiry: a gateway clock stepped back by NTP must not see an expired
# (hence pruned) command as valid and new again.
DEFAULT_GRACE = timedelta(minutes=10)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_commands (
    command_id TEXT PRIMARY KEY,
    keep_until_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_commands_keep_until ON seen_commands (keep_until_ms);
"""


class ReplayGuard(Protocol):
    """What a gateway needs to refuse a replayed command."""

    def seen(self, command_id: str, expires_at: datetime) -> bool:
        """True if ``command_id`` was seen before; otherwise remember it and return False."""
        ...


def _millis(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class SqliteReplayGuard:
    """A :class:`ReplayGuard` persisted in an SQLite file (its own table, ``seen_commands``)."""

    def __init__(self, path: Path | str, *, grace: timedelta = DEFAULT_GRACE) -> None:
        self._grace = grace
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.executescript(_SCHEMA)

    def seen(self, command_id: str, expires_at: datetime, *,
             now: datetime | None = None) -> bool:
        """Record ``command_id`` (durably, before returning) unless it is already recorded.

        Expired rows are pruned on the way, so the table stays as small as the set of
        commands still valid.
        """
        now = now or datetime.now(UTC)
        with self._lock:
            self._db.execute("DELETE FROM seen_commands WHERE keep_until_ms < ?",
                             (_millis(now),))
            cur = self._db.execute(
                "INSERT OR IGNORE INTO seen_commands (command_id, keep_until_ms) VALUES (?, ?)",
                (command_id, _millis(expires_at + self._grace)),
            )
            return cur.rowcount == 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen_commands").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteReplayGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
