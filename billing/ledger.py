"""Accounts, the append-only ledger, top-ups and balances (sync; take a psycopg Connection).

Every money movement is one ledger row with an idempotency key, written in the same
transaction that updates the cached balance on the account row (locked ``FOR UPDATE``), so
the cache always equals the sum of the ledger and a replayed payment is one entry. These
functions serve the CLI, the demo and the web API alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from billing import relays
from billing.errors import BillingError
from billing.money import from_fen, parse_amount, to_fen
from billing.policy import CreditSettings, ProtectedWindows
from billing.relays import RelaylessPolicy
from billing.tariffs import Tariff, load_tariffs
from meterhub import channels, wire

CHANNELS = ("wechat", "alipay", "bank", "counter")
RestoreMode = Literal["close", "close_permitted"]


class UnknownAccount(BillingError):
    pass


class AccountExists(BillingError):
    pass


class TopupConflict(BillingError):
    """The payment reference was already used for a different account or amount."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: int
    account_id: str
    kind: str
    amount: Decimal
    balance_after: Decimal
    idempotency_key: str
    created_at: datetime
    channel: str | None = None
    reference: str | None = None


def _entry(row: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        entry_id=row["entry_id"],
        account_id=row["account_id"],
        kind=row["kind"],
        amount=from_fen(row["amount_fen"]),
        balance_after=from_fen(row["balance_after_fen"]),
        idempotency_key=row["idempotency_key"],
        created_at=row["created_at"],
        channel=row["channel"],
        reference=row["reference"],
    )


ACCOUNT_ID_CHARS = 64
MAX_NAME_CHARS = 200


def check_account_id(account_id: str) -> None:
    """An account id is what staff type and print on a bill: 1..64 printable characters."""
    if not account_id or len(account_id) > ACCOUNT_ID_CHARS or not account_id.isprintable():
        raise BillingError(f"account: {account_id[:80]!r} is not an account id (1 to "
                           f"{ACCOUNT_ID_CHARS} printable characters)")


