"""Alerts kept in the database for the web page, handed to billing.commands for MQTT.

Claiming marks an alert published before it is sent (SKIP LOCKED: engines share the work);
a failed publish un-claims it, so each alert goes out once in the normal case and at least
once across broker trouble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from billing.money import from_fen


@dataclass(frozen=True, slots=True)
class OutgoingAlert:
    alert_id: int
    site: str
    meter: str | None
    kind: str
    message: str
    data: dict[str, Any]


def claim_unpublished(
    conn: psycopg.Connection[Any], default_site: str, limit: int = 200
) -> list[OutgoingAlert]:
    rows = conn.execute(
        """WITH claimed AS (
               UPDATE billing_alerts SET published_at = now()
               WHERE alert_id IN (SELECT alert_id FROM billing_alerts
                                  WHERE published_at IS NULL ORDER BY alert_id
                                  LIMIT %s FOR UPDATE SKIP LOCKED)
               RETURNING *)
           SELECT c.alert_id, c.account_id, c.kind, c.message, c.balance_fen, c.threshold_fen,
                  m.meter_id, m.site
           FROM claimed c
           LEFT JOIN LATERAL (
               SELECT bm.meter_id, mt.site FROM billing_meters bm
               LEFT JOIN meter_contract mt ON mt.meter_id = bm.meter_id
               WHERE bm.account_id = c.account_id
               ORDER BY bm.meter_id IS NOT DISTINCT FROM c.meter_id DESC, mt.site IS NULL,
                        bm.meter_id
               LIMIT 1) m ON true
           ORDER BY c.alert_id""",
        (limit,),
    ).fetchall()
    return [
        OutgoingAlert(
            alert_id=r[0], site=r[7] or default_site, meter=r[6], kind=r[2], message=r[3],
            data={"account": r[1], "balance": str(from_fen(r[4])),
                  **({"threshold": str(from_fen(r[5]))} if r[5] is not None else {})},
        )
        for r in rows
    ]


def unclaim(conn: psycopg.Connection[Any], alert_id: int) -> None:
    conn.execute("UPDATE billing_alerts SET published_at = NULL WHERE alert_id = %s",
                 (alert_id,))


def recent(
    conn: psycopg.Connection[Any], account_id: str | None = None, limit: int = 50
) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT alert_id, account_id, kind, message, balance_fen, created_at, published_at
           FROM billing_alerts WHERE %(a)s::text IS NULL OR account_id = %(a)s
           ORDER BY alert_id DESC LIMIT %(n)s""",
        {"a": account_id, "n": limit},
    ).fetchall()
