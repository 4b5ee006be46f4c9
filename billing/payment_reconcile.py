"""Daily reconciliation of a provider's statement file against the ledger.

The statement lists what the provider says moved on one business day (site local time);
billing's side is the ledger entries its notifications produced (``billing_payments`` rows
of that provider and day, joined to the ledger by idempotency key). Each disagreement is a
difference row staff resolve with a note; nothing is corrected automatically, because the
cure (chase the provider, post an adjustment, refund) is a person's decision. The same file
reconciled twice is one run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from billing.errors import BillingError
from billing.payment_channels import STATEMENT_COLUMNS, FileError, amount_fen, file_time, read_rows

SITE_TZ = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True, slots=True)
class Difference:
    txn_id: str
    kind: str
    statement_fen: int | None
    ledger_fen: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class Reconciliation:
    run_id: int
    statement_rows: int
    matched: int
    differences: list[Difference]
    repeated: bool  # this very file was reconciled before: the first run's result


@dataclass(frozen=True, slots=True)
class _Line:
    txn_id: str
    kind: str
    fen: int
    currency: str
    occurred_at: datetime


def _statement(text: str) -> list[_Line]:
    lines, problems, seen = [], [], set()
    for n, row in read_rows(text, STATEMENT_COLUMNS, "statement"):
        where = f"statement: line {n}"
        try:
            if row["kind"] not in ("payment", "refund"):
                raise FileError(f"{where}: kind: {row['kind']!r} is not payment or refund")
            if not row["txn_id"] or row["txn_id"] in seen:
                raise FileError(f"{where}: txn_id: empty or repeated")
            seen.add(row["txn_id"])
            lines.append(
                _Line(
                    row["txn_id"],
                    row["kind"],
                    amount_fen(row["amount"], f"{where}: amount"),
                    row["currency"],
                    file_time(row["occurred_at"], f"{where}: occurred_at"),
                )
            )
        except FileError as exc:
            problems.append(str(exc))
    if problems:
        raise FileError("; ".join(problems[:20]))
    return lines


def reconcile_statement(
    conn: psycopg.Connection[Any],
    provider: str,
    day: date,
    text: str,
    *,
    by: str,
    tz: ZoneInfo = SITE_TZ,
) -> Reconciliation:
    """Compare ``provider``'s statement of ``day`` (CSV: txn_id, kind, amount, currency,
    occurred_at) with the ledger and record the differences."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    lines = _statement(text)
    start = datetime.combine(day, time(0), tz)
    end = start + timedelta(days=1)
    outside = [ln.txn_id for ln in lines if not start <= ln.occurred_at < end]
    if outside:
        raise BillingError(f"statement: transactions outside {day}: {', '.join(outside[:5])}")
    with conn.transaction():
        done = conn.execute(
            """SELECT run_id, statement_rows, matched FROM billing_reconciliations
               WHERE provider = %s AND statement_date = %s AND file_sha256 = %s""",
            (provider, day, digest),
        ).fetchone()
        if done is not None:
            return Reconciliation(done[0], done[1], done[2], _differences(conn, done[0]), True)
        ours = {
            r[0]: r[1:]
            for r in conn.execute(
                """SELECT p.provider_txn, p.kind, p.amount_fen, p.currency, p.state, p.reason,
                      l.amount_fen, p.occurred_at
               FROM billing_payments p
               LEFT JOIN billing_ledger l ON l.idempotency_key = p.ledger_key
               WHERE p.provider = %s AND (p.occurred_at >= %s AND p.occurred_at < %s
                                          OR p.provider_txn = ANY(%s))""",
                (provider, start, end, [ln.txn_id for ln in lines]),
            )
        }
        diffs = _compare(lines, ours, start, end)
        matched = len(lines) - sum(d.kind != "missing_in_statement" for d in diffs)
        run = conn.execute(
            """INSERT INTO billing_reconciliations (provider, statement_date, file_sha256,
                   statement_rows, matched, differences, run_by)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING run_id""",
            (provider, day, digest, len(lines), matched, len(diffs), by),
        ).fetchone()
        assert run is not None
        conn.cursor().executemany(
            """INSERT INTO billing_reconciliation_differences (run_id, provider_txn, kind,
                   statement_fen, ledger_fen, detail) VALUES (%s, %s, %s, %s, %s, %s)""",
            [(run[0], d.txn_id, d.kind, d.statement_fen, d.ledger_fen, d.detail) for d in diffs],
        )
    return Reconciliation(run[0], len(lines), matched, diffs, False)


