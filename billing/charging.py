"""Charging validated intervals: per meter from the collector's change queue, exactly once,
resumable.

A batch locks a set of accounts (``FOR UPDATE SKIP LOCKED``: several billing processes
split the accounts between them) and their meters' rows of ``interval_changes`` (the span of
interval starts each meter had written since billing last took it; collector migration
0060), reads the intervals in those spans, prices them, appends the ledger entries, records
the charged kWh per interval, moves the cached balance and the carry, and deletes the queue
rows it consumed (or moves a row's start past what it charged), all in one transaction. A
restart finds the rows still there; a crash mid-batch leaves nothing half done.

Held intervals are skipped (their release is an update, which puts them on the queue
again). An interval already charged that comes back with other kWh (an actual replacing an
estimate, a review decision) is charged the difference as an adjustment; the same kWh again
(a re-delivery, or an interval of the span that did not change) is nothing.

Why nothing is lost or charged twice: a writer of ``intervals`` puts its span on the queue
in its own transaction (statement triggers), so billing sees a queue row only once the
intervals under it are committed. Billing locks the rows it takes and skips rows a writer
holds; a writer that comes to a row billing holds waits for billing's commit and then
inserts or widens the row, so its intervals are read in a later batch. What was charged is
kept per interval (``billing_charges``), so reading an interval again costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from billing.money import post_charge
from billing.tariffs import Tariff, TariffError
from meterhub import copytext

_CHUNK = 2000  # ledger rows per COPY write while pricing goes on
_AFTER = timedelta(microseconds=1)  # a span's new start, just past the last interval charged


@dataclass(slots=True)
class ChargeStats:
    intervals: int = 0  # first charges
    adjustments: int = 0  # differences for replaced values
    unchanged: int = 0  # re-deliveries with the same kWh
    skipped: int = 0  # held, or before the account's start
    unbilled: int = 0  # could not be priced: kept in billing_unbilled with the reason
    spans: int = 0  # queue rows taken (consumed or shortened)
    accounts: int = 0
    last_account: str | None = None  # of this batch (not summed): where the next starts

    def add(self, other: ChargeStats) -> None:
        for f in ("intervals", "adjustments", "unchanged", "skipped", "unbilled", "spans",
                  "accounts"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def work(self) -> int:
        return (self.intervals + self.adjustments + self.unchanged + self.skipped
                + self.unbilled + self.spans)


# Accounts with queued interval changes, in account order after the previous batch's last
# one (keyset: each batch starts where the last stopped instead of walking past the accounts
# already done; charge_all wraps around once at the end).
_PICK = """
SELECT a.account_id, a.tariff_id, a.balance_fen, a.carry
FROM billing_accounts a
WHERE {after} EXISTS (
    SELECT 1 FROM billing_meters m
    JOIN meter_contract mc ON mc.meter_id = m.meter_id
    JOIN interval_changes q ON q.meter = mc.meter_key
    WHERE m.account_id = a.account_id)
ORDER BY a.account_id
LIMIT %(n)s
FOR UPDATE OF a SKIP LOCKED
"""
_PICK_FIRST = _PICK.format(after="")
_PICK_AFTER = _PICK.format(after="a.account_id > %(after)s AND")

# The locked accounts' queue rows. SKIP LOCKED: a row a writer holds (its transaction not
# committed yet) waits for a later batch; billing never waits for a writer.
_TAKE = """
SELECT q.meter, q.lo, q.hi
FROM interval_changes q
JOIN meter_contract mc ON mc.meter_key = q.meter
JOIN billing_meters m ON m.meter_id = mc.meter_id
WHERE m.account_id = ANY(%(acc)s)
ORDER BY q.meter
FOR UPDATE OF q SKIP LOCKED
"""

# Per meter, the intervals of its span by the primary key (LATERAL), so a batch reads its
# own meters' changed intervals rather than scanning the whole table. kwh_e4 is counts of
# 0.0001 kWh: times 0.0001 it is the exact numeric(16,4) kWh.
_ROWS = """
SELECT m.account_id, m.meter_id, i.interval_start,
       i.interval_start + make_interval(secs => i.seconds), i.kwh_e4 * 0.0001,
       i.held OR i.interval_start < m.charge_from, c.kwh, c.revision, q.meter
