"""Login throttling in the database, by source address and by account name.

Each attempt claims a slot with one atomic statement (``INSERT ... ON CONFLICT DO UPDATE ...
RETURNING``): the row lock serialises parallel attempts, so fifty requests at once get no
more tries than fifty in a row. The first ``free_failures`` attempts pass at once; after
that each attempt must wait a delay that doubles with every failure (capped), so a guesser
slows down exponentially while nobody can lock an account for good. A success clears the
counters; a quiet spell of ``forget_after_s`` forgets them.

Attempts are counted when they start (and cleared by a success), not after the password
check, because counting afterwards is exactly the gap parallel requests slip through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import tuple_row

Scope = Literal["addr", "name"]


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    free_failures: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 300.0
    forget_after_s: float = 900.0


@dataclass(frozen=True, slots=True)
class Claim:
    granted: bool
    failures: int  # attempts counted for this key, this one included when granted
    retry_after_s: float  # when refused: how long until the next attempt may pass


# clock_timestamp(), not now(): the expressions are evaluated after the row lock is taken,
# so the time must be the time of that moment, not of the transaction's start.
_FORGOTTEN = "t.touched_at < clock_timestamp() - make_interval(secs => %(forget)s)"
_OPEN = f"(t.next_at <= clock_timestamp() OR {_FORGOTTEN})"
_BASE = f"(CASE WHEN {_FORGOTTEN} THEN 0 ELSE t.failures END)"


def _delay(failures: str) -> str:
    return (f"make_interval(secs => CASE WHEN {failures} < %(free)s THEN 0"
            f" ELSE least(%(cap)s, %(first)s * power(2, least({failures} - %(free)s, 30)))"
            " END)")


_CLAIM = f"""
INSERT INTO web_login_throttle AS t (scope, key, failures, next_at, touched_at, granted)
VALUES (%(scope)s, %(key)s, 1, clock_timestamp() + {_delay("1")}, clock_timestamp(), true)
ON CONFLICT (scope, key) DO UPDATE SET
    failures = CASE WHEN {_OPEN} THEN {_BASE} + 1 ELSE t.failures END,
    next_at = CASE WHEN {_OPEN} THEN clock_timestamp() + {_delay(_BASE + " + 1")}
                   ELSE t.next_at END,
    granted = {_OPEN},
    touched_at = clock_timestamp()
RETURNING granted, failures, extract(epoch FROM next_at - clock_timestamp())
"""


def claim(conn: psycopg.Connection[Any], scope: Scope, key: str,
          policy: ThrottlePolicy) -> Claim:
    """Count an attempt for ``key`` if its delay has passed; committed at once, so a slow
    password check does not hold the row lock."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(_CLAIM, {
            "scope": scope, "key": key, "free": policy.free_failures,
            "first": policy.first_delay_s, "cap": policy.max_delay_s,
            "forget": policy.forget_after_s}).fetchone()
    conn.commit()
    assert row is not None
    return Claim(bool(row[0]), int(row[1]), max(0.0, float(row[2])))


def clear(conn: psycopg.Connection[Any], scope: Scope, key: str) -> None:
    """A successful login: this key starts afresh."""
    conn.execute("DELETE FROM web_login_throttle WHERE scope = %s AND key = %s", (scope, key))


def forget_old(conn: psycopg.Connection[Any], policy: ThrottlePolicy) -> None:
    """Drop rows quiet long enough to be forgotten anyway (names sprayed by a guesser)."""
    conn.execute("DELETE FROM web_login_throttle WHERE touched_at < now() - make_interval("
                 "secs => %s)", (policy.forget_after_s,))