def _compare(
    lines: list[_Line], ours: dict[str, tuple[Any, ...]], start: datetime, end: datetime
) -> list[Difference]:
    diffs = []
    for ln in lines:
        mine = ours.get(ln.txn_id)
        if mine is None:
            diffs.append(
                Difference(
                    ln.txn_id,
                    "missing_in_ledger",
                    ln.fen,
                    None,
                    f"the provider reports a {ln.kind} billing never received",
                )
            )
            continue
        kind, fen, currency, state, reason, ledger_fen, _ = mine
        entry_fen = None if ledger_fen is None else abs(ledger_fen)
        if kind != ln.kind:
            diffs.append(
                Difference(
                    ln.txn_id,
                    "kind_mismatch",
                    ln.fen,
                    entry_fen,
                    f"statement says {ln.kind}, billing has a {kind}",
                )
            )
        elif currency != ln.currency:
            diffs.append(
                Difference(
                    ln.txn_id,
                    "currency_mismatch",
                    ln.fen,
                    entry_fen,
                    f"statement in {ln.currency}, notified in {currency}",
                )
            )
        elif state != "applied":
            diffs.append(
                Difference(
                    ln.txn_id, "not_applied", ln.fen, None, f"billing has it {state}: {reason}"
                )
            )
        elif entry_fen is None:
            diffs.append(
                Difference(
                    ln.txn_id,
                    "ledger_entry_missing",
                    ln.fen,
                    None,
                    "applied but no ledger entry carries its key",
                )
            )
        elif entry_fen != ln.fen or fen != ln.fen:
            diffs.append(
                Difference(
                    ln.txn_id,
                    "amount_mismatch",
                    ln.fen,
                    entry_fen,
                    f"statement {ln.fen} fen, ledger {entry_fen} fen",
                )
            )
    listed = {ln.txn_id for ln in lines}
    for txn, (kind, _fen, _cur, state, _reason, ledger_fen, at) in sorted(ours.items()):
        if txn not in listed and state == "applied" and start <= at < end:
            diffs.append(
                Difference(
                    txn,
                    "missing_in_statement",
                    None,
                    None if ledger_fen is None else abs(ledger_fen),
                    f"billing credited a {kind} the statement does not list",
                )
            )
    return diffs


def _differences(conn: psycopg.Connection[Any], run_id: int) -> list[Difference]:
    return [
        Difference(*r)
        for r in conn.execute(
            """SELECT provider_txn, kind, statement_fen, ledger_fen, detail
           FROM billing_reconciliation_differences WHERE run_id = %s ORDER BY difference_id""",
            (run_id,),
        )
    ]


def open_differences(conn: psycopg.Connection[Any], limit: int = 500) -> list[tuple[Any, ...]]:
    """Unresolved differences for staff: (id, provider, day, txn, kind, statement fen,
    ledger fen, detail), oldest first."""
    return conn.execute(
        """SELECT d.difference_id, r.provider, r.statement_date, d.provider_txn, d.kind,
                  d.statement_fen, d.ledger_fen, d.detail
           FROM billing_reconciliation_differences d JOIN billing_reconciliations r USING (run_id)
           WHERE d.resolved_at IS NULL ORDER BY d.difference_id LIMIT %s""",
        (limit,),
    ).fetchall()


def resolve_difference(
    conn: psycopg.Connection[Any], difference_id: int, *, by: str, resolution: str
) -> None:
    """Staff closed a difference, saying how (the note is the audit)."""
    if not resolution.strip() or not by.strip():
        raise BillingError("resolution and by: say who resolved it and how")
    cur = conn.execute(
        """UPDATE billing_reconciliation_differences SET resolved_at = now(), resolved_by = %s,
               resolution = %s WHERE difference_id = %s AND resolved_at IS NULL""",
        (by, resolution, difference_id),
    )
    if cur.rowcount != 1:
        raise BillingError(f"difference {difference_id} does not exist or is resolved")
