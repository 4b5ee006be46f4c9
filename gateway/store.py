"""The gateway's local SQLite state: the store-and-forward buffer, the sequence number and
the results of commands already executed.

A batch is sealed here (given its ``seq`` and committed) *before* it is published, and deleted
only when the collector's receipt names it (or, with receipts off, after the broker's PUBACK),
so a broker outage or crash, a restart or SIGKILL loses nothing. A batch published but not yet
confirmed carries ``next_at``: when to send it again if no receipt came.

The buffer is bounded (``max_batches``): when it is full, sealing a new batch drops the
oldest ones (counted in ``dropped_readings``; the publisher raises ``buffer_dropped``).

Durability choice: WAL with ``synchronous=FULL``. NORMAL would be enough against a crashed
process, but after a *power cut* it may roll back the last commits; a batch that was already
published and acknowledged could then be sealed again under the same ``seq`` with other
readings, and the collector would take it for a duplicate. FULL costs one fsync per sealed
batch (one per poll cycle, every few seconds), which a gateway can afford.

Calls are synchronous and short; the gateway runs them in a worker thread so an fsync never
stalls the event loop that times serial transactions.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    readings INTEGER NOT NULL,
    sealed_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times published
    next_at REAL  -- NULL: due now; else when to send it again unless a receipt came
);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    done_ack BLOB
);
"""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    seq: int
    payload: bytes
    readings: int
    attempts: int = 0  # times published before


@dataclass(frozen=True, slots=True)
class Sealed:
    """What sealing a batch did: its seq and how many old batches (readings) had to go."""

    seq: int
    dropped_batches: int
    dropped_readings: int


