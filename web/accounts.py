"""Read-only views over billing's tables for the page: accounts, ledger, alerts, commands.

Money goes out as decimal strings in yuan (``"12.34"``), never floats. Days of credit left
and the risk grade come from billing's own rules (``billing.reports`` gathers the history,
``billing.policy`` grades and forecasts), so the page and ``meterhub billing accounts`` agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from billing import reports
from billing.money import from_fen
from billing.policy import days_of_credit, risk_grade, risk_score
from billing.tariffs import load_tariffs
from web import database

Row = dict[str, Any]

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
    _attach_holds(conn, rows)
    return rows, int(total["n"]) if total else 0


def account(conn: psycopg.Connection[Any], account_id: str) -> Row | None:
    row = conn.execute(f"{_ACCOUNT} WHERE a.account_id = %s", (account_id,)).fetchone()
    if row is None:
        return None
    out = _money(dict(row))
    _attach_outlook(conn, out, datetime.now(UTC))
    _attach_holds(conn, [out])
    out["alerts"] = alerts(conn, account_id, 20, 0)
    return out


def manual_holds(conn: psycopg.Connection[Any], *, meters: list[str] | None = None,
                 accounts: list[str] | None = None) -> list[Row]:
    """Operators' active manual holds (billing.manual_relay) on these meters or on the meters
    of these accounts: what the relay is held at, until when (null: until released), by whom
    and why. Empty when billing's hold columns are not migrated yet (billing 0005)."""
    if not database.table_exists(conn, "billing_manual_hold_audit"):
        return []
    return [dict(r) for r in conn.execute(
        """SELECT meter_id AS meter, account_id AS account, manual_hold AS wanted,
                  manual_hold_until AS until, manual_hold_by AS by, manual_hold_reason AS reason,
                  manual_hold_since AS since, manual_hold_command AS command
           FROM billing_meters
           WHERE manual_hold IS NOT NULL
             AND (meter_id = ANY(%(meters)s::text[]) OR account_id = ANY(%(accounts)s::text[]))
           ORDER BY meter_id""",
        {"meters": meters or [], "accounts": accounts or []}).fetchall()]


def _attach_holds(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    """Each account's active manual holds, next to its ``cut_off`` (the relay state)."""
    by_account: dict[str, list[Row]] = {r["account"]: [] for r in rows}
    if by_account:
        for hold in manual_holds(conn, accounts=list(by_account)):
            by_account[hold["account"]].append(hold)
    for r in rows:
        r["holds"] = by_account[r["account"]]


def _attach_outlook(conn: psycopg.Connection[Any], row: Row, now: datetime) -> None:
    """Days of credit and risk grade exactly as billing computes them for its own CLI."""
    tariff = load_tariffs().get(row["tariff"])
    zone = tariff.zone if tariff else UTC
    with database.tuple_rows(conn):
        profile = reports.hourly_cost(conn, row["account"], str(zone), now)
        history = reports.risk_history(conn, row["account"], now)
    row["days_of_credit"] = days_of_credit(row["balance"], profile, now.astimezone(zone))
    row["risk"] = {"grade": risk_grade(history), "score": risk_score(history),
                   "late_topups": history.late_topups,
                   "times_below_zero": history.times_below_zero,
                   "disconnections": history.disconnections,
                   "days_in_arrears": history.days_in_arrears}


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


def approvals(conn: psycopg.Connection[Any], waiting_only: bool) -> list[Row]:
    rows = conn.execute(
        f"""SELECT group_key AS "group", households, requested_at, approved_at, approved_by,
                   valid_until,
                   (SELECT count(*) FROM billing_accounts a WHERE a.group_key = p.group_key
                      AND a.awaiting_approval) AS accounts_waiting
            FROM billing_cutoff_approvals p
            {"WHERE approved_at IS NULL OR valid_until < now()" if waiting_only else ""}
            ORDER BY requested_at DESC LIMIT 200""").fetchall()
    return [dict(r) for r in rows]
