"""Payments notified by providers, applied to the ledger exactly once (sync; psycopg).

Every channel (a signed webhook, a bank's direct-debit file, the cash desk) turns what it
received into a :class:`PaymentNotice` and hands it to :func:`apply_payment`, so the rules
live once:

* idempotent by (provider, transaction id): a replay that says the same thing is a
  ``duplicate`` and moves no money; one that says something else is a conflict, refused;
* the currency must be the site's; an amount must be whole fen, positive, within the
  one-payment limit, and equal to the payment the customer announced, if they did;
* refunds may arrive before their payment (providers deliver out of order): they wait and
  are applied right after it; refunds never exceed the payment;
* money moves only through :func:`billing.ledger.topup` / :func:`billing.ledger.refund`,
  which mark the account for the policy: a payment that lifts a cut account above its
  restore threshold restores supply through the normal path.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from billing.errors import BillingError
from billing.ledger import CHANNELS, UnknownAccount, refund, topup
from billing.money import DEFAULT_MAX_TOPUP, from_fen, to_fen

CURRENCY = "CNY"
PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_TXN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ACCOUNT = re.compile(r"[^\x00-\x1f]{1,64}")

Status = Literal["applied", "duplicate", "waiting", "refused"]


class PaymentError(BillingError):
    """A payment notification that cannot be taken as given; the message names the field."""


class PaymentConflict(PaymentError):
    """The transaction id was already notified with other content (forged or corrupted)."""


@dataclass(frozen=True, slots=True)
class PaymentNotice:
    """One provider's word that money moved, whatever channel brought it."""

    provider: str
    txn_id: str
    kind: Literal["payment", "refund"]
    amount_fen: int
    currency: str
    occurred_at: datetime
    account_id: str | None = None  # payments: required; refunds: taken from the payment
    original_txn: str | None = None  # refunds: the payment they return

    def check(self) -> None:
        """Shape checks every channel shares; raises :class:`PaymentError` naming the field."""
        if not PROVIDER_NAME.fullmatch(self.provider):
            raise PaymentError(f"provider: {self.provider!r} must be a short lowercase name")
        if not isinstance(self.txn_id, str) or not _TXN.fullmatch(self.txn_id):
            raise PaymentError("txn_id: 1-64 of letters, digits, '_', '.', ':' or '-'")
        if self.kind not in ("payment", "refund"):
            raise PaymentError(f"kind: {self.kind!r} is not 'payment' or 'refund'")
        if isinstance(self.amount_fen, bool) or not isinstance(self.amount_fen, int):
            raise PaymentError("amount_fen: must be an integer number of fen")
        if not isinstance(self.occurred_at, datetime) or self.occurred_at.tzinfo is None:
            raise PaymentError("occurred_at: must be a time with its UTC offset")
        if self.kind == "payment":
            if not isinstance(self.account_id, str) or not _ACCOUNT.fullmatch(self.account_id):
                raise PaymentError("account: a payment names the account it pays into")
            if self.original_txn is not None:
                raise PaymentError("original_txn: only a refund names an original payment")
        elif not isinstance(self.original_txn, str) or not _TXN.fullmatch(self.original_txn):
            raise PaymentError("original_txn: a refund names the payment it returns")

    def fingerprint(self) -> str:
        """What a replay must repeat exactly (the account of a refund may be left out)."""
        fields = [
            self.kind,
            self.account_id if self.kind == "payment" else None,
            self.amount_fen,
            self.currency,
            self.original_txn,
            self.occurred_at.isoformat(),
        ]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    status: Status
    reason: str = ""
    balance: Decimal | None = None  # the account's balance after, when money moved


@dataclass(frozen=True, slots=True)
class PaymentRules:
    """What a site accepts: its currency and the largest single payment."""

    currency: str = CURRENCY
    max_amount: Decimal = DEFAULT_MAX_TOPUP


def ledger_key(notice: PaymentNotice) -> str:
    """The reference the ledger entry carries: the provider and its transaction id."""
    return f"{notice.provider}:{notice.txn_id}"


