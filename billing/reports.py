"""Read-only views for people: account list with risk grade and days of credit left.

The numbers come from the ledger and the charges themselves (no separate statistics to
drift); the grading and forecasting rules are billing.policy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.lifecycle import CommandState
from billing.money import from_fen
from billing.policy import RiskHistory, days_of_credit, risk_grade
from billing.tariffs import Tariff


@dataclass(frozen=True, slots=True)
class AccountSummary:
    account_id: str
    name: str
    tariff: str
    group: str | None
    balance: Decimal
    phase: str
    hold_reason: str | None
    awaiting_approval: bool
    meters: list[str]
    relay_wanted: list[str]
    relay_reported: list[str]
    customer_action_needed: bool
    risk_grade: str
    days_left: Decimal | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["balance"] = str(self.balance)
        d["days_left"] = None if self.days_left is None else str(self.days_left)
        return d


def hourly_cost(
    conn: psycopg.Connection[Any], account_id: str, zone: str, now: datetime, weeks: int = 4
) -> list[Decimal]:
    """The account's average cost per hour of the week (Monday 00:00 first), local time."""
    rows = conn.execute(
        """SELECT (extract(isodow FROM interval_start AT TIME ZONE %(z)s)::int - 1) * 24
                   + extract(hour FROM interval_start AT TIME ZONE %(z)s)::int AS how,
                  sum(exact)
           FROM billing_charges
           WHERE account_id = %(a)s AND interval_start >= %(since)s
           GROUP BY 1""",
        {"z": zone, "a": account_id, "since": now - timedelta(weeks=weeks)},
    ).fetchall()
    profile = [Decimal(0)] * 168
    for how, total in rows:
        profile[int(how)] = Decimal(total) / weeks
    return profile


def risk_history(
    conn: psycopg.Connection[Any], account_id: str, now: datetime
) -> RiskHistory:
    since = now - timedelta(days=365)
    row = conn.execute(
        """WITH l AS (
               SELECT kind, amount_fen, balance_after_fen, created_at,
                      balance_after_fen - amount_fen AS before_fen
               FROM billing_ledger WHERE account_id = %(a)s AND created_at >= %(since)s)
           SELECT
               count(*) FILTER (WHERE kind = 'topup' AND before_fen < 0),
               count(*) FILTER (WHERE before_fen >= 0 AND balance_after_fen < 0),
               count(DISTINCT created_at::date) FILTER (WHERE balance_after_fen < 0)
           FROM l""",
        {"a": account_id, "since": since},
    ).fetchone()
    cut = conn.execute(
        """SELECT count(*) FROM billing_commands WHERE account_id = %s AND action = 'relay_open'
           AND state = %s AND created_at >= %s""",
        (account_id, CommandState.VERIFIED, since),
    ).fetchone()
    assert row is not None and cut is not None
    return RiskHistory(late_topups=row[0], times_below_zero=row[1], disconnections=cut[0],
                       days_in_arrears=row[2])


def list_accounts(
    conn: psycopg.Connection[Any], tariffs: Mapping[str, Tariff], *,
    account_id: str | None = None, now: datetime | None = None,
) -> list[AccountSummary]:
    """Accounts with balance, phase, relays, risk grade and days of credit left."""
    now = now or datetime.now(UTC)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT a.*, array_agg(m.meter_id ORDER BY m.meter_id) AS meters,
                      array_agg(m.relay_wanted ORDER BY m.meter_id) AS wanted,
                      array_agg(m.relay_reported ORDER BY m.meter_id) AS reported,
                      bool_or(m.customer_action_needed) AS press
               FROM billing_accounts a JOIN billing_meters m ON m.account_id = a.account_id
               WHERE %(a)s::text IS NULL OR a.account_id = %(a)s
               GROUP BY a.account_id ORDER BY a.account_id""",
            {"a": account_id},
        ).fetchall()
    out = []
    for r in rows:
        tariff = tariffs.get(r["tariff_id"])
        zone = tariff.zone.key if tariff else "Asia/Shanghai"
        bal = from_fen(r["balance_fen"])
        profile = hourly_cost(conn, r["account_id"], zone, now)
        local_now = now.astimezone(tariff.zone) if tariff else now
        out.append(AccountSummary(
            account_id=r["account_id"], name=r["name"], tariff=r["tariff_id"],
            group=r["group_key"], balance=bal, phase=r["phase"], hold_reason=r["hold_reason"],
            awaiting_approval=r["awaiting_approval"], meters=r["meters"],
            relay_wanted=r["wanted"], relay_reported=r["reported"],
            customer_action_needed=bool(r["press"]),
            risk_grade=risk_grade(risk_history(conn, r["account_id"], now)),
            days_left=days_of_credit(bal, profile, local_now),
        ))
    return out