FROM unnest(%(meters)s::int[], %(lo)s::timestamptz[], %(hi)s::timestamptz[]) AS q(meter, lo, hi)
JOIN meter_contract mc ON mc.meter_key = q.meter
JOIN billing_meters m ON m.meter_id = mc.meter_id
CROSS JOIN LATERAL (
    SELECT i.interval_start, i.seconds, i.kwh_e4, i.held
    FROM intervals i
    WHERE i.meter = q.meter AND i.interval_start BETWEEN q.lo AND q.hi
    ORDER BY i.interval_start LIMIT %(rows)s) i
LEFT JOIN billing_charges c ON c.meter_id = m.meter_id AND c.interval_start = i.interval_start
ORDER BY m.meter_id, i.interval_start
LIMIT %(rows)s
"""


def charge_batch(
    conn: psycopg.Connection[Any],
    tariffs: Mapping[str, Tariff],
    *,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    after: str | None = None,
) -> ChargeStats:
    """Charge one batch of accounts; returns what was done (``work == 0``: nothing left).
    ``after``: only accounts ordered after this id (``last_account`` of the previous batch).
    """
    stats = ChargeStats()
    with conn.transaction():
        accounts = conn.execute(_PICK_FIRST if after is None else _PICK_AFTER,
                                {"n": max_accounts, "after": after}).fetchall()
        if not accounts:
            return stats
        stats.accounts = len(accounts)
        stats.last_account = accounts[-1][0]
        acc_ids = [a[0] for a in accounts]
        state: dict[str, list[Any]] = {a[0]: [a[1], a[2], a[3]] for a in accounts}
        spans = conn.execute(_TAKE, {"acc": acc_ids}).fetchall()
        if not spans:
            return stats
        stats.spans = len(spans)
        with conn.cursor() as bcur:  # (binary fetch measured no faster)
            rows = bcur.execute(_ROWS, {"meters": _array(s[0] for s in spans),
                                        "lo": [s[1] for s in spans], "hi": [s[2] for s in spans],
                                        "rows": max_rows}).fetchall()
        usage: dict[str, dict[date, Decimal]] = {a: {} for a in acc_ids}
        for acc, year, kwh in conn.execute(
            "SELECT account_id, tier_year, kwh FROM billing_tier_usage "
            "WHERE account_id = ANY(%s)", (acc_ids,)
        ):
            usage[acc][year] = kwh
        # the hot loop. The ledger rows stream into a COPY while later intervals are priced,
        # so the server stores one chunk while Python computes the next (two cores); the
        # charge rows go out in a second COPY after it. Interval times repeat across meters
        # (one 15-minute grid), so their text and epoch forms are cached.
        new_charges: list[str] = []
        changed_charges: list[tuple[Any, ...]] = []
        unbilled: list[tuple[Any, ...]] = []
        starts: dict[datetime, tuple[str, int]] = {}
        ends: dict[datetime, str] = {}
        last_meter: str | None = None
        last_acc: str | None = None
        m = a = ""
        st: list[Any] = []
        acc_usage: dict[date, Decimal] = {}
        tariff: Tariff | None = None
        posted = False
        with conn.cursor() as cur, cur.copy(
            "COPY billing_ledger (account_id, kind, amount_fen, balance_after_fen, "
            "idempotency_key, meter_id, interval_start) FROM STDIN"
        ) as copy:
            ledger: list[str] = []
            for acc, meter, start, end, kwh, skip, charged, revision, _ in rows:
                if skip:  # held for review, or consumed before the account's start
                    stats.skipped += 1
                    continue
                if charged is not None and charged == kwh:
                    stats.unchanged += 1
                    continue
                if acc != last_acc:
                    last_acc, a, st = acc, copytext.escape(acc), state[acc]
                    acc_usage = usage[acc]
                    tariff = tariffs.get(st[0])
                if meter != last_meter:
                    last_meter, m = meter, copytext.escape(meter)
                delta = kwh if charged is None else kwh - charged
                try:
                    if tariff is None:
                        raise TariffError(f"tariff {st[0]!r} is not loaded")
                    exact = tariff.amount(start, end, delta, acc_usage)
                except TariffError as exc:
                    # one unpriceable interval must not stop the meter or the batch: keep
                    # it, with the reason, for a person (and an alert), and go on
                    stats.unbilled += 1
                    unbilled.append((meter, start, acc, str(exc)))
                    continue
                fen, st[2] = post_charge(st[2], exact)
                st[1] -= fen
                posted = True
                # keys use epoch seconds: the same instant gives the same key whatever the
                # session time zone of the process that charges it
                t = starts.get(start)
                if t is None:
                    t = starts[start] = (start.isoformat(), int(start.timestamp()))
                iso, epoch = t
                if charged is None:
                    stats.intervals += 1
                    ledger.append(
                        f"{a}\tcharge\t{-fen}\t{st[1]}\tcharge:{m}:{epoch}\t{m}\t{iso}")
                    end_iso = ends.get(end)
                    if end_iso is None:
                        end_iso = ends[end] = end.isoformat()
                    new_charges.append(
                        f"{m}\t{iso}\t{end_iso}\t{a}\t{kwh}\t{exact}\t0")
                else:
                    stats.adjustments += 1
                    revision += 1
                    ledger.append(f"{a}\tadjustment\t{-fen}\t{st[1]}\t"
                                  f"adj:{m}:{epoch}:{revision}\t{m}\t{iso}")
                    changed_charges.append((kwh, exact, revision, meter, start))
                if len(ledger) >= _CHUNK:
                    copy.write("\n".join(ledger) + "\n")
                    ledger.clear()
            if ledger:
                copy.write("\n".join(ledger) + "\n")
        _write(conn, posted, new_charges, changed_charges, state, usage)
        _consume(conn, spans, rows, complete=len(rows) < max_rows)
        if unbilled:
            _keep_unbilled(conn, unbilled)
    return stats


def _consume(conn: psycopg.Connection[Any], spans: list[tuple[Any, ...]],
             rows: list[tuple[Any, ...]], *, complete: bool) -> None:
    """Delete the queue rows this batch charged in full. When the batch stopped at
    ``max_rows`` (``complete`` False), its last meter's span starts again just past the last
    interval charged, and the meters it did not reach keep their rows."""
    if complete:
        done = [s[0] for s in spans]
    else:
        reached = {r[8] for r in rows}
        last_meter, last_start = rows[-1][8], rows[-1][2]
        done = [s[0] for s in spans if s[0] in reached
                and (s[0] != last_meter or last_start >= s[2])]
        if last_meter not in done:
            conn.execute("UPDATE interval_changes SET lo = %s WHERE meter = %s",
                         (last_start + _AFTER, last_meter))
    if done:
        conn.execute("DELETE FROM interval_changes WHERE meter = ANY(%s::int[])", (_array(done),))


def _keep_unbilled(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    cur = conn.cursor()
    cur.executemany(
        """INSERT INTO billing_unbilled (meter_id, interval_start, account_id, reason)
           VALUES (%s, %s, %s, %s) ON CONFLICT (meter_id, interval_start) DO UPDATE
           SET reason = EXCLUDED.reason, at = now()""",
        rows,
    )
    cur.executemany(
        """INSERT INTO billing_alerts (account_id, kind, balance_fen, message)
           SELECT account_id, 'billing_error', balance_fen, %s FROM billing_accounts
           WHERE account_id = %s""",
        [(f"interval {start.isoformat()} of meter {meter} not charged: {why}", acc)
         for meter, start, acc, why in rows],
    )


def _write(
    conn: psycopg.Connection[Any],
    posted: bool,
    new_charges: list[str],
    changed_charges: list[tuple[Any, ...]],
    state: dict[str, list[Any]],
    usage: dict[str, dict[date, Decimal]],
) -> None:
    cur = conn.cursor()
    if new_charges:
        with cur.copy(
            "COPY billing_charges (meter_id, interval_start, interval_end, account_id, kwh, "
            "exact, revision) FROM STDIN"
        ) as copy:
            copy.write("\n".join(new_charges) + "\n")
    if changed_charges:
        cur.executemany(
            """UPDATE billing_charges SET kwh = %s, exact = exact + %s, revision = %s
               WHERE meter_id = %s AND interval_start = %s""",
            changed_charges,
        )
    tiers = [(a, y, k) for a, years in usage.items() for y, k in years.items()]
    if tiers:
        cur.execute(
            """INSERT INTO billing_tier_usage (account_id, tier_year, kwh)
               SELECT * FROM unnest(%s::text[], %s::date[], %s::numeric[])
               ON CONFLICT (account_id, tier_year) DO UPDATE SET kwh = EXCLUDED.kwh""",
            (_texts([t[0] for t in tiers]), _array(t[1].isoformat() for t in tiers),
             _array(t[2] for t in tiers)),
        )
    if posted:
        cur.execute(
            """UPDATE billing_accounts a SET balance_fen = v.b, carry = v.c, dirty = true
               FROM unnest(%s::text[], %s::bigint[], %s::numeric[]) AS v(id, b, c)
               WHERE a.account_id = v.id""",
            (_texts(state), _array(s[1] for s in state.values()),
             _array(s[2] for s in state.values())),
        )


def _array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of numbers or dates (their str() is their input form):
    one string instead of psycopg dumping a list element by element."""
    return "{" + ",".join(map(str, values)) + "}"


