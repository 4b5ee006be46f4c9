"""The web process's door to PostgreSQL: one small pool, work done in worker threads.

The other parts' write functions (billing top-ups, review decisions) take a synchronous
psycopg connection, so the web part uses the same: every query runs through :func:`run` in a
thread, the event loop never blocks, and a handler's reads and its audit row share one
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from aiohttp import web
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from web.auth import User

P = ParamSpec("P")
T = TypeVar("T")

POOL_KEY: web.AppKey[ConnectionPool] = web.AppKey("pool", ConnectionPool)


def make_pool(database_url: str, max_size: int = 8) -> ConnectionPool:
    return ConnectionPool(
        database_url, min_size=1, max_size=max_size, open=False, timeout=10,
        kwargs={"row_factory": dict_row, "application_name": "meterhub-web"},
        name="meterhub-web",
    )


async def run(
    request_or_app: web.Request | web.Application,
    fn: Callable[Concatenate[psycopg.Connection[Any], P], T],
    *args: P.args, **kwargs: P.kwargs,
) -> T:
    """Call ``fn(conn, ...)`` in a worker thread inside one transaction (committed on
    success, rolled back on any exception)."""
    app = request_or_app.app if isinstance(request_or_app, web.Request) else request_or_app
    pool = app[POOL_KEY]

    def work() -> T:
        with pool.connection() as conn:
            return fn(conn, *args, **kwargs)

    return await asyncio.to_thread(work)


@contextlib.contextmanager
def tuple_rows(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Plain tuple rows for the length of a call into another part's functions, which are
    written for a connection opened with defaults."""
    saved = conn.row_factory
    conn.row_factory = tuple_row  # type: ignore[assignment]
    try:
        yield
    finally:
        conn.row_factory = saved


def audit(conn: psycopg.Connection[Any], user: User, action: str, target: str,
          detail: dict[str, Any] | None = None) -> None:
    """One row per write, in the same transaction as the write it describes: who, from
    where (the user's source address), what."""
    audit_row(conn, user.name, user.role, user.source, action, target, detail)


def audit_row(conn: psycopg.Connection[Any], user_name: str, role: str, source: str,
              action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """An audit row for someone who is not (yet) a logged-in user: a login attempt."""
    conn.execute(
        "INSERT INTO web_audit (user_name, role, action, target, detail, source)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (user_name, role, action, target, Jsonb(jsonable(detail or {})), source),
    )


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Rows to JSON: times as UTC ISO strings, money and numeric as strings (never floats)."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return value
