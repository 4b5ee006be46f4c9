"""The delivery queue in PostgreSQL (sync; psycopg, autocommit connections).

Jobs are claimed with a lease (``FOR UPDATE SKIP LOCKED``), so several deliverers share the
work and a job a crashed one held goes out again after the lease: delivery is at least
once. Each attempt is a row in ``notify_attempts``; the per-contact hourly limit counts the
successful ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import Notice

CUSTOMER = "customer"


@dataclass(frozen=True, slots=True)
class Job:
    notice_id: int
    target: str
    required: bool
    channel_index: int
    attempts: int
    notice: dict[str, Any]  # account_id, kind, params, texts

    @property
    def webhook(self) -> str | None:
        return self.target.partition(":")[2] if self.target.startswith("webhook:") else None


def snapshot(notice: Notice) -> dict[str, Any]:
    return {
        "account_id": notice.account_id,
        "kind": notice.kind,
        "params": notice.params,
        "texts": notice.texts,
        "required": notice.required,
        "created_at": notice.created_at.isoformat(),
    }


def open_jobs(conn: psycopg.Connection[Any]) -> int:
    """Customer jobs whose notice may still be open (pending, or given up for staff)."""
    row = conn.execute(
        "SELECT count(*) FROM notify_jobs WHERE target = %s AND state IN ('pending', 'given_up')",
        (CUSTOMER,),
    ).fetchone()
    return int(row[0]) if row else 0


def plan(
    conn: psycopg.Connection[Any],
    notices: Iterable[Notice],
    webhooks: Sequence[tuple[str, frozenset[str] | None]],
    now: datetime,
) -> int:
    """A job per new notice for its customer and each webhook that wants its kind."""
    rows = []
    for n in notices:
        payload = json.dumps(snapshot(n), ensure_ascii=False)
        targets = [
            CUSTOMER,
            *(f"webhook:{name}" for name, kinds in webhooks if kinds is None or n.kind in kinds),
        ]
        rows += [(n.notice_id, t, n.required, payload, now) for t in targets]
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO notify_jobs (notice_id, target, required, notice, next_attempt_at)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            rows,
        )
        return cur.rowcount


def drop_closed(conn: psycopg.Connection[Any], open_ids: Iterable[int], now: datetime) -> int:
    """Pending customer jobs whose notice is no longer due (withdrawn, or delivered by
    another deliverer) are done without sending."""
    cur = conn.execute(
        """UPDATE notify_jobs SET state = 'done', finished_at = %s, lease_until = NULL,
               last_error = 'the notice is no longer open (withdrawn or closed)'
           WHERE target = %s AND state = 'pending' AND lease_until IS NULL
             AND NOT (notice_id = ANY(%s))""",
        (now, CUSTOMER, list(open_ids)),
    )
    return cur.rowcount


def claim(conn: psycopg.Connection[Any], now: datetime, limit: int, lease_s: float) -> list[Job]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """UPDATE notify_jobs j SET lease_until = %(lease)s
               FROM (SELECT notice_id, target FROM notify_jobs
                     WHERE state = 'pending' AND next_attempt_at <= %(now)s
                       AND (lease_until IS NULL OR lease_until < %(now)s)
                     ORDER BY required DESC, next_attempt_at LIMIT %(n)s
                     FOR UPDATE SKIP LOCKED) due
               WHERE j.notice_id = due.notice_id AND j.target = due.target
               RETURNING j.*""",
            {"now": now, "lease": now + timedelta(seconds=lease_s), "n": limit},
        ).fetchall()
    return [
        Job(
            r["notice_id"],
            r["target"],
            r["required"],
            r["channel_index"],
            r["attempts"],
            r["notice"],
        )
        for r in rows
    ]


def attempt(
    conn: psycopg.Connection[Any],
    job: Job,
    channel: str,
    contact: str,
    at: datetime,
    outcome: str,
    provider_id: str | None,
    detail: str,
) -> None:
    conn.execute(
        """INSERT INTO notify_attempts (notice_id, target, channel, contact, at, outcome,
               provider_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (job.notice_id, job.target, channel, contact, at, outcome, provider_id, detail[:500]),
    )


def update(conn: psycopg.Connection[Any], job: Job, **sets: Any) -> None:
    """Set columns of the job and release its lease."""
    cols = "".join(f", {k} = %({k})s" for k in sets)
    conn.execute(
        f"UPDATE notify_jobs SET lease_until = NULL{cols} "
        "WHERE notice_id = %(notice_id)s AND target = %(target)s",
        {**sets, "notice_id": job.notice_id, "target": job.target},
    )


def recent_to(
    conn: psycopg.Connection[Any], contact: str, since: datetime
) -> tuple[int, datetime | None]:
    """Messages delivered to ``contact`` since ``since`` and the oldest of them."""
    row = conn.execute(
        "SELECT count(*), min(at) FROM notify_attempts WHERE contact = %s AND outcome = 'ok' "
        "AND at > %s",
        (contact, since),
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def jobs(
    conn: psycopg.Connection[Any], state: str | None = None, limit: int = 100
) -> list[tuple[Any, ...]]:
    """For people: (notice, target, state, channel, provider id, last error, finished)."""
    return conn.execute(
        """SELECT notice_id, target, state, channel, provider_id, last_error, finished_at
           FROM notify_jobs WHERE %(s)s::text IS NULL OR state = %(s)s
           ORDER BY created_at DESC, notice_id DESC LIMIT %(n)s""",
        {"s": state, "n": limit},
    ).fetchall()
