"""Users, roles, passwords, API tokens and signed session cookies.

Passwords are hashed with scrypt (memory-hard, in the standard library); API tokens are long
random strings, so one sha256 is enough to store them without making a dump useful. Session
cookies carry the user id and an expiry, signed with HMAC-SHA256 by a key kept in the
database so several web processes accept each other's cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg.rows import tuple_row

Role = Literal["viewer", "engineer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "engineer", "operator", "admin")
_RANK: dict[str, int] = {role: n for n, role in enumerate(ROLES)}

TOKEN_PREFIX = "mh_"
SESSION_COOKIE = "meterhub_session"
SESSION_TTL_S = 12 * 3600

# scrypt cost: 16 MiB of memory per hash, about 50 ms: slow for a guesser, fine for a login.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class AuthError(ValueError):
    """A login that cannot be accepted; the message is safe to show to the person."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role
    via: Literal["session", "token"] = "session"
    token_id: int | None = None

    def can(self, needed: Role) -> bool:
        return _RANK[self.role] >= _RANK[needed]


def role_at_least(role: str, needed: Role) -> bool:
    return _RANK.get(role, -1) >= _RANK[needed]


# ---------------------------------------------------------------------------- hashing


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(12)


# ---------------------------------------------------------------------------- sessions


def sign_session(key: bytes, user_id: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + SESSION_TTL_S)
    body = f"{user_id}.{expires}.{secrets.token_hex(8)}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return body + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def verify_session(key: bytes, cookie: str, now: float | None = None) -> int | None:
    """The user id of a valid, unexpired cookie; None for anything else."""
    body, _, mac = cookie.rpartition(".")
    try:
        want = base64.urlsafe_b64encode(
            hmac.new(key, body.encode(), hashlib.sha256).digest()
        ).decode().rstrip("=")
        if not hmac.compare_digest(want, mac):
            return None
        user_id, expires, _nonce = body.split(".")
        if int(expires) < (now if now is not None else time.time()):
            return None
        return int(user_id)
    except ValueError:
        return None


def session_key(conn: psycopg.Connection) -> bytes:
    """The shared signing key, created on first use (first writer wins)."""
    conn.execute(
        "INSERT INTO web_secrets (name, value) VALUES ('session', %s) ON CONFLICT DO NOTHING",
        (secrets.token_bytes(32),),
    )
    row = _one(conn, "SELECT value FROM web_secrets WHERE name = 'session'", ())
    assert row is not None
    return bytes(row[0])


# ---------------------------------------------------------------------------- database


def _one(conn: psycopg.Connection, sql: str, params: tuple[object, ...]) -> tuple | None:
    """One row as a tuple, whatever row factory the connection was opened with."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(sql, params).fetchone()


def create_user(
    conn: psycopg.Connection, name: str, role: Role, *, password: str | None = None,
    created_by: str = "cli",
) -> tuple[int, str]:
    """Create a user with a password (generated when not given); returns (id, password).

    Raises AuthError when the name is taken or the role is unknown."""
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
    password = password or new_password()
    row = _one(
        conn,
        "INSERT INTO web_users (name, role, password_hash, created_by) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, role, hash_password(password), created_by),
    )
    if row is None:
        raise AuthError(f"a user named {name!r} already exists")
    return int(row[0]), password


def create_token(conn: psycopg.Connection, user_id: int, label: str = "") -> tuple[int, str]:
    """A new API token for a user; returns (token id, token). Only the hash is stored."""
    token = new_token()
    row = _one(
        conn,
        "INSERT INTO web_tokens (user_id, label, token_sha256) VALUES (%s, %s, %s) RETURNING id",
        (user_id, label, token_digest(token)),
    )
    assert row is not None
    return int(row[0]), token


def login(conn: psycopg.Connection, name: str, password: str) -> User:
    row = _one(
        conn, "SELECT id, name, role, password_hash, disabled FROM web_users WHERE name = %s",
        (name,),
    )
    # Hash anyway when the user is unknown so timing does not tell which names exist.
    ok = check_password(password, row[3] if row else hash_password("x"))
    if row is None or not ok or row[4]:
        raise AuthError("wrong user name or password")
    return User(int(row[0]), row[1], row[2])


def user_by_id(conn: psycopg.Connection, user_id: int) -> User | None:
    row = _one(conn, "SELECT id, name, role FROM web_users WHERE id = %s AND NOT disabled",
               (user_id,))
    return User(int(row[0]), row[1], row[2]) if row else None


def user_by_token(conn: psycopg.Connection, token: str) -> User | None:
    row = _one(
        conn,
        "UPDATE web_tokens t SET last_used_at = now() FROM web_users u"
        " WHERE t.token_sha256 = %s AND t.revoked_at IS NULL AND u.id = t.user_id"
        "   AND NOT u.disabled"
        " RETURNING u.id, u.name, u.role, t.id",
        (token_digest(token),),
    )
    return User(int(row[0]), row[1], row[2], "token", int(row[3])) if row else None
