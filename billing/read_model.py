"""What people (the web page, billing's own CLI) may ask of billing's tables: accounts with
their outlook, the billing side of a meter, manual holds, ledger lines, alerts, relay
commands and mass cut-off approvals. One function per question, typed rows; nobody outside
billing writes SQL against its tables.

Money comes out in yuan (``Decimal``), never fen. Days of credit left and the risk grade
follow billing.policy's rules (:func:`outlook`), so the page and ``meterhub billing
accounts`` agree. Every function takes any psycopg connection (it opens its own dict-row
cursor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, cast
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from billing.lifecycle import CommandState
from billing.money import from_fen
from billing.policy import RiskHistory, days_of_credit, risk_grade, risk_score
from billing.tariffs import Tariff, load_tariffs


class Risk(TypedDict):
    grade: str  # A (no trouble) to D (chronic)
    score: int
    late_topups: int
    times_below_zero: int
    disconnections: int
    days_in_arrears: int


class Outlook(TypedDict):
    days_of_credit: Decimal | None  # None: no consumption, no end in sight
    risk: Risk


class Account(Outlook):
    account: str
    name: str
    tariff: str
    group: str | None
    restore_mode: str
    balance: Decimal
    arrears: Decimal
    phase: str
    phase_since: datetime | None
    hold_reason: str | None
    awaiting_approval: bool
    created_at: datetime
    meters: list[str]
    cut_off: bool | None  # any of its meters wanted open
    customer_action_needed: bool | None
    # the supply as its meters' relays were last read: "off" only when every relay read
    # back open, "on" when every one read closed, else "unknown"
    supply: str
    site_visit_needed: bool | None  # a meter without a relay, or reconciliation gave up


class BillingMeter(TypedDict):
    account: str
    relay_wanted: str
    relay_reported: str | None
    customer_action_needed: bool
    balance: Decimal  # of its account


class ManualHold(TypedDict):
    meter_id: str
    account_id: str
    wanted: str
    by: str
    reason: str
    since: datetime
    until: datetime | None  # None: until an operator releases it
    command_id: str | None


class LedgerLine(TypedDict):
    id: int
    kind: str
    amount: Decimal
    balance_after: Decimal
    created_at: datetime
    meter: str | None
    interval_start: datetime | None
    channel: str | None
    reference: str | None
    actor: str | None


class Alert(TypedDict):
    id: int
    account: str
    kind: str
    threshold: Decimal | None
    balance: Decimal
    message: str
    created_at: datetime
    published_at: datetime | None


class Command(TypedDict):
    id: str
    account: str
    meter: str
    action: str
    purpose: str
    state: str
    attempt: int
    max_attempts: int
    site: str | None
    gateway: str | None
    created_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    relay_reported: str | None
    clock_drift_s: float | None  # time_sync: the meter's clock read back, minus gateway time
    reason: str | None


class CommandStep(TypedDict):
    at: datetime
    from_state: str | None
    to_state: str
    actor: str
    detail: str | None


class CommandDetail(Command):
    audit: list[CommandStep]


class Approval(TypedDict):
    group: str
    households: int
    requested_at: datetime
    approved_at: datetime | None
    approved_by: str | None
    valid_until: datetime | None
    accounts_waiting: int


def _fetch(conn: psycopg.Connection[Any], query: str,
           params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()  # type: ignore[arg-type]


def _total(conn: psycopg.Connection[Any], table: str, where: str, params: list[Any]) -> int:
    rows = _fetch(conn, f"SELECT count(*) AS n FROM {table} WHERE {where}", params)
    return int(rows[0]["n"]) if rows else 0


# ---------------------------------------------------------------------------- outlook


def hourly_cost(
    conn: psycopg.Connection[Any], account_id: str, zone: str, now: datetime, weeks: int = 4
) -> list[Decimal]:
    """The account's average cost per hour of the week (Monday 00:00 first), local time."""
    rows = _fetch(
        conn,
        """SELECT (extract(isodow FROM interval_start AT TIME ZONE %(z)s)::int - 1) * 24
                   + extract(hour FROM interval_start AT TIME ZONE %(z)s)::int AS how,
                  sum(exact) AS total
           FROM billing_charges
           WHERE account_id = %(a)s AND interval_start >= %(since)s
           GROUP BY 1""",
        {"z": zone, "a": account_id, "since": now - timedelta(weeks=weeks)},
    )
    profile = [Decimal(0)] * 168
    for r in rows:
        profile[int(r["how"])] = Decimal(r["total"]) / weeks
    return profile