def _texts(values: Iterable[str]) -> str | list[str]:
    """An array literal of ids, every element quoted; ids with a quote or a backslash
    (never seen in practice) go as a list for psycopg to escape."""
    items = list(values)
    raw = "".join(items)
    if '"' in raw or "\\" in raw:
        return items
    return '{"' + '","'.join(items) + '"}' if items else "{}"


def charge_all(
    conn: psycopg.Connection[Any],
    tariffs: Mapping[str, Tariff],
    *,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    max_batches: int = 1_000_000,
) -> ChargeStats:
    """Charge batches until nothing is left (or ``max_batches``)."""
    total = ChargeStats()
    after: str | None = None
    for _ in range(max_batches):
        s = charge_batch(conn, tariffs, max_accounts=max_accounts,
                         max_rows=max_rows, after=after)
        total.add(s)
        if s.work == 0:
            if after is None:
                break
            after = None  # past the last account: once more from the first
        else:
            after = s.last_account
    return total


def charge_parallel(
    conns: Sequence[psycopg.Connection[Any]],
    tariffs: Mapping[str, Tariff],
    *,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    max_batches: int = 1_000_000,
) -> ChargeStats:
    """:func:`charge_all` on several connections at once, one thread each (autocommit
    connections, none in a transaction). The accounts split between them exactly as between
    billing engines (``SKIP LOCKED``); what one process gains is overlap: a thread prices
    while the others' connections wait for the server (psycopg releases the GIL then)."""
    if len(conns) <= 1:
        return charge_all(conns[0], tariffs, max_accounts=max_accounts,
                          max_rows=max_rows, max_batches=max_batches)
    total = ChargeStats()
    with ThreadPoolExecutor(len(conns), thread_name_prefix="billing-charge") as pool:
        futures = [pool.submit(charge_all, c, tariffs, max_accounts=max_accounts,
                               max_rows=max_rows,
                               max_batches=max_batches) for c in conns]
        for f in futures:
            total.add(f.result())
    return total
