"""Read-only views over billing's tables for the page: accounts, ledger, alerts, commands.

Money goes out as decimal strings in yuan (``"12.34"``), never floats. Days of credit left
and the risk grade are computed with billing's own pure functions
(:func:`billing.policy.days_of_credit`, :func:`billing.policy.risk_grade`) from the account's
charges, ledger and commands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from billing.money import from_fen
from billing.policy import RiskHistory, days_of_credit, risk_grade, risk_score

Row = dict[str, Any]

FORECAST_WINDOW = timedelta(days=28)

_ACCOUNT = """
SELECT a.account_id AS account, a.name, a.tariff_id AS tariff, a.group_key AS "group",
       a.restore_mode, a.balance_fen, a.arrears_fen, a.phase, a.phase_since, a.hold_reason,
       a.awaiting_approval, a.created_at,
       coalesce((SELECT array_agg(bm.meter_id ORDER BY bm.meter_id) FROM billing_meters bm
                 WHERE bm.account_id = a.account_id), '{}') AS meters,
       (SELECT bool_or(bm.relay_wanted = 'open') FROM billing_meters bm
         WHERE bm.account_id = a.account_id) AS cut_off,
       (SELECT bool_or(bm.customer_action_needed) FROM billing_meters bm
         WHERE bm.account_id = a.account_id) AS customer_action_needed