def apply_payment(
    conn: psycopg.Connection[Any],
    notice: PaymentNotice,
    *,
    channel: str,
    rules: PaymentRules | None = None,
) -> PaymentOutcome:
    """Record and apply one notification in one transaction; see the module docstring.

    ``channel`` is the ledger's payment channel the provider stands for (wechat, alipay,
    bank, counter). Raises :class:`PaymentError` for a malformed notice (nothing recorded)
    and :class:`PaymentConflict` for a transaction id reused with other content; a
    well-formed notice the site cannot take (currency, amount) is recorded as ``refused``.
    """
    notice.check()
    if channel not in CHANNELS:
        raise PaymentError(f"channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    rules = rules or PaymentRules()
    with conn.transaction():
        inserted = conn.execute(
            """INSERT INTO billing_payments (provider, provider_txn, kind, account_id,
                   amount_fen, currency, occurred_at, original_txn, state, fingerprint)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'waiting', %s)
               ON CONFLICT (provider, provider_txn) DO NOTHING RETURNING 1""",
            (
                notice.provider,
                notice.txn_id,
                notice.kind,
                notice.account_id,
                notice.amount_fen,
                notice.currency,
                notice.occurred_at,
                notice.original_txn,
                notice.fingerprint(),
            ),
        ).fetchone()
        if inserted is None:
            return _replayed(conn, notice)
        refusal = _refusal(conn, notice, channel, rules)
        if refusal:
            _set_state(conn, notice, "refused", refusal)
            return PaymentOutcome("refused", refusal)
        if notice.kind == "payment":
            outcome = _apply_topup(conn, notice, channel)
            for waiting in _waiting_refunds(conn, notice):
                _apply_refund(conn, waiting, channel)
            return outcome
        return _apply_refund(conn, notice, channel)


def _replayed(conn: psycopg.Connection[Any], notice: PaymentNotice) -> PaymentOutcome:
    row = conn.execute(
        """SELECT fingerprint, state, reason FROM billing_payments
           WHERE provider = %s AND provider_txn = %s FOR UPDATE""",
        (notice.provider, notice.txn_id),
    ).fetchone()
    assert row is not None  # the insert conflicted on it
    if row[0] != notice.fingerprint():
        raise PaymentConflict(
            f"txn_id: {notice.provider} transaction {notice.txn_id!r} was already notified "
            "with other content; refused"
        )
    if row[1] == "refused":
        return PaymentOutcome("refused", f"already refused: {row[2]}")
    return PaymentOutcome("duplicate", f"already {row[1]}")


def _refusal(
    conn: psycopg.Connection[Any], notice: PaymentNotice, channel: str, rules: PaymentRules
) -> str:
    """Why a well-formed notice cannot be taken ("" when it can)."""
    if notice.currency != rules.currency:
        return f"currency {notice.currency[:8]!r} is not {rules.currency}"
    if notice.amount_fen <= 0:
        return "amount must be more than zero"
    if notice.amount_fen > to_fen(rules.max_amount):
        return f"amount {from_fen(notice.amount_fen)} is over the {rules.max_amount} limit"
    if notice.kind == "refund":
        return ""
    if (
        conn.execute(
            "SELECT 1 FROM billing_accounts WHERE account_id = %s", (notice.account_id,)
        ).fetchone()
        is None
    ):
        return f"account {notice.account_id!r} does not exist"
    announced = conn.execute(
        """SELECT amount_fen FROM billing_topup_intents
           WHERE channel = %s AND reference = %s AND account_id = %s""",
        (channel, notice.txn_id, notice.account_id),
    ).fetchone()
    if announced is not None and announced[0] != notice.amount_fen:
        return (
            f"amount {from_fen(notice.amount_fen)} differs from the "
            f"{from_fen(announced[0])} announced for this payment"
        )
    return ""


def _set_state(
    conn: psycopg.Connection[Any],
    notice: PaymentNotice,
    state: str,
    reason: str | None,
    *,
    account_id: str | None = None,
    key: str | None = None,
) -> None:
    """Settle the row: ``key`` is the ledger entry's idempotency key once applied."""
    conn.execute(
        """UPDATE billing_payments SET state = %s, reason = %s,
               account_id = coalesce(account_id, %s), ledger_key = %s,
               applied_at = CASE WHEN %s::text IS NULL THEN NULL ELSE now() END
           WHERE provider = %s AND provider_txn = %s""",
        (state, reason, account_id, key, key, notice.provider, notice.txn_id),
    )


def _apply_topup(
    conn: psycopg.Connection[Any], notice: PaymentNotice, channel: str
) -> PaymentOutcome:
    assert notice.account_id is not None  # checked
    try:
        entry = topup(
            conn,
            notice.account_id,
            from_fen(notice.amount_fen),
            channel,
            ledger_key(notice),
            actor=f"payment:{notice.provider}",
        )
    except UnknownAccount as exc:  # closed between the check and now
        _set_state(conn, notice, "refused", str(exc))
        return PaymentOutcome("refused", str(exc))
    _set_state(conn, notice, "applied", None, key=entry.idempotency_key)
    conn.execute(  # the customer announced it by its transaction id: settled now
        "UPDATE billing_topup_intents SET settled_at = now() "
        "WHERE channel = %s AND reference = %s AND settled_at IS NULL",
        (channel, notice.txn_id),
    )
    return PaymentOutcome("applied", balance=entry.balance_after)


def _waiting_refunds(conn: psycopg.Connection[Any], payment: PaymentNotice) -> list[PaymentNotice]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT * FROM billing_payments WHERE provider = %s AND original_txn = %s
                 AND state = 'waiting' ORDER BY occurred_at, provider_txn FOR UPDATE""",
            (payment.provider, payment.txn_id),
        ).fetchall()
    return [
        PaymentNotice(
            r["provider"],
            r["provider_txn"],
            "refund",
            r["amount_fen"],
            r["currency"],
            r["occurred_at"],
            r["account_id"],
            r["original_txn"],
        )
        for r in rows
    ]


def _apply_refund(
    conn: psycopg.Connection[Any], notice: PaymentNotice, channel: str
) -> PaymentOutcome:
    original = conn.execute(
        """SELECT account_id, amount_fen, state FROM billing_payments
           WHERE provider = %s AND provider_txn = %s AND kind = 'payment' FOR UPDATE""",
        (notice.provider, notice.original_txn),
    ).fetchone()
    if original is None or original[2] != "applied":
        why = f"payment {notice.original_txn!r} " + (
            "not received yet" if original is None else f"is {original[2]}"
        )
        _set_state(conn, notice, "waiting", why)
        return PaymentOutcome("waiting", why)
    account, paid_fen, _ = original
    if notice.account_id not in (None, account):
        why = f"account {notice.account_id!r} is not the payment's ({account})"
        _set_state(conn, notice, "refused", why)
        return PaymentOutcome("refused", why)
    refunded = conn.execute(
        """SELECT coalesce(sum(amount_fen), 0) FROM billing_payments
           WHERE provider = %s AND original_txn = %s AND state = 'applied'""",
        (notice.provider, notice.original_txn),
    ).fetchone()
    assert refunded is not None
    if int(refunded[0]) + notice.amount_fen > paid_fen:
        why = (
            f"refunds would exceed the payment: {from_fen(int(refunded[0]))} already "
            f"refunded of {from_fen(paid_fen)}"
        )
        _set_state(conn, notice, "refused", why)
        return PaymentOutcome("refused", why)
    entry = refund(
        conn,
        account,
        from_fen(notice.amount_fen),
        ledger_key(notice),
        actor=f"payment:{notice.provider}",
    )
    _set_state(conn, notice, "applied", None, account_id=account, key=entry.idempotency_key)
    return PaymentOutcome("applied", balance=entry.balance_after)