def risk_history(conn: psycopg.Connection[Any], account_id: str, now: datetime) -> RiskHistory:
    """The account's last year, as billing.policy grades it."""
    since = now - timedelta(days=365)
    [row] = _fetch(
        conn,
        """WITH l AS (
               SELECT kind, amount_fen, balance_after_fen, created_at,
                      balance_after_fen - amount_fen AS before_fen
               FROM billing_ledger WHERE account_id = %(a)s AND created_at >= %(since)s)
           SELECT
               count(*) FILTER (WHERE kind = 'topup' AND before_fen < 0) AS late,
               count(*) FILTER (WHERE before_fen >= 0 AND balance_after_fen < 0) AS below,
               count(DISTINCT created_at::date) FILTER (WHERE balance_after_fen < 0) AS days
           FROM l""",
        {"a": account_id, "since": since},
    )
    [cut] = _fetch(
        conn,
        """SELECT count(*) AS n FROM billing_commands WHERE account_id = %s
           AND action = 'relay_open' AND state = %s AND created_at >= %s""",
        (account_id, CommandState.VERIFIED, since),
    )
    return RiskHistory(late_topups=row["late"], times_below_zero=row["below"],
                       disconnections=cut["n"], days_in_arrears=row["days"])


def outlook(conn: psycopg.Connection[Any], account_id: str, balance: Decimal, zone: ZoneInfo,
            now: datetime) -> Outlook:
    """Days of credit left (spending the account's own typical week in ``zone``) and its
    risk grade with the history behind it."""
    profile = hourly_cost(conn, account_id, zone.key, now)
    history = risk_history(conn, account_id, now)
    return {
        "days_of_credit": days_of_credit(balance, profile, now.astimezone(zone)),
        "risk": {"grade": risk_grade(history), "score": risk_score(history),
                 "late_topups": history.late_topups,
                 "times_below_zero": history.times_below_zero,
                 "disconnections": history.disconnections,
                 "days_in_arrears": history.days_in_arrears},
    }


# ---------------------------------------------------------------------------- accounts

_ACCOUNT = """
SELECT a.account_id AS account, a.name, a.tariff_id AS tariff, a.group_key AS "group",
       a.restore_mode, a.balance_fen, a.arrears_fen, a.phase, a.phase_since, a.hold_reason,
       a.awaiting_approval, a.created_at,
       coalesce((SELECT array_agg(bm.meter_id ORDER BY bm.meter_id) FROM billing_meters bm
                 WHERE bm.account_id = a.account_id), '{}') AS meters,
       (SELECT bool_or(bm.relay_wanted = 'open') FROM billing_meters bm
         WHERE bm.account_id = a.account_id) AS cut_off,
       (SELECT bool_or(bm.customer_action_needed) FROM billing_meters bm
         WHERE bm.account_id = a.account_id) AS customer_action_needed,
       (SELECT CASE WHEN bool_and(bm.relay_reported = 'open') THEN 'off'
                    WHEN bool_and(bm.relay_reported = 'closed') THEN 'on'
                    ELSE 'unknown' END
        FROM billing_meters bm WHERE bm.account_id = a.account_id) AS supply,
       (SELECT bool_or(bm.site_visit_since IS NOT NULL OR bm.no_relay) FROM billing_meters bm
         WHERE bm.account_id = a.account_id) AS site_visit_needed
FROM billing_accounts a
"""


