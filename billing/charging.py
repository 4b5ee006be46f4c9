"""Charging validated intervals: per meter in change_id order, exactly once, resumable.

A batch locks a set of accounts (``FOR UPDATE SKIP LOCKED``: several billing processes
split the accounts between them), reads each meter's intervals past its cursor, prices
them, appends the ledger entries, records the charged kWh per interval, moves the cached
balance and the carry, and advances the cursors, all in one transaction. A restart resumes
from the cursors; a crash mid-batch leaves nothing half done.

Held intervals are skipped (the cursor moves past them; their release is an update, which
gives them a new change_id). An interval already charged that comes back with other kWh
(an actual replacing an estimate) is charged the difference as an adjustment; the same kWh
again (a re-delivery) is nothing.

Why a commit horizon: ``change_id`` comes from a sequence, and transactions do not commit in
sequence order, so a cursor that ran past a change_id still uncommitted would skip it forever.
:class:`CommitHorizon` only lets billing read change_ids that no running transaction can still
commit: a sequence value observed at t0 is settled once every transaction that existed a grace
period after t0 has finished.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg

from billing.money import post_charge
from billing.tariffs import Tariff, TariffError
from meterhub import copytext

_ALL = 2**62
_CHUNK = 2000  # ledger rows per COPY write while pricing goes on


class CommitHorizon:
    """The highest change_id below which every interval write has committed (or never will).

    Each :meth:`update` records (time, sequence value, write transactions running in this
    database). A record is settled once the transactions of a later record, taken
    ``grace_s`` after it, have all ended: any transaction that could still hold one of those
    sequence values was running by then. The grace covers a writer that has taken its
    change_id but not yet its transaction id. Only this database's transactions count
    (``pg_stat_activity``), so a long write elsewhere on the server does not stall billing.
    """

    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_s = grace_s
        self.value = 0
        self._latest = 0  # the sequence value at the last update
        self._marks: deque[tuple[float, int, frozenset[int]]] = deque(maxlen=100_000)

    def update(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            """SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END
                         FROM intervals_change_seq),
                      (SELECT coalesce(array_agg(backend_xid::text::bigint), '{}')
                         FROM pg_stat_activity
                        WHERE datname = current_database() AND backend_xid IS NOT NULL
                          AND pid <> pg_backend_pid())"""
        ).fetchone()
        assert row is not None
        seq, running = int(row[0]), frozenset(row[1])
        self._latest = seq
        now = time.monotonic()
        self._marks.append((now, seq, running))
        while self._marks:
            t0, seq0, _ = self._marks[0]
            later = next((m for m in self._marks if m[0] >= t0 + self.grace_s), None)
            if later is None or later[2] & running:
                break
            self.value = max(self.value, seq0)
            self._marks.popleft()
        return self.value

    @property
    def waiting(self) -> bool:
        """Whether change ids were taken that the horizon has not reached yet (another
        :meth:`update` after the grace may let them be charged)."""
        return self._latest > self.value


@dataclass(slots=True)
class ChargeStats:
    intervals: int = 0  # first charges
    adjustments: int = 0  # differences for replaced values
    unchanged: int = 0  # re-deliveries with the same kWh
    skipped: int = 0  # held, or before the account's start
    unbilled: int = 0  # could not be priced: kept in billing_unbilled with the reason
    accounts: int = 0
    last_account: str | None = None  # of this batch (not summed): where the next starts

    def add(self, other: ChargeStats) -> None:
        for f in ("intervals", "adjustments", "unchanged", "skipped", "unbilled", "accounts"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def work(self) -> int:
        return (self.intervals + self.adjustments + self.unchanged + self.skipped
                + self.unbilled)


# Accounts with intervals to charge, in account order after the previous batch's last one
# (keyset: each batch starts where the last stopped instead of walking past the accounts
# already done; charge_all wraps around once at the end).
_PICK = """
SELECT a.account_id, a.tariff_id, a.balance_fen, a.carry
FROM billing_accounts a
WHERE {after} EXISTS (
    SELECT 1 FROM billing_meters m
    JOIN meter_contract mc ON mc.meter_id = m.meter_id
    JOIN intervals i ON i.meter = mc.meter_key AND i.change_id > m.cursor
                    AND i.change_id <= %(h)s
    WHERE m.account_id = a.account_id)
ORDER BY a.account_id
LIMIT %(n)s
FOR UPDATE OF a SKIP LOCKED
"""
_PICK_FIRST = _PICK.format(after="")
_PICK_AFTER = _PICK.format(after="a.account_id > %(after)s AND")

# Per meter, its intervals past the cursor by the (meter, change_id) index (LATERAL), so a
# batch reads its own meters' new intervals rather than scanning the whole table. The
# collector's integer meter key comes from the meter_contract view.
_ROWS = """
SELECT m.account_id, m.meter_id, i.interval_start,
       i.interval_start + make_interval(secs => i.seconds), i.kwh,
       i.held OR i.interval_start < m.charge_from, i.change_id, c.kwh
FROM billing_meters m
JOIN meter_contract mc ON mc.meter_id = m.meter_id
CROSS JOIN LATERAL (
    SELECT i.interval_start, i.seconds, i.kwh, i.held, i.change_id
    FROM intervals i
    WHERE i.meter = mc.meter_key AND i.change_id > m.cursor AND i.change_id <= %(h)s
    ORDER BY i.change_id LIMIT %(rows)s) i
