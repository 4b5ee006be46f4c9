"""Notices to customers: what billing must say, kept as evidence, and what delivery did.

Billing records a notice (kind, parameters, the legal text in every language as issued) in
the same transaction as the decision behind it; the ``notify`` part delivers due notices and
appends one evidence row per attempt. This module is the whole interface between the two:
billing never sends, delivery never decides. A notice is closed by the first ``delivered``
or ``posted`` evidence; ``withdraw`` marks one moot before that (e.g. the bill was paid
before its reminder went out). Required notices ignore quiet hours (delivery's concern).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.errors import BillingError

KINDS = (
    "low_balance",
    "bill",
    "reminder",
    "due_today",
    "collection",
    "planned_disconnection",
    "final_notice",
    "posted_notice",
    "cutoff",
    "restore",
    "penalty",
    "instalment",
    "instalment_missed",
    "settlement_schedule",
    "settlement_missed",
)
LANGUAGES = ("zh-CN", "en")
OUTCOMES = ("sent", "delivered", "refused", "failed", "posted")
FINAL_OUTCOMES = frozenset({"delivered", "posted"})
MAX_TEXT = 20_000  # characters of one subject or body
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,31}")


class NoticeError(BillingError):
    """A notice or evidence that cannot be recorded as given; the message names the field."""


@dataclass(frozen=True, slots=True)
class Notice:
    notice_id: int
    account_id: str
    kind: str
    required: bool
    not_before: datetime
    created_at: datetime
    params: dict[str, str]
    texts: dict[str, dict[str, str]]
    dedupe_key: str | None
    attempts: int = 0  # evidence rows so far (sent/refused/failed ones: not final)
    last_outcome: str | None = None
    last_at: datetime | None = None


def _aware(value: datetime, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise NoticeError(f"{field}: must be a timezone-aware datetime")
    return value


def _check_params(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise NoticeError(
                f"params[{key!r}]: keys and values are strings (money as decimal strings), "
                f"got {type(value).__name__}"
            )
        out[key] = value
    return out


def _check_texts(texts: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for lang in LANGUAGES:
        entry = texts.get(lang)
        if not isinstance(entry, Mapping):
            raise NoticeError(
                f"texts[{lang!r}]: missing; every notice is issued in {', '.join(LANGUAGES)}"
            )
        for part in ("subject", "body"):
            value = entry.get(part)
            if not isinstance(value, str) or not value.strip():
                raise NoticeError(f"texts[{lang!r}][{part!r}]: must be non-empty text")
            if len(value) > MAX_TEXT:
                raise NoticeError(f"texts[{lang!r}][{part!r}]: longer than {MAX_TEXT} characters")
        out[lang] = {"subject": entry["subject"], "body": entry["body"]}
    extra = set(texts) - set(LANGUAGES)
    if extra:
        raise NoticeError(f"texts: unknown languages {sorted(extra)}")
    return out


def record_notice(
    conn: psycopg.Connection[Any],
    *,
    account_id: str,
    kind: str,
    required: bool,
    not_before: datetime,
    params: Mapping[str, str],
    texts: Mapping[str, Mapping[str, str]],
    dedupe_key: str | None,
    created_at: datetime | None = None,
) -> int:
    """Record a notice; the same ``dedupe_key`` again returns the first notice's id.

    Raises :class:`NoticeError` when a field is invalid or the key was used for another
    account or kind. ``created_at`` defaults to ``not_before`` (simulated time stays coherent).
    """
    if kind not in KINDS:
        raise NoticeError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(required, bool):
        raise NoticeError("required: must be true or false")
    _aware(not_before, "not_before")
    created = _aware(created_at, "created_at") if created_at is not None else not_before
    clean_params = _check_params(params)
    clean_texts = _check_texts(texts)
    row = conn.execute(
        """INSERT INTO billing_notices (account_id, kind, required, not_before, created_at,
               params, texts, dedupe_key)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (dedupe_key) DO NOTHING RETURNING notice_id""",
        (
            account_id,
            kind,
            required,
            not_before,
            created,
            json.dumps(clean_params),
            json.dumps(clean_texts, ensure_ascii=False),
            dedupe_key,
        ),
    ).fetchone()
    if row is not None:
        return int(row[0])
    first = conn.execute(
        "SELECT notice_id, account_id, kind FROM billing_notices WHERE dedupe_key = %s",
        (dedupe_key,),
    ).fetchone()
    assert first is not None  # the conflict was on this key
    if (first[1], first[2]) != (account_id, kind):
        raise NoticeError(
            f"dedupe_key {dedupe_key!r} was already used for a {first[2]} "
            f"notice of account {first[1]}"
        )
    return int(first[0])


_SELECT = """
    SELECT n.*, e.attempts, e.last_outcome, e.last_at
    FROM billing_notices n
    LEFT JOIN LATERAL (
        SELECT count(*) AS attempts,
               (array_agg(outcome ORDER BY evidence_id DESC))[1] AS last_outcome,
               max(at) AS last_at
        FROM billing_notice_evidence WHERE notice_id = n.notice_id) e ON true