def _accounts(conn: psycopg.Connection[Any], rows: list[dict[str, Any]], now: datetime | None,
              tariffs: Mapping[str, Tariff] | None) -> list[Account]:
    """Money in yuan and the outlook (in the tariff's zone; UTC for an unknown tariff)."""
    now = now or datetime.now(UTC)
    tariffs = load_tariffs() if tariffs is None else tariffs
    for r in rows:
        r["balance"] = from_fen(r.pop("balance_fen"))
        r["arrears"] = from_fen(r.pop("arrears_fen"))
        tariff = tariffs.get(r["tariff"])
        r.update(outlook(conn, r["account"], r["balance"],
                         tariff.zone if tariff else ZoneInfo("UTC"), now))
    return cast("list[Account]", rows)


def accounts(conn: psycopg.Connection[Any], search: str | None, phase: str | None,
             limit: int, offset: int, *, now: datetime | None = None,
             tariffs: Mapping[str, Tariff] | None = None) -> tuple[list[Account], int]:
    """A page of accounts, lowest balance first (id, name or one of its meters containing
    ``search``; in ``phase``), and the total count."""
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
    total = _total(conn, "billing_accounts a", sql_where, params)
    rows = _fetch(conn, f"{_ACCOUNT} WHERE {sql_where} ORDER BY a.balance_fen, a.account_id"
                  " LIMIT %s OFFSET %s", [*params, limit, offset])
    return _accounts(conn, rows, now, tariffs), total


def account(conn: psycopg.Connection[Any], account_id: str, *, now: datetime | None = None,
            tariffs: Mapping[str, Tariff] | None = None) -> Account | None:
    """One account with its outlook; None when there is no such account."""
    rows = _fetch(conn, f"{_ACCOUNT} WHERE a.account_id = %s", (account_id,))
    return _accounts(conn, rows, now, tariffs)[0] if rows else None


def account_exists(conn: psycopg.Connection[Any], account_id: str) -> bool:
    """Whether billing has this account (cheaper than :func:`account`)."""
    return bool(_fetch(conn, "SELECT 1 FROM billing_accounts WHERE account_id = %s",
                       (account_id,)))


def reported_relays(conn: psycopg.Connection[Any], meter_ids: list[str]
                    ) -> dict[str, tuple[str, datetime]]:
    """The relay state billing last read back (a verified command's ack, or a reading it
    absorbed) and when, for those of ``meter_ids`` where it was read at all."""
    rows = _fetch(conn, "SELECT meter_id, relay_reported, relay_reported_at FROM "
                        "billing_meters WHERE meter_id = ANY(%s) AND relay_reported IN "
                        "('open', 'closed') AND relay_reported_at IS NOT NULL", (meter_ids,))
    return {r["meter_id"]: (r["relay_reported"], r["relay_reported_at"]) for r in rows}


def billing_meter(conn: psycopg.Connection[Any], meter_id: str) -> BillingMeter | None:
    """Billing's side of a meter: its account, the relay state billing wants and read back
    (which readings may not carry), and its account's balance; None when the meter belongs
    to no account."""
    rows = _fetch(
        conn,
        """SELECT bm.account_id AS account, bm.relay_wanted, bm.relay_reported,
                  bm.customer_action_needed, a.balance_fen
           FROM billing_meters bm JOIN billing_accounts a USING (account_id)
           WHERE bm.meter_id = %s""", (meter_id,))
    if not rows:
        return None
    rows[0]["balance"] = from_fen(rows[0].pop("balance_fen"))
    return cast(BillingMeter, rows[0])


def manual_holds(conn: psycopg.Connection[Any], accounts: Sequence[str] | None = None,
                 meters: Sequence[str] | None = None) -> list[ManualHold]:
    """Operators' active manual holds (see billing.manual): what the relay is held at, by
    whom, why, since and until when; of these accounts and these meters when given."""
    return cast("list[ManualHold]", _fetch(
        conn,
        """SELECT meter_id, account_id, manual_hold AS wanted, manual_hold_by AS by,
                  manual_hold_reason AS reason, manual_hold_since AS since,
                  manual_hold_until AS until, manual_hold_command AS command_id
           FROM billing_meters WHERE manual_hold IS NOT NULL
             AND (%(acc)s::text[] IS NULL OR account_id = ANY(%(acc)s::text[]))
             AND (%(met)s::text[] IS NULL OR meter_id = ANY(%(met)s::text[]))
           ORDER BY meter_id""",
        {"acc": None if accounts is None else list(accounts),
         "met": None if meters is None else list(meters)}))