LEFT JOIN billing_charges c ON c.meter_id = m.meter_id AND c.interval_start = i.interval_start
WHERE m.account_id = ANY(%(acc)s)
ORDER BY m.meter_id, i.change_id
LIMIT %(rows)s
"""


def charge_batch(
    conn: psycopg.Connection[Any],
    tariffs: Mapping[str, Tariff],
    *,
    horizon: int | None = None,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    after: str | None = None,
) -> ChargeStats:
    """Charge one batch of accounts; returns what was done (``work == 0``: nothing left).
    ``after``: only accounts ordered after this id (``last_account`` of the previous batch).

    ``horizon`` None reads every change_id: only for callers that know no interval writer
    is running (tools, benchmarks); the engine passes :class:`CommitHorizon` values.
    """
    h = _ALL if horizon is None else horizon
    stats = ChargeStats()
    with conn.transaction():
        accounts = conn.execute(_PICK_FIRST if after is None else _PICK_AFTER,
                                {"h": h, "n": max_accounts, "after": after}).fetchall()
        if not accounts:
            return stats
        stats.accounts = len(accounts)
        stats.last_account = accounts[-1][0]
        acc_ids = [a[0] for a in accounts]
        state: dict[str, list[Any]] = {a[0]: [a[1], a[2], a[3]] for a in accounts}
        with conn.cursor() as bcur:  # (binary fetch measured no faster)
            rows = bcur.execute(_ROWS, {"h": h, "acc": acc_ids, "rows": max_rows}).fetchall()
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
        cursors: dict[str, int] = {}
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
            for acc, meter, start, end, kwh, skip, change_id, charged in rows:
                cursors[meter] = change_id
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
                    unbilled.append((meter, start, change_id, acc, str(exc)))
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
                        f"{m}\t{iso}\t{end_iso}\t{a}\t{kwh}\t{exact}\t{change_id}")
                else:
                    stats.adjustments += 1
                    ledger.append(f"{a}\tadjustment\t{-fen}\t{st[1]}\t"
                                  f"adj:{m}:{epoch}:{change_id}\t{m}\t{iso}")
                    changed_charges.append((kwh, exact, change_id, meter, start))
                if len(ledger) >= _CHUNK:
                    copy.write("\n".join(ledger) + "\n")
                    ledger.clear()
            if ledger:
                copy.write("\n".join(ledger) + "\n")
        _write(conn, posted, new_charges, changed_charges, cursors, state, usage)
        if unbilled:
            _keep_unbilled(conn, unbilled)
    return stats


def _keep_unbilled(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    cur = conn.cursor()
    cur.executemany(
        """INSERT INTO billing_unbilled (meter_id, interval_start, change_id, account_id, reason)
           VALUES (%s, %s, %s, %s, %s) ON CONFLICT (meter_id, interval_start) DO UPDATE
           SET change_id = EXCLUDED.change_id, reason = EXCLUDED.reason, at = now()""",
        rows,
    )
    cur.executemany(
        """INSERT INTO billing_alerts (account_id, kind, balance_fen, message)
           SELECT account_id, 'billing_error', balance_fen, %s FROM billing_accounts
           WHERE account_id = %s""",
        [(f"interval {start.isoformat()} of meter {meter} not charged: {why}", acc)
         for meter, start, _, acc, why in rows],
    )


def _write(
    conn: psycopg.Connection[Any],
    posted: bool,
    new_charges: list[str],
    changed_charges: list[tuple[Any, ...]],
    cursors: dict[str, int],
    state: dict[str, list[Any]],
    usage: dict[str, dict[date, Decimal]],
) -> None:
    cur = conn.cursor()
    if new_charges:
        with cur.copy(
            "COPY billing_charges (meter_id, interval_start, interval_end, account_id, kwh, "
            "exact, change_id) FROM STDIN"
        ) as copy:
            copy.write("\n".join(new_charges) + "\n")
    if changed_charges:
        cur.executemany(
            """UPDATE billing_charges SET kwh = %s, exact = exact + %s, change_id = %s
               WHERE meter_id = %s AND interval_start = %s""",
            changed_charges,
        )
    if cursors:
        cur.execute(
            """UPDATE billing_meters m SET cursor = v.c
               FROM unnest(%s::text[], %s::bigint[]) AS v(m, c) WHERE m.meter_id = v.m""",
            (_texts(cursors), _array(cursors.values())),
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
    horizon: int | None = None,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    max_batches: int = 1_000_000,
) -> ChargeStats:
    """Charge batches until nothing is left (or ``max_batches``)."""
    total = ChargeStats()
    after: str | None = None
    for _ in range(max_batches):
        s = charge_batch(conn, tariffs, horizon=horizon, max_accounts=max_accounts,
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
    horizon: int | None = None,
    max_accounts: int = 500,
    max_rows: int = 50_000,
    max_batches: int = 1_000_000,
) -> ChargeStats:
    """:func:`charge_all` on several connections at once, one thread each (autocommit
    connections, none in a transaction). The accounts split between them exactly as between
    billing engines (``SKIP LOCKED``); what one process gains is overlap: a thread prices
    while the others' connections wait for the server (psycopg releases the GIL then)."""
    if len(conns) <= 1:
        return charge_all(conns[0], tariffs, horizon=horizon, max_accounts=max_accounts,
                          max_rows=max_rows, max_batches=max_batches)
    total = ChargeStats()
    with ThreadPoolExecutor(len(conns), thread_name_prefix="billing-charge") as pool:
        futures = [pool.submit(charge_all, c, tariffs, horizon=horizon,
                               max_accounts=max_accounts, max_rows=max_rows,
                               max_batches=max_batches) for c in conns]
        for f in futures:
            total.add(f.result())
    return total