class Store:
    """One SQLite file per gateway; safe to call from one worker thread at a time."""

    def __init__(self, path: Path, *, max_batches: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_batches = max_batches
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        if "next_at" not in columns:  # a state file from before receipts
            self._db.execute("ALTER TABLE batches ADD COLUMN attempts INTEGER NOT NULL "
                             "DEFAULT 0")
            self._db.execute("ALTER TABLE batches ADD COLUMN next_at REAL")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped_readings', 0)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ readings buffer

    def seal(self, make_payload: Callable[[int], bytes], readings: int) -> Sealed:
        """Give the next seq to a batch and commit it, dropping the oldest when full.

        ``make_payload(seq)`` encodes the batch once its seq is known, inside the same
        transaction, so a seq is never used twice nor skipped (except by a drop)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
                seq = last + 1
                db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
                db.execute("INSERT INTO batches (seq, payload, readings, sealed_at) "
                           "VALUES (?,?,?,?)", (seq, make_payload(seq), readings, time.time()))
                dropped_b = dropped_r = 0
                (count,) = db.execute("SELECT count(*) FROM batches").fetchone()
                if count > self.max_batches:
                    excess = count - self.max_batches
                    dropped_b, dropped_r = db.execute(
                        "SELECT count(*), coalesce(sum(readings),0) FROM (SELECT readings "
                        "FROM batches ORDER BY seq LIMIT ?)", (excess,)).fetchone()
                    db.execute("DELETE FROM batches WHERE seq IN "
                               "(SELECT seq FROM batches ORDER BY seq LIMIT ?)", (excess,))
                    db.execute("UPDATE meta SET value=value+? WHERE key='dropped_readings'",
                               (dropped_r,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return Sealed(seq, dropped_b, dropped_r)

    def oldest(self, limit: int = 50) -> list[StoredBatch]:
        """Batches still waiting for a PUBACK, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload, readings FROM batches ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [StoredBatch(seq, bytes(payload), n) for seq, payload, n in rows]

    def due(self, now: float, limit: int = 50) -> list[StoredBatch]:
        """Batches to publish now (never sent, or sent and unconfirmed past ``next_at``),
        oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload, readings, attempts FROM batches WHERE next_at IS NULL "
                "OR next_at <= ? ORDER BY seq LIMIT ?", (now, limit)).fetchall()
        return [StoredBatch(seq, bytes(payload), n, a) for seq, payload, n, a in rows]

    def next_due(self) -> float | None:
        """The earliest ``next_at`` of a batch waiting for its receipt."""
        with self._lock:
            (value,) = self._db.execute("SELECT min(next_at) FROM batches").fetchone()
        return None if value is None else float(value)

    def sent(self, seq: int, resend_after: Callable[[int], float]) -> None:
        """Published (PUBACK): keep it until its receipt; ``resend_after(attempts)`` says
        how many seconds to wait before sending it again."""
        with self._lock:
            row = self._db.execute("SELECT attempts FROM batches WHERE seq=?",
                                   (seq,)).fetchone()
            if row is None:  # its receipt came first
                return
            attempts = row[0] + 1
            self._db.execute("UPDATE batches SET attempts=?, next_at=? WHERE seq=?",
                             (attempts, time.time() + resend_after(attempts), seq))

    def unsent(self) -> int:
        """Batches never published yet (what a stopping gateway still tries to send)."""
        with self._lock:
            (value,) = self._db.execute(
                "SELECT count(*) FROM batches WHERE attempts = 0").fetchone()
        return int(value)

    def acknowledged(self, seqs: Sequence[int]) -> None:
        """The broker has these batches (receipts off): forget them."""
        with self._lock:
            self._db.executemany("DELETE FROM batches WHERE seq=?", [(s,) for s in seqs])

    def confirmed(self, ranges: Sequence[tuple[int, int]]) -> list[float]:
        """The collector committed these seq ranges: forget them; returns when each batch
        that went had been sealed (epoch seconds), for the receipt latency."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                sealed = [row[0] for first, last in ranges for row in db.execute(
                    "DELETE FROM batches WHERE seq BETWEEN ? AND ? RETURNING sealed_at",
                    (first, last)).fetchall()]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return sealed

    def depth(self) -> tuple[int, int]:
        """(batches, readings) waiting to be published."""
        with self._lock:
            batches, readings = self._db.execute(
                "SELECT count(*), coalesce(sum(readings),0) FROM batches").fetchone()
        return int(batches), int(readings)

    def last_seq(self) -> int:
        with self._lock:
            (value,) = self._db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(value)

    def dropped_readings(self) -> int:
        with self._lock:
            (value,) = self._db.execute(
                "SELECT value FROM meta WHERE key='dropped_readings'").fetchone()
        return int(value)

    # ------------------------------------------------------------------ unsent events

    def save_events(self, payloads: Sequence[bytes]) -> None:
        """Replace the snapshot of events not yet published (kept across restarts)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM events")
                db.executemany("INSERT INTO events (payload) VALUES (?)",
                               [(p,) for p in payloads])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def load_events(self) -> list[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT payload FROM events ORDER BY id").fetchall()
        return [bytes(p) for (p,) in rows]

    # ------------------------------------------------------------------ command results

    def command_seen(self, command_id: str) -> tuple[bool, bytes | None]:
        """(seen before, the final ack if it finished)."""
        with self._lock:
            row = self._db.execute(
                "SELECT done_ack FROM commands WHERE command_id=?", (command_id,)).fetchone()
        if row is None:
            return False, None
        return True, bytes(row[0]) if row[0] is not None else None

    def command_started(self, command_id: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO commands VALUES (?,?,NULL)",
                             (command_id, time.time()))

    def command_finished(self, command_id: str, done_ack: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO commands VALUES (?,?,?) ON CONFLICT(command_id) "
                "DO UPDATE SET done_ack=excluded.done_ack", (command_id, time.time(), done_ack))

    def forget_commands_before(self, when: float) -> int:
        """Drop results older than the longest time a sender could still retry."""
        with self._lock:
            cur = self._db.execute("DELETE FROM commands WHERE received_at < ?", (when,))
        return cur.rowcount