# ---------------------------------------------------------------------------- ledger, alerts


def ledger_lines(conn: psycopg.Connection[Any], account_id: str, limit: int,
                 offset: int) -> list[LedgerLine]:
    """A page of an account's ledger, newest first."""
    rows = _fetch(
        conn,
        """SELECT entry_id AS id, kind, amount_fen, balance_after_fen, created_at,
                  meter_id AS meter, interval_start, channel, reference, actor
           FROM billing_ledger WHERE account_id = %s
           ORDER BY entry_id DESC LIMIT %s OFFSET %s""", (account_id, limit, offset))
    for r in rows:
        r["amount"] = from_fen(r.pop("amount_fen"))
        r["balance_after"] = from_fen(r.pop("balance_after_fen"))
    return cast("list[LedgerLine]", rows)


def alerts(conn: psycopg.Connection[Any], account_id: str | None, limit: int,
           offset: int) -> list[Alert]:
    """A page of low-balance alerts (of one account when given), newest first."""
    where, params = "true", []
    if account_id:
        where, params = "account_id = %s", [account_id]
    rows = _fetch(
        conn,
        f"""SELECT alert_id AS id, account_id AS account, kind, threshold_fen, balance_fen,
                   message, created_at, published_at
            FROM billing_alerts WHERE {where}
            ORDER BY alert_id DESC LIMIT %s OFFSET %s""", [*params, limit, offset])
    for r in rows:
        fen = r.pop("threshold_fen")
        r["threshold"] = None if fen is None else from_fen(fen)
        r["balance"] = from_fen(r.pop("balance_fen"))
    return cast("list[Alert]", rows)


# ---------------------------------------------------------------------------- commands

_COMMAND = """SELECT command_id AS id, account_id AS account, meter_id AS meter, action, purpose,
state, attempt, max_attempts, site, gateway, created_at, expires_at, sent_at, updated_at,
relay_reported, clock_drift_s, reason FROM billing_commands"""


def commands(conn: psycopg.Connection[Any], account_id: str | None, meter_id: str | None,
             state: str | None, limit: int, offset: int) -> tuple[list[Command], int]:
    """A page of relay commands (newest first; each filter applies when given) and the
    total count."""
    where, params = ["true"], []
    for clause, value in (("account_id = %s", account_id), ("meter_id = %s", meter_id),
                          ("state = %s", state)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql_where = " AND ".join(where)
    total = _total(conn, "billing_commands", sql_where, params)
    rows = _fetch(conn, f"{_COMMAND} WHERE {sql_where} ORDER BY created_at DESC, command_id"
                  " LIMIT %s OFFSET %s", [*params, limit, offset])
    return cast("list[Command]", rows), total


def command(conn: psycopg.Connection[Any], command_id: str) -> CommandDetail | None:
    """One relay command with its audit trail (every state change, who, why)."""
    rows = _fetch(conn, f"{_COMMAND} WHERE command_id = %s", (command_id,))
    audit = _fetch(conn, "SELECT at, from_state, to_state, actor, detail"
                   " FROM billing_command_audit WHERE command_id = %s ORDER BY audit_id",
                   (command_id,)) if rows else []
    return cast(CommandDetail, {**rows[0], "audit": audit}) if rows else None


def approvals(conn: psycopg.Connection[Any], waiting_only: bool) -> list[Approval]:
    """Mass cut-offs of a building / transformer that wait for (or got) a person's yes,
    newest first; only those still waiting (or whose yes expired) when ``waiting_only``."""
    return cast("list[Approval]", _fetch(
        conn,
        f"""SELECT group_key AS "group", households, requested_at, approved_at, approved_by,
                   valid_until,
                   (SELECT count(*) FROM billing_accounts a WHERE a.group_key = p.group_key
                      AND a.awaiting_approval) AS accounts_waiting
            FROM billing_cutoff_approvals p
            {"WHERE approved_at IS NULL OR valid_until < now()" if waiting_only else ""}
            ORDER BY requested_at DESC LIMIT 200"""))
