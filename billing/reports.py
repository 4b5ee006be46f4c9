"""Read-only views for people: account list with risk grade and days of credit left.

The numbers come from the ledger and the charges themselves (no separate statistics to
drift); the grading and forecasting rules are billing.policy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from billing.money import from_fen
from billing.read_model import outlook
from billing.tariffs import Tariff

_DEFAULT_ZONE = ZoneInfo("Asia/Shanghai")  # an account whose tariff is not loaded


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
        bal = from_fen(r["balance_fen"])
        view = outlook(conn, r["account_id"], bal, tariff.zone if tariff else _DEFAULT_ZONE, now)
        out.append(AccountSummary(
            account_id=r["account_id"], name=r["name"], tariff=r["tariff_id"],
            group=r["group_key"], balance=bal, phase=r["phase"], hold_reason=r["hold_reason"],
            awaiting_approval=r["awaiting_approval"], meters=r["meters"],
            relay_wanted=r["wanted"], relay_reported=r["reported"],
            customer_action_needed=bool(r["press"]),
            risk_grade=view["risk"]["grade"], days_left=view["days_of_credit"],
        ))
    return out
