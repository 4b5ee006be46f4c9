"""Meter ownership (issue 11): a meter belongs to one gateway, and only that gateway's
readings of it are stored.

The gateway of a reading is the one of its MQTT topic (the broker's ACL lets a gateway publish
only there; :mod:`collector.parse` refuses a payload naming another). Ingest never re-homes a
meter: a reading from another gateway is dead-lettered ("meter X belongs to gateway Y") and
raises an ``ownership_violation`` event. An unknown meter is registered to the sending gateway
only while that gateway is commissioning (``gateways.commissioning_until``) or when the
collector commissions unknown meters (``CollectorConfig.commission_unknown_meters``, the
demo); otherwise it waits in ``pending_meters`` until an operator approves or rejects it.
An operator moves a meter with :func:`move`. Every assignment is audited in
``meter_ownership_audit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from collector import columns
from collector.parse import DeadLetter
from collector.store import Batch
from meterhub import wire


class OwnershipError(ValueError):
    """An operator's ownership request that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Readings of ``meter`` sent by ``gateway`` in one batch."""

    meter: str
    gateway: str
    site: str
    first: datetime
    last: datetime
    readings: int


_REGISTER = """
INSERT INTO meters AS m (meter_id, gateway, site, first_seen, last_seen)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
ON CONFLICT (meter_id) DO UPDATE SET gateway = excluded.gateway, site = excluded.site
WHERE m.gateway IS NULL
RETURNING meter_id, gateway
"""

_PENDING = """
INSERT INTO pending_meters AS p (meter_id, gateway, site, first_seen, last_seen, readings)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                     %s::bigint[])
ON CONFLICT (meter_id, gateway) DO UPDATE SET
    site = excluded.site, first_seen = least(p.first_seen, excluded.first_seen),
    last_seen = greatest(p.last_seen, excluded.last_seen), readings = p.readings + excluded.readings
RETURNING meter_id, gateway, status
"""

_AUDIT = ("INSERT INTO meter_ownership_audit (meter_id, action, from_gateway, to_gateway, by,"
          " comment) VALUES (%s, %s, %s, %s, %s, %s)")


def claims(batch: Batch) -> list[Claim]:
    """Each (meter, gateway) pair of the batch's good readings."""
    sites = {b.gateway: b.site for b in batch.batches}
    return [Claim(s.meter, s.gateway, sites.get(s.gateway, ""), s.first, s.last, s.rows)
            for s in columns.spans(batch.cols, [b.gateway for b in batch.batches])]


async def sort(conn: psycopg.AsyncConnection, batch: Batch, now: datetime, *,
               commission_unknown: bool, known_only: bool) -> None:
    """Keep in ``batch`` only readings from their meter's gateway; the rest become dead
    letters (``not_owner``, ``pending_meter``, ``unknown_meter``). Registers unknown meters of
    commissioning gateways and records pending ones, in its own transaction (harmless when
    the batch is written again: both are upserts)."""
    found = claims(batch)
    if not found:
        return
    meters = sorted({c.meter for c in found})
    refused: dict[tuple[str, str], tuple[str, str]] = {}
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT meter_id, gateway FROM meters WHERE meter_id = ANY(%s)", (meters,))
        owner: dict[str, str | None] = {m: g for m, g in await cur.fetchall()}
        homeless = [c for c in found if owner.get(c.meter, "") is None
                    or (c.meter not in owner and not known_only)]
        if homeless:
            await _register(conn, homeless, owner, now, commission_unknown)
        pending = [c for c in homeless if owner.get(c.meter) is None]
        status = await _pend(conn, pending) if pending else {}
        violations = []
        for c in found:
            have = owner.get(c.meter)
            if have == c.gateway:
                continue
            if have is None and (c.meter, c.gateway) in status:
                word = ("was rejected by an operator" if status[(c.meter, c.gateway)]
                        == "rejected" else "waits for an operator's approval")
                refused[(c.meter, c.gateway)] = (
                    "pending_meter",
                    f"meter {c.meter!r} is not registered; its claim by gateway "
                    f"{c.gateway!r} {word} (meterhub collector pending)")
            elif have is None:
                refused[(c.meter, c.gateway)] = (
                    "unknown_meter",
                    f"unknown meter {c.meter!r}: not registered in meters (known_meters_only)")
            else:
                refused[(c.meter, c.gateway)] = (
                    "not_owner", f"meter {c.meter} belongs to gateway {have}")
                violations.append((c, have))
        if violations:
            await _violations(conn, violations, now)
    if refused:
        _drop(batch, refused)


