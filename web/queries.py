"""What the fleet pages ask that spans parts or is the web's own choice: the chart
resolution for a range, a meter with billing's side of it, the live feed's first snapshot.

The answers come from the read models (:mod:`collector.read_model`,
:mod:`billing.read_model`); this module writes no SQL against their tables.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

from billing import read_model as billing_read
from collector import read_model as collector_read
from web import accounts

Row = dict[str, Any]

# History resolution picked from the requested range: a chart wants a few hundred points.
RESOLUTIONS: dict[str, timedelta | None] = {
    "raw": None,
    "1min": timedelta(minutes=1),
    "15min": timedelta(minutes=15),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
MAX_RAW_POINTS = 5000


def pick_resolution(span: timedelta) -> str:
    """The coarsest resolution that still draws the range in enough points."""
    if span <= timedelta(hours=2):
        return "raw"
    if span <= timedelta(hours=12):
        return "1min"
    if span <= timedelta(days=3):
        return "15min"
    if span <= timedelta(days=60):
        return "hour"
    return "day"


def true_relays(conn: psycopg.Connection[Any], meters: list[collector_read.Meter]) -> list[Row]:
    """Each meter with ``relay`` as it truly is: the newest state read from the meter (with
    a reading, or read back after a billing command), "none" for a meter without a relay,
    "unknown" when it was never read; never what billing merely wants."""
    billed = billing_read.reported_relays(conn, [m["meter"] for m in meters])
    out: list[Row] = []
    for m in meters:
        relay, at = m["relay"] if m["relay"] in ("open", "closed") else None, m["relay_at"]
        if m["meter"] in billed and (relay is None or at is None
                                     or billed[m["meter"]][1] > at):
            relay, at = billed[m["meter"]]
        if m["relay_capable"] is False:
            relay, at = "none", None
        out.append({**m, "relay": relay or "unknown", "relay_at": at})
    return out


def fleet_meters(conn: psycopg.Connection[Any], gateway: str | None, search: str | None,
                 limit: int, offset: int) -> tuple[list[Row], int]:
    """A page of meters (see collector_read.meters) with their true relay state."""
    rows, total = collector_read.meters(conn, gateway, search, limit, offset)
    return true_relays(conn, rows), total


def meter_detail(conn: psycopg.Connection[Any], meter_id: str) -> Row | None:
    """A meter with its true relay state and, when billing knows it, its account and
    billing's relay view (what it wants and read back) and its manual hold."""
    found = collector_read.meter(conn, meter_id)
    if found is None:
        return None
    meter = true_relays(conn, [found])[0]
    seen = billing_read.billing_meter(conn, meter_id)
    billing = None
    if seen is not None:
        holds = accounts.holds(conn, meters=[meter_id])
        billing = {"account": seen["account"], "relay_wanted": seen["relay_wanted"],
                   "relay_reported": seen["relay_reported"],
                   "customer_action_needed": seen["customer_action_needed"],
                   "hold": holds[0] if holds else None}
    return {**meter, "billing": billing}


def fleet_snapshot(conn: psycopg.Connection[Any], offline_after_s: float) -> Row:
    """What a fresh live subscriber needs before the changes start."""
    return {
        "gateways": collector_read.gateways(conn, offline_after_s),
        "open_reviews": collector_read.review_version(conn)[0],
    }
