"""Relay capability: meters billing cannot switch remotely, and the site visit they need.

Whether a meter has a relay is data of its model or register map: its gateway reports it
(status ``capabilities``) and the collector's ``meter_field_contract`` view gives it to
billing as ``relay_capable`` (NULL while not reported). A prepaid account is either refused
on such a meter (:data:`REFUSE`) or flagged "needs a site visit to disconnect"
(:data:`FLAG`, ``billing_meters.no_relay``). Either way, billing never queues a relay command
a meter cannot execute: :func:`ask_site_visit` raises one ``site_visit`` alert instead, which
is also where reconciliation ends after its bounded attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import psycopg

from billing.errors import BillingError

RelaylessPolicy = Literal["refuse", "flag"]
REFUSE: RelaylessPolicy = "refuse"
FLAG: RelaylessPolicy = "flag"
RELAYLESS_POLICIES: tuple[RelaylessPolicy, ...] = (REFUSE, FLAG)


class RelaylessMeter(BillingError):
    """A prepaid account was asked for on a meter without a relay (and the setting refuses)."""


def without_relay(conn: psycopg.Connection[Any], meter_ids: Sequence[str]) -> list[str]:
    """Those of ``meter_ids`` that have no relay: reported so by their gateway, or put on
    their account flagged as such."""
    rows = conn.execute(
        """SELECT u.m FROM unnest(%s::text[]) AS u(m)
           WHERE EXISTS (SELECT 1 FROM meter_field_contract f
                         WHERE f.meter_id = u.m AND f.relay_capable = false)
              OR EXISTS (SELECT 1 FROM billing_meters bm
                         WHERE bm.meter_id = u.m AND bm.no_relay)
           ORDER BY u.m""",
        (list(meter_ids),),
    ).fetchall()
    return [r[0] for r in rows]


def admit(conn: psycopg.Connection[Any], account_id: str, meter_ids: Sequence[str],
          policy: RelaylessPolicy, now: datetime) -> list[str]:
    """Check a new prepaid account's meters (their rows just inserted, same transaction):
    raise :class:`RelaylessMeter` naming the relay-less ones, or flag them and ask for the
    site visit a cut-off would need. Returns the flagged meters."""
    if policy not in RELAYLESS_POLICIES:
        raise BillingError(f"relayless {policy!r} must be one of {', '.join(RELAYLESS_POLICIES)}")
    found = without_relay(conn, meter_ids)
    if found and policy == REFUSE:
        raise RelaylessMeter(
            f"meter{'s' if len(found) > 1 else ''} {', '.join(found)} of account "
            f"{account_id!r} {'have' if len(found) > 1 else 'has'} no relay, so a prepaid "
            "account could never cut supply off remotely; choose a meter with a relay, or "
            "open it flagged as needing a site visit to disconnect (relayless = flag)")
    for meter in found:
        conn.execute("UPDATE billing_meters SET no_relay = true WHERE meter_id = %s", (meter,))
        ask_site_visit(conn, meter, now, "has no relay: prepaid, but a cut-off needs a site "
                                         "visit to disconnect")
    return found


def ask_site_visit(conn: psycopg.Connection[Any], meter_id: str, now: datetime,
                   why: str) -> bool:
    """Ask a person to go to the meter: one ``site_visit`` alert naming it, raised once until
    the relay reads as wanted again (see :func:`clear_site_visits`). True when raised now."""
    row = conn.execute(
        """UPDATE billing_meters SET site_visit_since = %s, site_visit_reason = %s
           WHERE meter_id = %s AND site_visit_since IS NULL
           RETURNING account_id""",
        (now, why, meter_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute(
        """INSERT INTO billing_alerts (account_id, kind, balance_fen, message, meter_id)
           SELECT account_id, 'site_visit', balance_fen, %s, %s FROM billing_accounts
           WHERE account_id = %s""",
        (f"site visit needed at meter {meter_id}: {why}", meter_id, row[0]),
    )
    return True


def clear_site_visits(conn: psycopg.Connection[Any]) -> int:
    """Meters whose relay reads as wanted again start afresh: attempts counted from zero, no
    visit pending (a relay-less meter's visit stays until a person ends its account)."""
    return conn.execute(
        """UPDATE billing_meters SET reconcile_attempts = 0, site_visit_since = NULL,
               site_visit_reason = NULL
           WHERE relay_reported = relay_wanted AND NOT customer_action_needed AND NOT no_relay
             AND (reconcile_attempts > 0 OR site_visit_since IS NOT NULL)""",
    ).rowcount