async def _register(conn: psycopg.AsyncConnection, homeless: list[Claim],
                    owner: dict[str, str | None], now: datetime, commission_all: bool) -> None:
    """Give each meter without a gateway to the first claiming gateway that is commissioning."""
    if commission_all:
        open_gateways = {c.gateway for c in homeless}
    else:
        cur = await conn.execute(
            "SELECT gateway FROM gateways WHERE gateway = ANY(%s) AND commissioning_until > %s",
            (sorted({c.gateway for c in homeless}), now))
        open_gateways = {g for (g,) in await cur.fetchall()}
    chosen: dict[str, Claim] = {}
    for c in homeless:
        if c.gateway in open_gateways:
            chosen.setdefault(c.meter, c)
    if not chosen:
        return
    picks = list(chosen.values())
    cur = await conn.execute(_REGISTER, (
        [c.meter for c in picks], [c.gateway for c in picks], [c.site for c in picks],
        [c.first for c in picks], [c.last for c in picks]))
    registered = await cur.fetchall()
    async with conn.cursor() as cur2:
        await cur2.executemany(_AUDIT, [(m, "commissioned", None, g, "collector",
                                      "first reading while the gateway was commissioning")
                                     for m, g in registered])
    if registered:
        await conn.execute("DELETE FROM pending_meters WHERE meter_id = ANY(%s)",
                           ([m for m, _ in registered],))
    cur = await conn.execute("SELECT meter_id, gateway FROM meters WHERE meter_id = ANY(%s)",
                             (sorted(chosen),))
    owner.update({m: g for m, g in await cur.fetchall()})


async def _pend(conn: psycopg.AsyncConnection, pending: list[Claim]
                ) -> dict[tuple[str, str], str]:
    cur = await conn.execute(_PENDING, (
        [c.meter for c in pending], [c.gateway for c in pending], [c.site for c in pending],
        [c.first for c in pending], [c.last for c in pending], [c.readings for c in pending]))
    return {(m, g): s for m, g, s in await cur.fetchall()}


async def _violations(conn: psycopg.AsyncConnection, found: list[tuple[Claim, str]],
                      now: datetime) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO gateway_events (gateway, site, source, kind, meter_id, at, detail, data)"
            " VALUES (%s, %s, 'collector', 'ownership_violation', %s, %s, %s, %s)",
            [(c.gateway, c.site, c.meter, now,
              f"gateway {c.gateway} sent {c.readings} reading(s) of meter {c.meter}, which "
              f"belongs to gateway {owner}: not stored",
              Jsonb({"owner": owner, "readings": c.readings})) for c, owner in found])