"""


def _notice(row: Mapping[str, Any]) -> Notice:
    return Notice(
        notice_id=row["notice_id"],
        account_id=row["account_id"],
        kind=row["kind"],
        required=row["required"],
        not_before=row["not_before"],
        created_at=row["created_at"],
        params=dict(row["params"]),
        texts={k: dict(v) for k, v in row["texts"].items()},
        dedupe_key=row["dedupe_key"],
        attempts=int(row["attempts"] or 0),
        last_outcome=row["last_outcome"],
        last_at=row["last_at"],
    )


def due_notices(conn: psycopg.Connection[Any], *, now: datetime, limit: int = 100) -> list[Notice]:
    """Notices whose time has come and that are neither finally delivered nor withdrawn,
    required ones first, then oldest first. Several deliverers: lock the ids in their own
    transaction (``SELECT ... FOR UPDATE SKIP LOCKED``) before sending."""
    _aware(now, "now")
    if not 0 < limit <= 10_000:
        raise NoticeError("limit: must be between 1 and 10000")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _SELECT
            + """ WHERE n.closed_at IS NULL AND n.withdrawn_at IS NULL
                          AND n.not_before <= %s
                          ORDER BY n.required DESC, n.not_before, n.notice_id LIMIT %s""",
            (now, limit),
        ).fetchall()
    return [_notice(r) for r in rows]


def notices_of(conn: psycopg.Connection[Any], account_id: str, *, limit: int = 200) -> list[Notice]:
    """An account's notices, newest first (the ladder's evidence for people)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _SELECT + " WHERE n.account_id = %s ORDER BY n.notice_id DESC LIMIT %s",
            (account_id, limit),
        ).fetchall()
    return [_notice(r) for r in rows]


def record_evidence(
    conn: psycopg.Connection[Any],
    notice_id: int,
    *,
    at: datetime,
    channel: str,
    outcome: str,
    provider_ref: str | None = None,
    detail: str | None = None,
) -> None:
    """Append what one delivery attempt did; ``delivered``/``posted`` close the notice."""
    _aware(at, "at")
    if outcome not in OUTCOMES:
        raise NoticeError(f"outcome: {outcome!r} is not one of {', '.join(OUTCOMES)}")
    if not isinstance(channel, str) or not _CHANNEL.fullmatch(channel):
        raise NoticeError(f"channel: {channel!r} must be a short lowercase name like 'sms'")
    with conn.transaction():
        found = conn.execute(
            "SELECT closed_at, account_id FROM billing_notices WHERE notice_id = %s FOR UPDATE",
            (notice_id,),
        ).fetchone()
        if found is None:
            raise NoticeError(f"notice_id: {notice_id} does not exist")
        conn.execute(
            """INSERT INTO billing_notice_evidence (notice_id, at, channel, outcome,
                   provider_ref, detail) VALUES (%s, %s, %s, %s, %s, %s)""",
            (notice_id, at, channel, outcome, provider_ref, detail),
        )
        # a postpaid ladder may wait for this evidence (billing.collection)
        conn.execute(
            "UPDATE billing_collection SET recheck = true WHERE account_id = %s", (found[1],)
        )
        if outcome in FINAL_OUTCOMES and found[0] is None:
            conn.execute(
                "UPDATE billing_notices SET closed_at = %s WHERE notice_id = %s", (at, notice_id)
            )


def withdraw(
    conn: psycopg.Connection[Any], account_id: str, kinds: Iterable[str], *, at: datetime
) -> int:
    """Withdraw an account's open notices of these kinds (their reason is gone); returns how
    many. Delivered ones stay as they are: what was said was said."""
    _aware(at, "at")
    cur = conn.execute(
        """UPDATE billing_notices SET withdrawn_at = %s
           WHERE account_id = %s AND kind = ANY(%s)
             AND closed_at IS NULL AND withdrawn_at IS NULL""",
        (at, account_id, list(kinds)),
    )
    return cur.rowcount
