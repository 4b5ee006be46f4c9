"""Users, roles, passwords, API tokens and the signing of session cookies.

Passwords are hashed with scrypt (memory-hard, in the standard library) at N=2^17, r=8, p=1;
a hash made with weaker parameters is replaced at the next successful login. API tokens are
long random strings, so one sha256 is enough to store them without making a dump useful.
A session cookie is a random token (its session row is in ``web.sessions``) signed with
HMAC-SHA256 by a key that lives outside the database (``web.keys``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg.rows import tuple_row

from meterhub.i18n import _

Role = Literal["viewer", "auditor", "engineer", "operator", "admin", "customer"]
ROLES: tuple[Role, ...] = ("viewer", "auditor", "engineer", "operator", "admin", "customer")
# Reading rights rise with the rank; the auditor reads like a viewer and, besides the admin,
# is the one who may read the audit log (see User.can). A customer is outside the ladder:
# only the customer routes (their own accounts), nothing of the staff's.
_RANK: dict[str, int] = {"customer": -1, "viewer": 0, "auditor": 0, "engineer": 1,
                         "operator": 2, "admin": 3}

TOKEN_PREFIX = "mh_"
SESSION_COOKIE = "meterhub_session"


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt cost: N=2^17, r=8 is 128 MiB of memory per hash (OWASP's current advice)."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        return 2 * 128 * self.r * self.n  # what the hash needs, with room to spare


SCRYPT = ScryptParams()


class AuthError(ValueError):
    """A login that cannot be accepted; the message is safe to show to the person."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role
    via: Literal["session", "token"] = "session"
    token_id: int | None = None
    session_id: int | None = None
    source: str = ""  # the client's address, for the audit log

    def can(self, needed: Role) -> bool:
        if needed == "customer":
            return self.role == "customer"
        if needed == "auditor":
            return self.role in ("auditor", "admin")
        return _RANK[self.role] >= _RANK[needed]


# ---------------------------------------------------------------------------- hashing


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    cost = SCRYPT
    digest = hashlib.scrypt(password.encode(), salt=salt, n=cost.n, r=cost.r, p=cost.p,
                            maxmem=cost.maxmem, dklen=32)
    return f"scrypt${cost.n}${cost.r}${cost.p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        cost = ScryptParams(int(n), int(r), int(p))
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=cost.n, r=cost.r, p=cost.p,
            maxmem=cost.maxmem, dklen=len(digest) // 2,
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def needs_rehash(stored: str) -> bool:
    """A hash made at a lower cost than today's (replaced at the next login; a stronger
    one is left alone)."""
    try:
        scheme, n, r, p, _salt, _digest = stored.split("$")
        return scheme != "scrypt" or (int(n), int(r), int(p)) < (SCRYPT.n, SCRYPT.r, SCRYPT.p)
    except ValueError:
        return True


_DUMMY_HASH: dict[ScryptParams, str] = {}


def _dummy_hash() -> str:
    """A hash to check against when the name is unknown, so timing does not tell which names
    exist; made once per cost, not once per attempt."""
    if SCRYPT not in _DUMMY_HASH:
        _DUMMY_HASH[SCRYPT] = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH[SCRYPT]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(12)


# ---------------------------------------------------------------------------- session cookies


def sign_session(key: bytes, token: str) -> str:
    """The cookie for a session token: ``token.mac``; a forged cookie is refused before any
    database lookup."""
    return f"{token}.{_mac(key, token)}"


def verify_session(key: bytes, cookie: str) -> str | None:
    """The session token of a correctly signed cookie; None for anything else."""
    token, _sep, mac = cookie.rpartition(".")
    if not token or not hmac.compare_digest(_mac(key, token), mac):
        return None
    return token


def _mac(key: bytes, body: str) -> str:
    return base64.urlsafe_b64encode(
        hmac.new(key, body.encode(), hashlib.sha256).digest()).decode().rstrip("=")


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
        raise AuthError(_("role {role!r} is not one of {roles}", role=role,
                          roles=", ".join(ROLES)))
    password = password or new_password()
    row = _one(
        conn,
        "INSERT INTO web_users (name, role, password_hash, created_by) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING RETURNING id",
        (name, role, hash_password(password), created_by),
    )
    if row is None:
        raise AuthError(_("a user named {name!r} already exists", name=name))
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
    """The user whose password this is; a hash made at older parameters is replaced."""
    row = _one(
        conn, "SELECT id, name, role, password_hash, disabled FROM web_users WHERE name = %s",
        (name,),
    )
    ok = check_password(password, row[3] if row else _dummy_hash())
    if row is None or not ok or row[4]:
        raise AuthError(_("wrong user name or password"))
    if needs_rehash(row[3]):
        set_password(conn, int(row[0]), password)
    return User(int(row[0]), row[1], row[2])


def set_password(conn: psycopg.Connection, user_id: int, password: str) -> None:
    conn.execute("UPDATE web_users SET password_hash = %s WHERE id = %s",
                 (hash_password(password), user_id))


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
