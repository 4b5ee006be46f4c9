"""Server-side sessions of the page: opened at login, checked on every request, listed and
revoked by their owner (or an admin), ended by idle or absolute expiry.

The cookie holds a random token; the row holds its sha256, so a database dump opens no
session. Every request looks the row up (one UPDATE ... RETURNING that also marks it used),
so a revocation takes effect on the very next request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from web.auth import User


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How long a session lives: ``idle_s`` without a request, ``absolute_s`` in all."""

    idle_s: float = 30 * 60
    absolute_s: float = 12 * 3600


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(conn: psycopg.Connection[Any], user: User, policy: SessionPolicy,
                 source: str, user_agent: str) -> tuple[int, str]:
    """A new session for ``user``; returns (session id, token for the cookie)."""
    token = secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO web_sessions (user_id, token_sha256, expires_at, source, user_agent)"
        " VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s) RETURNING id",
        (user.id, _digest(token), policy.absolute_s, source, user_agent[:300]),
    ).fetchone()
    assert row is not None
    return int(row[0] if isinstance(row, tuple) else row["id"]), token


def user_by_session(conn: psycopg.Connection[Any], token: str,
                    policy: SessionPolicy) -> User | None:
    """The user of a live session (not revoked, not idle too long, not past its end), and
    the session marked as used now; None otherwise."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "UPDATE web_sessions s SET last_seen_at = now() FROM web_users u"
            " WHERE s.token_sha256 = %s AND s.revoked_at IS NULL AND s.expires_at > now()"
            "   AND s.last_seen_at > now() - make_interval(secs => %s)"
            "   AND u.id = s.user_id AND NOT u.disabled"
            " RETURNING u.id, u.name, u.role, s.id AS session_id",
            (_digest(token), policy.idle_s),
        ).fetchone()
    if row is None:
        return None
    return User(int(row["id"]), row["name"], row["role"], "session",
                session_id=int(row["session_id"]))


def list_sessions(conn: psycopg.Connection[Any], user_id: int,
                  policy: SessionPolicy) -> list[dict[str, Any]]:
    """The user's live sessions, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(
            "SELECT id, created_at, last_seen_at,"
            " least(expires_at, last_seen_at + make_interval(secs => %s)) AS expires_at,"
            " source, user_agent FROM web_sessions"
            " WHERE user_id = %s AND revoked_at IS NULL AND expires_at > now()"
            "   AND last_seen_at > now() - make_interval(secs => %s)"
            " ORDER BY id DESC",
            (policy.idle_s, user_id, policy.idle_s)).fetchall())


def session_owner(conn: psycopg.Connection[Any], session_id: int) -> int | None:
    row = conn.execute("SELECT user_id FROM web_sessions WHERE id = %s",
                       (session_id,)).fetchone()
    if row is None:
        return None
    return int(row[0] if isinstance(row, tuple) else row["user_id"])


def revoke(conn: psycopg.Connection[Any], *, by: str, session_id: int | None = None,
           user_id: int | None = None, keep: int | None = None) -> int:
    """Revoke one session, or every live session of a user (but ``keep``); returns how
    many were live."""
    assert (session_id is None) != (user_id is None)
    column, value = ("id", session_id) if session_id is not None else ("user_id", user_id)
    cur = conn.execute(
        f"UPDATE web_sessions SET revoked_at = now(), revoked_by = %s"
        f" WHERE {column} = %s AND revoked_at IS NULL AND id IS DISTINCT FROM %s",
        (by, value, keep))
    return cur.rowcount
