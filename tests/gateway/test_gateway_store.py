"""The SQLite buffer: seq only grows across reopen, acks delete, a full buffer drops oldest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import Store


def _payload(seq: int) -> bytes:
    return f'{{"seq":{seq}}}'.encode()


def test_seq_survives_reopen_and_acks_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", max_batches=100)
    assert [store.seal(_payload, 3).seq for _ in range(3)] == [1, 2, 3]
    store.acknowledged([1, 2, 3])
    store.close()

    store = Store(tmp_path / "s.sqlite3", max_batches=100)
    assert store.seal(_payload, 5).seq == 4, "an empty buffer must not restart the sequence"
    assert store.depth() == (1, 5)
    assert [(b.seq, b.payload) for b in store.oldest()] == [(4, b'{"seq":4}')]
    store.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    Store(tmp_path / "s.sqlite3", max_batches=10).close()
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_full_buffer_drops_oldest_and_says_how_many(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", max_batches=10)
    results = [store.seal(_payload, 2) for _ in range(13)]
    assert [r.dropped_batches for r in results] == [0] * 10 + [1, 1, 1]
    assert [b.seq for b in store.oldest(100)] == list(range(4, 14))
    assert store.dropped_readings() == 6


def test_command_results_are_remembered(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3", max_batches=10)
    assert store.command_seen("c1") == (False, None)
    store.command_started("c1")
    assert store.command_seen("c1") == (True, None)
    store.command_finished("c1", b"ack")
    store.close()
    assert Store(tmp_path / "s.sqlite3", max_batches=10).command_seen("c1") == (True, b"ack")