FROM billing_accounts a
"""


def _money(row: Row) -> Row:
    row["balance"] = from_fen(row.pop("balance_fen"))
    row["arrears"] = from_fen(row.pop("arrears_fen"))
    return row


def accounts(conn: psycopg.Connection[Any], search: str | None, phase: str | None,
             limit: int, offset: int) -> tuple[list[Row], int]:
    where, params = ["true"], []
    if search:
        like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(a.account_id ILIKE %s OR a.name ILIKE %s OR EXISTS (SELECT 1 FROM"
                     " billing_meters bm WHERE bm.account_id = a.account_id"
                     " AND bm.meter_id ILIKE %s))")
        params += [like, like, like]
    if phase:
        where.append("a.phase = %s")
        params.append(phase)
    sql_where = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM billing_accounts a WHERE {sql_where}",
                         params).fetchone()
    rows = [_money(dict(r)) for r in conn.execute(
        f"{_ACCOUNT} WHERE {sql_where} ORDER BY a.balance_fen, a.account_id LIMIT %s OFFSET %s",
        [*params, limit, offset]).fetchall()]
    now = datetime.now(UTC)
    for r in rows:
        _attach_outlook(conn, r, now)
    return rows, int(total["n"]) if total else 0


def account(conn: psycopg.Connection[Any], account_id: str) -> Row | None:
    row = conn.execute(f"{_ACCOUNT} WHERE a.account_id = %s", (account_id,)).fetchone()
    if row is None:
        return None
    out = _money(dict(row))
    _attach_outlook(conn, out, datetime.now(UTC))
    out["alerts"] = alerts(conn, account_id, 20, 0)
    return out


def _attach_outlook(conn: psycopg.Connection[Any], row: Row, now: datetime) -> None:
    days = days_of_credit(row["balance"], hourly_cost(conn, row["account"], now), now)
    row["days_of_credit"] = days
    history = risk_history(conn, row["account"], now)
    row["risk"] = {"grade": risk_grade(history), "score": risk_score(history),
                   "late_topups": history.late_topups,
                   "times_below_zero": history.times_below_zero,
                   "disconnections": history.disconnections}


def hourly_cost(conn: psycopg.Connection[Any], account_id: str, now: datetime) -> list[Decimal]:
    """The account's typical cost for each hour of the week (UTC, Monday 00:00 first).

    With less than a week of charges every hour gets the average so far: a young account
    still gets a forecast instead of zeros for the hours it has not lived through."""
    since = now - FORECAST_WINDOW
    rows = conn.execute(
        """SELECT (extract(isodow FROM interval_start AT TIME ZONE 'UTC')::int - 1) * 24
                  + extract(hour FROM interval_start AT TIME ZONE 'UTC')::int AS how,
                  sum(exact) AS cost, min(interval_start) AS first
           FROM billing_charges WHERE account_id = %s AND interval_start >= %s
           GROUP BY 1""", (account_id, since)).fetchall()
    if not rows:
        return [Decimal(0)] * 168
    first = min(r["first"] for r in rows)
    total = sum((Decimal(r["cost"]) for r in rows), Decimal(0))
    lived = now - first
    if lived < timedelta(days=7):
        hours = max(Decimal(lived.total_seconds()) / 3600, Decimal(1))
        return [total / hours] * 168
    weeks = Decimal(min(lived, FORECAST_WINDOW).total_seconds()) / Decimal(7 * 86400)
    cost = [Decimal(0)] * 168
    for r in rows:
        cost[int(r["how"])] = Decimal(r["cost"]) / weeks
    return cost


def risk_history(conn: psycopg.Connection[Any], account_id: str, now: datetime) -> RiskHistory:
    """The last year of trouble: payments made while below zero, drops below zero, cut-offs."""
    since = now - timedelta(days=365)
    row = conn.execute(
        """WITH l AS (
               SELECT kind, amount_fen, balance_after_fen,
                      lag(balance_after_fen) OVER (ORDER BY entry_id) AS before_fen
               FROM billing_ledger WHERE account_id = %(a)s AND created_at >= %(since)s)
           SELECT count(*) FILTER (WHERE kind = 'topup'
                                     AND balance_after_fen - amount_fen < 0) AS late,
                  count(*) FILTER (WHERE balance_after_fen < 0
                                     AND coalesce(before_fen, 0) >= 0) AS below,
                  (SELECT count(*) FROM billing_commands c WHERE c.account_id = %(a)s
                     AND c.purpose = 'cutoff' AND c.state IN ('confirmed', 'verified')
                     AND c.created_at >= %(since)s) AS cuts
           FROM l""", {"a": account_id, "since": since}).fetchone()
    assert row is not None
    return RiskHistory(late_topups=int(row["late"]), times_below_zero=int(row["below"]),
                       disconnections=int(row["cuts"]))


def ledger(conn: psycopg.Connection[Any], account_id: str, limit: int,
           offset: int) -> list[Row]:
    rows = conn.execute(
        """SELECT entry_id AS id, kind, amount_fen, balance_after_fen, created_at,
                  meter_id AS meter, interval_start, channel, reference, actor
           FROM billing_ledger WHERE account_id = %s
           ORDER BY entry_id DESC LIMIT %s OFFSET %s""", (account_id, limit, offset)).fetchall()
    out = []
    for r in rows:
        item = dict(r)
        item["amount"] = from_fen(item.pop("amount_fen"))
        item["balance_after"] = from_fen(item.pop("balance_after_fen"))
        out.append(item)
    return out


def alerts(conn: psycopg.Connection[Any], account_id: str | None, limit: int,
           offset: int) -> list[Row]:
    where, params = "true", []
    if account_id:
        where, params = "account_id = %s", [account_id]
    rows = conn.execute(
        f"""SELECT alert_id AS id, account_id AS account, kind, threshold_fen, balance_fen,
                   message, created_at, published_at
            FROM billing_alerts WHERE {where}
            ORDER BY alert_id DESC LIMIT %s OFFSET %s""", [*params, limit, offset]).fetchall()
    out = []
    for r in rows:
        item = dict(r)
        fen = item.pop("threshold_fen")
        item["threshold"] = None if fen is None else from_fen(fen)
        item["balance"] = from_fen(item.pop("balance_fen"))
        out.append(item)
    return out


_COMMAND = """SELECT command_id AS id, account_id AS account, meter_id AS meter, action, purpose,
state, attempt, max_attempts, site, gateway, created_at, expires_at, sent_at, updated_at,
relay_reported, reason FROM billing_commands"""


def commands(conn: psycopg.Connection[Any], account_id: str | None, meter_id: str | None,
             state: str | None, limit: int, offset: int) -> tuple[list[Row], int]:
    where, params = ["true"], []
    for clause, value in (("account_id = %s", account_id), ("meter_id = %s", meter_id),
                          ("state = %s", state)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql_where = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM billing_commands WHERE {sql_where}",
                         params).fetchone()
    rows = [dict(r) for r in conn.execute(
        f"{_COMMAND} WHERE {sql_where} ORDER BY created_at DESC, command_id LIMIT %s OFFSET %s",
        [*params, limit, offset]).fetchall()]
    return rows, int(total["n"]) if total else 0


def command(conn: psycopg.Connection[Any], command_id: str) -> Row | None:
    row = conn.execute(f"{_COMMAND} WHERE command_id = %s", (command_id,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["audit"] = [dict(r) for r in conn.execute(
        "SELECT at, from_state, to_state, actor, detail FROM billing_command_audit"
        " WHERE command_id = %s ORDER BY audit_id", (command_id,)).fetchall()]
    return out
