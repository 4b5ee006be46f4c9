"""The replay guard remembers command ids until expiry, across a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterhub.security import SqliteReplayGuard

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_second_sight_is_a_replay_also_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    expires = NOW + timedelta(minutes=5)
    with SqliteReplayGuard(path) as guard:
        assert guard.seen("c-1", expires, now=NOW) is False
        assert guard.seen("c-1", expires, now=NOW) is True
        assert guard.seen("c-2", expires, now=NOW) is False
    with SqliteReplayGuard(path) as guard:  # a gateway restart
        assert guard.seen("c-1", expires, now=NOW + timedelta(minutes=1)) is True


def test_rows_are_pruned_after_expiry_plus_grace(tmp_path: Path) -> None:
    with SqliteReplayGuard(tmp_path / "g.sqlite", grace=timedelta(minutes=1)) as guard:
        guard.seen("old", NOW, now=NOW - timedelta(minutes=1))
        guard.seen("new", NOW + timedelta(hours=1), now=NOW)
        assert len(guard) == 2
        # still kept within the grace period after expiry
        assert guard.seen("old", NOW, now=NOW + timedelta(seconds=30)) is True
        guard.seen("other", NOW + timedelta(hours=1), now=NOW + timedelta(minutes=2))
        assert len(guard) == 2  # "old" is gone, "new" and "other" remain


def test_shares_a_file_with_other_tables(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "store.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY)")
    with SqliteReplayGuard(path) as guard:
        assert guard.seen("c-1", NOW + timedelta(minutes=1), now=NOW) is False
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
