"""Accounts as the page shows them: billing's read model plus each account's manual holds
(and, for one account, its newest alerts), holds named the API's way.

Money goes out as decimal strings in yuan (``"12.34"``), never floats; days of credit left
and the risk grade are billing's own (:func:`billing.read_model.outlook`), so the page and
``meterhub billing accounts`` agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from billing import read_model as billing_read

Row = dict[str, Any]


def holds(conn: psycopg.Connection[Any], *, meters: Sequence[str] | None = None,
          accounts: Sequence[str] | None = None) -> list[Row]:
    """Active manual holds on these meters or of these accounts, as the API names them:
    what the relay is held at, until when (null: until released), by whom and why."""
    return [{"meter": h["meter_id"], "account": h["account_id"], "wanted": h["wanted"],
             "until": h["until"], "by": h["by"], "reason": h["reason"], "since": h["since"],
             "command": h["command_id"]}
            for h in billing_read.manual_holds(conn, accounts=accounts, meters=meters)]


def accounts(conn: psycopg.Connection[Any], search: str | None, phase: str | None,
             limit: int, offset: int) -> tuple[list[Row], int]:
    """A page of accounts, each with its holds, and the total count."""
    rows, total = billing_read.accounts(conn, search, phase, limit, offset)
    return _with_holds(conn, [dict(r) for r in rows]), total


def account(conn: psycopg.Connection[Any], account_id: str) -> Row | None:
    """One account with its holds and newest 20 alerts."""
    row = billing_read.account(conn, account_id)
    if row is None:
        return None
    [out] = _with_holds(conn, [dict(row)])
    out["alerts"] = billing_read.alerts(conn, account_id, 20, 0)
    return out


def _with_holds(conn: psycopg.Connection[Any], rows: list[Row]) -> list[Row]:
    """Each account's active manual holds, next to its ``cut_off`` (the relay state)."""
    by_account: dict[str, list[Row]] = {r["account"]: [] for r in rows}
    if by_account:
        for hold in holds(conn, accounts=list(by_account)):
            by_account[hold["account"]].append(hold)
    for r in rows:
        r["holds"] = by_account[r["account"]]
    return rows
