"""The review queue ("abnormal work orders"): a person confirms or dismisses an item.

Either decision releases the intervals the item held (held=false, which the intervals
triggers put on billing's change queue, so billing charges them now). Confirm means "the
anomaly is real and the consumption stands"; dismiss means "a false alarm". The decision, who
made it and why are kept on the item. Items are opened by validation passes
(:func:`open_review_items`), one per run of held intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from meterhub import channels

# Advisory lock: one writer of `intervals` at a time (validation passes and review decisions),
# so a pass never re-derives an interval a decision is changing.
VEE_LOCK = 7411002

Decision = Literal["confirmed", "dismissed"]


class ReviewError(ValueError):
    """A decision that cannot be taken (unknown item, already decided, bad input)."""


@dataclass(frozen=True, slots=True)
class Decided:
    item_id: int
    status: Decision
    released: int  # intervals no longer held


def decide(database_url: str, item_id: int, decision: Decision, who: str,
           comment: str = "") -> Decided:
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        return decide_in(conn, item_id, decision, who, comment)


def decide_in(conn: psycopg.Connection[Any], item_id: int, decision: Decision, who: str,
              comment: str = "") -> Decided:
    """Confirm or dismiss an open item inside the caller's transaction."""
    if decision not in ("confirmed", "dismissed"):
        raise ReviewError(f"decision must be 'confirmed' or 'dismissed', not {decision!r}")
    if not who.strip():
        raise ReviewError("a decision needs the name of the person taking it")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (VEE_LOCK,))
    row = conn.execute(
        "SELECT status FROM review_items WHERE id = %s FOR UPDATE", (item_id,)
    ).fetchone()
    if row is None:
        raise ReviewError(f"review item {item_id} does not exist")
    if row[0] != "open":
        raise ReviewError(f"review item {item_id} is already {row[0]}")
    conn.execute(
        "UPDATE review_items SET status = %s, decided_at = now(), decided_by = %s, "
        "comment = %s WHERE id = %s",
        (decision, who, comment, item_id),
    )
    conn.execute("INSERT INTO review_history (item_id, by, action, detail, comment)"
                 " VALUES (%s, %s, 'decided', %s, %s)",
                 (item_id, who, json.dumps({"decision": decision, "previous_status": "open"}),
                  comment))
    return Decided(item_id, decision, release_held(conn, item_id))


def release_held(conn: psycopg.Connection[Any], item_id: int) -> int:
    """Let billing have the item's intervals that no other open item still holds."""
    released: int = conn.execute(
        """UPDATE intervals iv SET held = false
           FROM anomalies a
           WHERE a.review_item_id = %s AND iv.meter = a.meter
             AND iv.interval_start = a.at AND iv.held
             AND NOT EXISTS (
                 SELECT 1 FROM anomalies o LEFT JOIN review_items r ON r.id = o.review_item_id
                 WHERE o.meter = iv.meter AND o.at = iv.interval_start AND o.holds
                   AND (r.id IS NULL OR r.status = 'open'))""",
        (item_id,),
    ).rowcount
    if released:
        channels.notify(conn, channels.HOLDS_RELEASED, str(item_id))  # billing wakes
    return released


def open_items(database_url: str, limit: int = 100) -> list[dict[str, object]]:
    """The queue an engineer works through, oldest first."""
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT id, meter_id, rule, period_start, period_end, reason, opened_at "
            "FROM review_items WHERE status = 'open' ORDER BY opened_at, id LIMIT %s",
            (limit,),
        )
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def open_review_items(conn: psycopg.Connection, interval_s: int) -> int:
    """One work order per run of consecutive held intervals of one meter and rule, for the
    anomalies a validation pass just stored (inside its transaction). A run that touches an
    open work order of the same meter and rule (a fault still going on when the last pass
    ran) joins it: one fault, one work order. Returns how many were opened."""
    rows = conn.execute(
        "SELECT a.id, m.meter_id, v.name, a.at, a.reason FROM anomalies a"
        " JOIN meters m ON m.meter_key = a.meter JOIN vee_rules v ON v.code = a.rule"
        " WHERE a.holds AND a.review_item_id IS NULL ORDER BY m.meter_id, v.name, a.at"
    ).fetchall()
    if not rows:
        return 0
    size = float(interval_s)
    runs: list[list[tuple[Any, ...]]] = []
    for row in rows:
        prev = runs[-1][-1] if runs else None
        if (prev is not None and prev[1] == row[1] and prev[2] == row[2]
                and (row[3] - prev[3]).total_seconds() <= size):
            runs[-1].append(row)
        else:
            runs.append([row])
    opened = 0
    for run in runs:
        first, last = run[0], run[-1]
        item = conn.execute(
            """SELECT id FROM review_items
               WHERE meter_id = %s AND rule = %s AND status = 'open'
                 AND period_end >= %s AND period_start <= %s + make_interval(secs => %s)
               ORDER BY id LIMIT 1""",
            (first[1], first[2], first[3], last[3], interval_s),
        ).fetchone()
        if item is None:
            n = len(run)
            reason = first[4] if n == 1 else f"{n} intervals: {first[4]}"
            item = conn.execute(
                """INSERT INTO review_items (meter_id, rule, period_start, period_end, reason)
                   VALUES (%s, %s, %s, %s + make_interval(secs => %s), %s) RETURNING id""",
                (first[1], first[2], first[3], last[3], interval_s, reason),
            ).fetchone()
            opened += 1
        assert item is not None
        conn.execute("UPDATE anomalies SET review_item_id = %s WHERE id = ANY(%s)",
                     (item[0], [r[0] for r in run]))
        conn.execute(
            """UPDATE review_items r
               SET period_start = least(r.period_start, %(lo)s),
                   period_end = greatest(r.period_end, %(hi)s + make_interval(secs => %(s)s)),
                   reason = (SELECT CASE WHEN count(*) = 1 THEN min(a.reason)
                                    ELSE count(*) || ' intervals: '
                                         || (array_agg(a.reason ORDER BY a.at))[1] END
                             FROM anomalies a WHERE a.review_item_id = r.id)
               WHERE r.id = %(id)s""",
            {"lo": first[3], "hi": last[3], "s": interval_s, "id": item[0]},
        )
    return opened