def create_account(
    conn: psycopg.Connection[Any],
    account_id: str,
    *,
    meters: Iterable[str],
    tariff: str,
    name: str = "",
    credit: CreditSettings | None = None,
    windows: ProtectedWindows | None = None,
    group: str | None = None,
    restore_mode: RestoreMode = "close",
    opening_balance: Decimal | str = Decimal(0),
    arrears: Decimal | str = Decimal(0),
    arrears_share: Decimal | str = Decimal(0),
    charge_from: datetime | None = None,
    tariffs: Mapping[str, Tariff] | None = None,
    relayless: RelaylessPolicy = "refuse",
) -> None:
    """Open a prepaid account for one or more meters.

    ``group`` is the building or transformer (mass cut-off limit); ``windows`` None means no
    protected windows; consumption before ``charge_from`` (default: now) is not charged.
    ``arrears`` is old debt, recovered as ``arrears_share`` of each top-up. A meter without
    a relay is refused, or with ``relayless="flag"`` flagged as needing a site visit to
    disconnect (billing.relays).
    """
    known = tariffs if tariffs is not None else load_tariffs()
    if tariff not in known:
        raise BillingError(f"tariff {tariff!r} is not defined (known: {', '.join(sorted(known))})")
    if restore_mode not in ("close", "close_permitted"):
        raise BillingError(f"restore_mode {restore_mode!r} must be 'close' or 'close_permitted'")
    check_account_id(account_id)
    meter_ids = list(dict.fromkeys(meters))
    if not meter_ids:
        raise BillingError(f"account {account_id!r} needs at least one meter")
    for meter in meter_ids:
        if not wire.is_id(meter):  # readings name it: it is a wire id or it never bills
            raise BillingError(f"meter: {meter[:80]!r} is not a meter id ({wire.ID_PATTERN})")
    if len(name) > MAX_NAME_CHARS:
        raise BillingError(f"name: {len(name)} characters, more than {MAX_NAME_CHARS}")
    opening = parse_amount(opening_balance, what="opening_balance")
    debt = parse_amount(arrears, what="arrears")
    share = Decimal(str(arrears_share))
    if not Decimal(0) <= share <= 1:
        raise BillingError("arrears_share must be between 0 and 1")
    credit = credit or CreditSettings()
    start = charge_from or datetime.now(UTC)
    with conn.transaction():
        try:
            conn.execute(
                """INSERT INTO billing_accounts (account_id, name, tariff_id, group_key,
                       restore_mode, credit, windows, arrears_fen, arrears_share)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (account_id, name, tariff, group, restore_mode, json.dumps(credit.to_json()),
                 json.dumps(windows.to_json()) if windows else None, to_fen(debt), share),
            )
        except psycopg.errors.UniqueViolation:
            raise AccountExists(f"account {account_id!r} already exists") from None
        taken = conn.execute(
            "SELECT meter_id, account_id FROM billing_meters WHERE meter_id = ANY(%s)",
            (meter_ids,),
        ).fetchall()
        if taken:
            raise BillingError(
                "meters already belong to an account: "
                + ", ".join(f"{m} ({a})" for m, a in taken)
            )
        conn.cursor().executemany(
            "INSERT INTO billing_meters (meter_id, account_id, charge_from) VALUES (%s, %s, %s)",
            [(m, account_id, start) for m in meter_ids],
        )
        relays.admit(conn, account_id, meter_ids, relayless, datetime.now(UTC))
        if opening:
            _post(conn, account_id, "adjustment", to_fen(opening), f"open:{account_id}",
                  actor="create_account", detail={"why": "opening balance"})


def _lock_account(conn: psycopg.Connection[Any], account_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_accounts WHERE account_id = %s FOR UPDATE", (account_id,)
        ).fetchone()
    if row is None:
        raise UnknownAccount(f"account {account_id!r} does not exist")
    return row


def _post(
    conn: psycopg.Connection[Any],
    account_id: str,
    kind: str,
    amount_fen: int,
    key: str,
    *,
    channel: str | None = None,
    reference: str | None = None,
    actor: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> LedgerEntry:
    """Append one entry and move the cached balance; the caller holds the transaction,
    whose commit wakes billing engines (meterhub.channels.ACCOUNTS). ``at`` is when it
    happened (default now): postpaid penalties count days from it."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """UPDATE billing_accounts SET balance_fen = balance_fen + %s, dirty = true
               WHERE account_id = %s RETURNING balance_fen""",
            (amount_fen, account_id),
        ).fetchone()
        if row is None:
            raise UnknownAccount(f"account {account_id!r} does not exist")
        entry = cur.execute(
            """INSERT INTO billing_ledger (account_id, kind, amount_fen, balance_after_fen,
                   idempotency_key, channel, reference, actor, detail, created_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, now())) RETURNING *""",
            (account_id, kind, amount_fen, row["balance_fen"], key, channel, reference, actor,
             json.dumps(detail) if detail else None, at),
        ).fetchone()
        if amount_fen > 0:  # a postpaid account's ladder looks again (billing.collection)
            cur.execute("UPDATE billing_collection SET recheck = true WHERE account_id = %s",
                        (account_id,))
    assert entry is not None
    channels.notify(conn, channels.ACCOUNTS, account_id)
    return _entry(entry)


def _existing(conn: psycopg.Connection[Any], key: str) -> LedgerEntry | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_ledger WHERE idempotency_key = %s", (key,)
        ).fetchone()
    return _entry(row) if row else None


def topup(
    conn: psycopg.Connection[Any],
    account_id: str,
    amount: Decimal | str,
    channel: str,
    reference: str,
    *,
    actor: str = "api",
    at: datetime | None = None,
) -> LedgerEntry:
    """Credit a payment; the same channel + reference again returns the first entry.
    ``at``: when it was paid (default now; a counter's batch or a simulation gives it).

    When the account carries arrears with a recovery share, that share of the payment is
    posted as a separate ``arrears_recovery`` entry (same reference).
    """
    value = parse_amount(amount)
    if value <= 0:
        raise BillingError(f"a top-up must be positive, got {value}")
    if channel not in CHANNELS:
        raise BillingError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    if not reference:
        raise BillingError("a top-up needs the payment reference")
    key = f"topup:{channel}:{reference}"
    with conn.transaction():
        acc = _lock_account(conn, account_id)
        done = _existing(conn, key)
        if done is not None:
            if done.account_id != account_id or done.amount != value:
                raise TopupConflict(
                    f"{channel} reference {reference!r} was already used for "
                    f"{done.amount} on account {done.account_id}"
                )
            return done
        fen = to_fen(value)
        entry = _post(conn, account_id, "topup", fen, key, channel=channel,
                      reference=reference, actor=actor, at=at)
        if acc["arrears_fen"] > 0 and acc["arrears_share"] > 0:
            recovered = min(acc["arrears_fen"], int(fen * acc["arrears_share"]))
            if recovered:
                _post(conn, account_id, "arrears_recovery", -recovered,
                      f"arrears:{channel}:{reference}", channel=channel, reference=reference,
                      actor=actor, at=at)
                conn.execute(
                    "UPDATE billing_accounts SET arrears_fen = arrears_fen - %s "
                    "WHERE account_id = %s",
                    (recovered, account_id),
                )
        conn.execute(
            "UPDATE billing_topup_intents SET settled_at = now() "
            "WHERE channel = %s AND reference = %s AND settled_at IS NULL",
            (channel, reference),
        )
    return entry


def refund(
    conn: psycopg.Connection[Any], account_id: str, amount: Decimal | str, reference: str,
    *, actor: str = "operator",
) -> LedgerEntry:
    """Pay credit back to the customer (a debit), idempotent by reference."""
    value = parse_amount(amount)
    if value <= 0:
        raise BillingError(f"a refund must be positive, got {value}")
    key = f"refund:{reference}"
    with conn.transaction():
        _lock_account(conn, account_id)
        done = _existing(conn, key)
        if done is not None:
            return done
        return _post(conn, account_id, "refund", -to_fen(value), key, reference=reference,
                     actor=actor)


def adjust(
    conn: psycopg.Connection[Any], account_id: str, amount: Decimal | str, reference: str,
    *, reason: str, actor: str = "operator",
) -> LedgerEntry:
    """A manual correction (credit if positive), idempotent by reference."""
    value = parse_amount(amount)
    key = f"adjust:{reference}"
    with conn.transaction():
        _lock_account(conn, account_id)
        done = _existing(conn, key)
        if done is not None:
            return done
        return _post(conn, account_id, "adjustment", to_fen(value), key, reference=reference,
                     actor=actor, detail={"reason": reason})


def announce_topup(
    conn: psycopg.Connection[Any], account_id: str, amount: Decimal | str, channel: str,
    reference: str, *, valid_for: timedelta = timedelta(hours=24),
) -> None:
    """Record a payment on its way (no credit yet): cut-offs wait while it is pending."""
    value = parse_amount(amount)
    if channel not in CHANNELS:
        raise BillingError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    with conn.transaction():
        _lock_account(conn, account_id)
        conn.execute(
            """INSERT INTO billing_topup_intents (channel, reference, account_id, amount_fen,
                   expires_at) VALUES (%s, %s, %s, %s, now() + %s)
               ON CONFLICT (channel, reference) DO NOTHING""",
            (channel, reference, account_id, to_fen(value), valid_for),
        )
        conn.execute("UPDATE billing_accounts SET dirty = true WHERE account_id = %s",
                     (account_id,))
        channels.notify(conn, channels.ACCOUNTS, account_id)


def balance(conn: psycopg.Connection[Any], account_id: str) -> Decimal:
    """The account balance in yuan (the transactionally cached sum of its ledger)."""
    row = conn.execute(
        "SELECT balance_fen FROM billing_accounts WHERE account_id = %s", (account_id,)
    ).fetchone()
    if row is None:
        raise UnknownAccount(f"account {account_id!r} does not exist")
    return from_fen(row[0])


def ledger_sum(conn: psycopg.Connection[Any], account_id: str) -> Decimal:
    """The balance recomputed from the ledger itself (audit of the cache)."""
    row = conn.execute(
        "SELECT coalesce(sum(amount_fen), 0) FROM billing_ledger WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    assert row is not None
    return from_fen(int(row[0]))


def entries(
    conn: psycopg.Connection[Any], account_id: str, limit: int = 50
) -> list[LedgerEntry]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM billing_ledger WHERE account_id = %s ORDER BY entry_id DESC LIMIT %s",
            (account_id, limit),
        ).fetchall()
    return [_entry(r) for r in rows]


def approve_cutoffs(
    conn: psycopg.Connection[Any], group: str, *, by: str, valid_for: timedelta = timedelta(hours=4)
) -> bool:
    """A person approves the waiting mass cut-off of one building/transformer."""
    with conn.transaction():
        cur = conn.execute(
            """UPDATE billing_cutoff_approvals
               SET approved_at = now(), approved_by = %s, valid_until = now() + %s
               WHERE group_key = %s""",
            (by, valid_for, group),
        )
        conn.execute("UPDATE billing_accounts SET dirty = true WHERE group_key = %s", (group,))
        channels.notify(conn, channels.ACCOUNTS, group)
    return cur.rowcount == 1