def _drop(batch: Batch, refused: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Take the refused (meter, gateway) readings out of the batch as dead letters (their
    meter and time as JSON lines: what was refused, not a replayable message), and the relay
    states they carried with them."""
    sites = {b.gateway: b.site for b in batch.batches}
    cols = batch.cols
    meters = cols.meters
    gateways = [batch.batches[o].gateway for o in cols.origins.tolist()]
    mask = [(m, g) not in refused for m, g in zip(meters, gateways, strict=True)]
    out: dict[tuple[str, str], list[str]] = {}
    for ok, meter, gateway, t in zip(mask, meters, gateways, cols.micros.tolist(), strict=True):
        if not ok:
            out.setdefault((meter, gateway), []).append(json.dumps(
                {"meter": meter, "taken_at": wire.utc_iso(columns.from_micros(t))}) + "\n")
    for (meter, gateway), lines in out.items():
        code, reason = refused[(meter, gateway)]
        batch.dead.append(DeadLetter(
            wire.topic(sites.get(gateway, "+"), gateway, "readings"), "".join(lines).encode(),
            f"{reason}; payload: the refused readings' meter and time", gateway, code,
            whole_message=False))
        batch.readings -= len(lines)
    batch.cols = cols.keep(np.array(mask, dtype=bool))
    # a relay state is believed from the meter's own gateway only
    batch.relays = [r for r in batch.relays if (r.meter, r.gateway) not in refused]


# ---------------------------------------------------------------- operator actions (sync)


def commission(conn: psycopg.Connection[Any], gateway: str, minutes: float,
               now: datetime) -> datetime | None:
    """Open (minutes > 0) or close (0) the gateway's commissioning window; returns its end."""
    until = now + timedelta(minutes=minutes) if minutes > 0 else None
    conn.execute(
        "INSERT INTO gateways AS g (gateway, commissioning_until) VALUES (%s, %s)"
        " ON CONFLICT (gateway) DO UPDATE SET commissioning_until = excluded.commissioning_until",
        (gateway, until))
    return until


def _audit(conn: psycopg.Connection[Any], meter: str, action: str, old: str | None,
           new: str | None, by: str, comment: str) -> None:
    if not by.strip():
        raise OwnershipError("say who decides (--by NAME): ownership changes are audited")
    conn.execute(_AUDIT, (meter, action, old, new, by, comment))


def approve(conn: psycopg.Connection[Any], meter: str, gateway: str, by: str,
            comment: str = "") -> None:
    """Register a pending meter to the gateway that claimed it."""
    with conn.transaction():
        row = conn.execute("SELECT site FROM pending_meters WHERE meter_id = %s AND gateway = %s"
                           " FOR UPDATE", (meter, gateway)).fetchone()
        if row is None:
            raise OwnershipError(f"no pending claim of meter {meter!r} by gateway {gateway!r}")
        current = conn.execute("SELECT gateway FROM meters WHERE meter_id = %s",
                               (meter,)).fetchone()
        if current is not None and current[0] is not None:
            raise OwnershipError(f"meter {meter!r} already belongs to gateway {current[0]!r}; "
                                 "use `meters move`")
        conn.execute(
            "INSERT INTO meters (meter_id, gateway, site) VALUES (%s, %s, %s) ON CONFLICT"
            " (meter_id) DO UPDATE SET gateway = excluded.gateway, site = excluded.site",
            (meter, gateway, row[0]))
        conn.execute("DELETE FROM pending_meters WHERE meter_id = %s", (meter,))
        _audit(conn, meter, "approved", None, gateway, by, comment)


def reject(conn: psycopg.Connection[Any], meter: str, gateway: str, by: str,
           comment: str = "") -> None:
    """Refuse a gateway's claim of a meter; its readings stay dead-lettered."""
    with conn.transaction():
        done = conn.execute(
            "UPDATE pending_meters SET status = 'rejected', decided_by = %s, decided_at = now()"
            " WHERE meter_id = %s AND gateway = %s", (by, meter, gateway)).rowcount
        if not done:
            raise OwnershipError(f"no pending claim of meter {meter!r} by gateway {gateway!r}")
        _audit(conn, meter, "rejected", None, gateway, by, comment)


def move(conn: psycopg.Connection[Any], meter: str, to: str, by: str, comment: str = "") -> str:
    """An operator moves a registered meter to another gateway; returns the old one."""
    with conn.transaction():
        row = conn.execute("SELECT gateway FROM meters WHERE meter_id = %s FOR UPDATE",
                           (meter,)).fetchone()
        if row is None:
            raise OwnershipError(f"meter {meter!r} is not registered")
        site = conn.execute("SELECT site FROM gateways WHERE gateway = %s", (to,)).fetchone()
        conn.execute("UPDATE meters SET gateway = %s, site = coalesce(%s, site)"
                     " WHERE meter_id = %s", (to, site[0] if site else None, meter))
        conn.execute("DELETE FROM pending_meters WHERE meter_id = %s", (meter,))
        _audit(conn, meter, "moved", row[0], to, by, comment)
    return str(row[0])
