"""Dead letters after the fact: bounded retention, list, export, replay (counts by reason:
read_model.dead_letter_counts).

Ingest writes them (store.dead_letter_row: a payload up to the keep cap whole, else its first
bytes, with the original length and sha256). Only a whole message kept complete can be
replayed; a single refused reading, or a payload cut to its prefix, can only be read.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

_PRUNE_AGE = "DELETE FROM dead_letters WHERE received_at < now() - make_interval(secs => %s)"
# Newest first, keep rows while their running size fits; the rest (the oldest) go.
_PRUNE_SIZE = """
DELETE FROM dead_letters WHERE id IN (
    SELECT id FROM (
        SELECT id, sum(octet_length(payload) + octet_length(reason) + 200)
                   OVER (ORDER BY id DESC) AS running
        FROM dead_letters
    ) t WHERE running > %s
)
"""


def prune(conn: psycopg.Connection[Any], max_age_s: float, max_total_bytes: int) -> int:
    """Drop dead letters older than ``max_age_s`` and, oldest first, beyond
    ``max_total_bytes`` in all (payload + reason + ~200 bytes of row): a storm of poison must
    not fill the disk. Returns how many went."""
    with conn.transaction():
        gone = conn.execute(_PRUNE_AGE, (max_age_s,)).rowcount
        gone += conn.execute(_PRUNE_SIZE, (max_total_bytes,)).rowcount
    return gone


def _filter(code: str | None, gateway: str | None, since: datetime | None,
            ids: list[int] | None) -> tuple[str, list[Any]]:
    clauses, params = ["true"], []
    for sql, value in (("code = %s", code), ("gateway = %s", gateway),
                       ("received_at >= %s", since), ("id = ANY(%s)", ids)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    return " AND ".join(clauses), params


def rows(conn: psycopg.Connection[Any], *, code: str | None = None, gateway: str | None = None,
         since: datetime | None = None, ids: list[int] | None = None,
         limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Dead letters, oldest first, as plain data (payload as bytes)."""
    where, params = _filter(code, gateway, since, ids)
    sql = ("SELECT id, received_at, code, reason, topic, gateway, payload, payload_length,"
           " payload_sha256, complete, whole_message, replayed_at FROM dead_letters"
           f" WHERE {where} ORDER BY id")
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    with conn.transaction(), conn.cursor(row_factory=dict_row, name="dead_letters") as cur:
        cur.execute(sql, params)
        yield from cur


def export_record(row: dict[str, Any]) -> dict[str, Any]:
    """One dead letter as JSON-ready data (payload base64, sha256 hex)."""
    return {
        "id": row["id"], "received_at": row["received_at"].isoformat(), "code": row["code"],
        "reason": row["reason"], "topic": row["topic"], "gateway": row["gateway"],
        "payload_b64": base64.b64encode(bytes(row["payload"])).decode(),
        "payload_length": row["payload_length"],
        "payload_sha256": bytes(row["payload_sha256"]).hex() if row["payload_sha256"] else None,
        "complete": row["complete"], "whole_message": row["whole_message"],
        "replayed_at": row["replayed_at"].isoformat() if row["replayed_at"] else None,
    }


def replayable(row: dict[str, Any]) -> bool:
    return bool(row["complete"] and row["whole_message"])


def mark_replayed(conn: psycopg.Connection[Any], ids: list[int]) -> None:
    conn.execute("UPDATE dead_letters SET replayed_at = now() WHERE id = ANY(%s)", (ids,))
