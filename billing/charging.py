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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg

from billing.money import post_charge
from billing.tariffs import Tariff, TariffError

_ALL = 2**62


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


@dataclass(slots=True)
class ChargeStats:
    intervals: int = 0  # first charges
    adjustments: int = 0  # differences for replaced values
    unchanged: int = 0  # re-deliveries with the same kWh
    skipped: int = 0  # held, or before the account's start
    unbilled: int = 0  # could not be priced: kept in billing_unbilled with the reason
    accounts: int = 0

    def add(self, other: ChargeStats) -> None:
        for f in ("intervals", "adjustments", "unchanged", "skipped", "unbilled", "accounts"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def work(self) -> int:
        return (self.intervals + self.adjustments + self.unchanged + self.skipped
                + self.unbilled)


_PICK = """
SELECT a.account_id, a.tariff_id, a.balance_fen, a.carry
FROM billing_accounts a
WHERE EXISTS (
    SELECT 1 FROM billing_meters m
    JOIN intervals i ON i.meter_id = m.meter_id AND i.change_id > m.cursor
                    AND i.change_id <= %(h)s
    WHERE m.account_id = a.account_id)
LIMIT %(n)s
FOR UPDATE OF a SKIP LOCKED
"""

_ROWS = """
SELECT m.account_id, i.meter_id, i.interval_start, i.interval_end, i.kwh,
       i.held OR i.interval_start < m.charge_from, i.change_id, c.kwh
FROM billing_meters m
JOIN intervals i ON i.meter_id = m.meter_id AND i.change_id > m.cursor AND i.change_id <= %(h)s
LEFT JOIN billing_charges c ON c.meter_id = i.meter_id AND c.interval_start = i.interval_start
WHERE m.account_id = ANY(%(acc)s)
ORDER BY i.meter_id, i.change_id
LIMIT %(rows)s
"""


def charge_batch(
    conn: psycopg.Connection[Any],
    tariffs: Mapping[str, Tariff],
    *,
    horizon: int | None = None,
    max_accounts: int = 500,
    max_rows: int = 50_000,
) -> ChargeStats:
    """Charge one batch of accounts; returns what was done (``work == 0``: nothing left).

    ``horizon`` None reads every change_id: only for callers that know no interval writer
    is running (tools, benchmarks); the engine passes :class:`CommitHorizon` values.
    """
    h = _ALL if horizon is None else horizon
    stats = ChargeStats()
    with conn.transaction():
        accounts = conn.execute(_PICK, {"h": h, "n": max_accounts}).fetchall()
        if not accounts:
            return stats
        stats.accounts = len(accounts)
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
        # the ledger and charge rows go out as COPY text built here: this is the hot loop
        ledger: list[str] = []
        new_charges: list[str] = []
        changed_charges: list[tuple[Any, ...]] = []
        unbilled: list[tuple[Any, ...]] = []
        cursors: dict[str, int] = {}
        for acc, meter, start, end, kwh, skip, change_id, charged in rows:
            cursors[meter] = change_id
            if skip:  # held for review, or consumed before the account's start
                stats.skipped += 1
                continue
            if charged is not None and charged == kwh:
                stats.unchanged += 1
                continue
            st = state[acc]
            delta = kwh if charged is None else kwh - charged
            try:
                tariff = tariffs.get(st[0])
                if tariff is None:
                    raise TariffError(f"tariff {st[0]!r} is not loaded")
                exact = tariff.amount(start, end, delta, usage[acc])
            except TariffError as exc:
                # one unpriceable interval must not stop the meter or the batch: keep it,
                # with the reason, for a person (and an alert), and go on
                stats.unbilled += 1
                unbilled.append((meter, start, change_id, acc, str(exc)))
                continue
            fen, st[2] = post_charge(st[2], exact)
            st[1] -= fen
            # keys use epoch seconds: the same instant gives the same key whatever the
            # session time zone of the process that charges it
            epoch = int(start.timestamp())
            m, a, iso = _esc(meter), _esc(acc), start.isoformat()
            if charged is None:
                stats.intervals += 1
                ledger.append(f"{a}\tcharge\t{-fen}\t{st[1]}\tcharge:{m}:{epoch}\t{m}\t{iso}")
                new_charges.append(
                    f"{m}\t{iso}\t{end.isoformat()}\t{a}\t{kwh}\t{exact}\t{change_id}")
            else:
                stats.adjustments += 1
                ledger.append(
                    f"{a}\tadjustment\t{-fen}\t{st[1]}\tadj:{m}:{epoch}:{change_id}\t{m}\t{iso}")
                changed_charges.append((kwh, exact, change_id, meter, start))
        _write(conn, ledger, new_charges, changed_charges, cursors, state, usage)
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
    ledger: list[str],
    new_charges: list[str],
    changed_charges: list[tuple[Any, ...]],
    cursors: dict[str, int],
    state: dict[str, list[Any]],
    usage: dict[str, dict[date, Decimal]],
) -> None:
    cur = conn.cursor()
    if ledger:
        with cur.copy(
            "COPY billing_ledger (account_id, kind, amount_fen, balance_after_fen, "
            "idempotency_key, meter_id, interval_start) FROM STDIN"
        ) as copy:
            copy.write("\n".join(ledger) + "\n")
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
            (list(cursors), list(cursors.values())),
        )
    tiers = [(a, y, k) for a, years in usage.items() for y, k in years.items()]
    if tiers:
        cur.execute(
            """INSERT INTO billing_tier_usage (account_id, tier_year, kwh)
               SELECT * FROM unnest(%s::text[], %s::date[], %s::numeric[])
               ON CONFLICT (account_id, tier_year) DO UPDATE SET kwh = EXCLUDED.kwh""",
            ([t[0] for t in tiers], [t[1] for t in tiers], [t[2] for t in tiers]),
        )
    if ledger:
        cur.execute(
            """UPDATE billing_accounts a SET balance_fen = v.b, carry = v.c, dirty = true
               FROM unnest(%s::text[], %s::bigint[], %s::numeric[]) AS v(id, b, c)
               WHERE a.account_id = v.id""",
            (list(state), [s[1] for s in state.values()], [s[2] for s in state.values()]),
        )


_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _esc(text: str) -> str:
    """Escape a value for COPY text format (ids are plain almost always: check first)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPE)
    return text


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
    for _ in range(max_batches):
        s = charge_batch(conn, tariffs, horizon=horizon, max_accounts=max_accounts,
                         max_rows=max_rows)
        total.add(s)
        if s.work == 0:
            break
    return total
