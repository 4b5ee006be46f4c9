"""The ways payment news arrives, each turned into :class:`billing.payments.PaymentNotice`:
a provider's signed webhook, a bank's direct-debit batch file, the cash desk.

Webhooks are signed with the provider's shared secret in the scheme of
:mod:`meterhub.security.webhooks`. A notification whose signature does not verify is forged; one
whose timestamp is further than ``tolerance_s`` from now is a replay (or a broken clock):
both are refused before anything is parsed or stored, and a genuine redelivery inside the
tolerance is a harmless duplicate (idempotent by transaction id).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing.errors import BillingError
from billing.money import MoneyError, parse_amount, to_fen
from billing.payments import CURRENCY, PaymentError, PaymentNotice
from meterhub.security import webhooks
from meterhub.security.secrets import Secret
from meterhub.security.webhooks import SIGNATURE_HEADER, verify_signature

MAX_BODY = 64 * 1024
MAX_FILE_ROWS = 100_000


class SignatureError(PaymentError):
    """Forged, unsigned or replayed: refused before the body is believed."""


@dataclass(frozen=True)
class WebhookProvider:
    """A payment provider that notifies by signed HTTP POSTs (see the module docstring).

    The body is JSON: ``{"event": "payment.succeeded" | "refund.succeeded", "txn_id",
    "account" (payments), "original_txn" (refunds), "amount_fen": int, "currency",
    "occurred_at": ISO 8601 with offset}``; other events are acknowledged and ignored.
    """

    name: str
    secret: Secret
    channel: str  # the ledger channel it stands for: wechat, alipay, bank
    tolerance_s: float = 300.0

    def parse(self, headers: Any, body: bytes, *, now: datetime) -> PaymentNotice | None:
        """Verify and decode one notification; None for an event that moves no money."""
        if len(body) > MAX_BODY:
            raise PaymentError(f"body: over {MAX_BODY} bytes")
        try:
            verify_signature(
                self.secret.reveal().encode(),
                headers.get(SIGNATURE_HEADER),
                body,
                now=now,
                tolerance_s=self.tolerance_s,
            )
        except webhooks.SignatureError as exc:
            raise SignatureError(str(exc)) from None
        try:
            doc = json.loads(body, parse_float=_no_float, parse_constant=_no_float)
        except (ValueError, RecursionError) as exc:
            raise PaymentError(f"body: not JSON ({str(exc)[:80]})") from None
        if not isinstance(doc, dict):
            raise PaymentError("body: must be a JSON object")
        event = doc.get("event")
        kinds = {"payment.succeeded": "payment", "refund.succeeded": "refund"}
        if not isinstance(event, str):
            raise PaymentError("event: missing")
        if event not in kinds:
            return None
        amount = doc.get("amount_fen")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise PaymentError("amount_fen: must be an integer number of fen")
        notice = PaymentNotice(
            provider=self.name,
            txn_id=_field(doc, "txn_id"),
            kind=kinds[event],  # type: ignore[arg-type]
            amount_fen=amount,
            currency=_field(doc, "currency"),
            occurred_at=_time(_field(doc, "occurred_at"), "occurred_at"),
            account_id=doc.get("account") if kinds[event] == "payment" else None,
            original_txn=doc.get("original_txn") if kinds[event] == "refund" else None,
        )
        notice.check()
        return notice


def _no_float(text: str) -> Any:
    raise PaymentError(f"amounts are integers of fen; {text[:20]!r} is not")


def _field(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise PaymentError(f"{key}: missing or not text of at most 64 characters")
    return value


def _time(text: str, field: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PaymentError(f"{field}: {text[:40]!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise PaymentError(f"{field}: {text[:40]!r} has no UTC offset")
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------- files

DEBIT_COLUMNS = ("txn_id", "account", "amount", "currency", "collected_at", "status")
STATEMENT_COLUMNS = ("txn_id", "kind", "amount", "currency", "occurred_at")


class FileError(BillingError):
    """A batch or statement file that cannot be read; names the line and column."""


def read_rows(text: str, columns: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str]]]:
    """CSV rows with these columns (a header line first), as (line number, row)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise FileError(
            f"{what}: line 1: missing columns {', '.join(missing)} (expected {','.join(columns)})"
        )
    rows = []
    for row in reader:
        if reader.line_num > MAX_FILE_ROWS + 1:
            raise FileError(f"{what}: more than {MAX_FILE_ROWS} rows; split the file")
        if None in row or any(row.get(c) is None for c in columns):
            raise FileError(f"{what}: line {reader.line_num}: wrong number of fields")
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
    return rows


def amount_fen(text: str, where: str) -> int:
    """A yuan amount from a file (``50.00``), exact, as fen."""
    try:
        value: Decimal = parse_amount(text, what=where)
    except MoneyError as exc:
        raise FileError(str(exc)) from None
    return to_fen(value)


def file_time(text: str, where: str) -> datetime:
    try:
        return _time(text, where)
    except PaymentError as exc:
        raise FileError(str(exc)) from None


def debit_notices(text: str, provider: str) -> list[PaymentNotice]:
    """A bank's direct-debit result file: one row per collection; only ``ok`` rows moved
    money (``failed`` rows are listed by the bank but are not payments). Every problem in
    the file is reported at once, with line numbers, before anything is applied."""
    notices, problems = [], []
    for line, row in read_rows(text, DEBIT_COLUMNS, "debit file"):
        where = f"debit file: line {line}"
        try:
            status = row["status"].lower()
            if status not in ("ok", "failed"):
                raise FileError(f"{where}: status: {row['status']!r} is not ok or failed")
            if status == "failed":
                continue
            notice = PaymentNotice(
                provider=provider,
                txn_id=row["txn_id"],
                kind="payment",
                amount_fen=amount_fen(row["amount"], f"{where}: amount"),
                currency=row["currency"],
                occurred_at=file_time(row["collected_at"], f"{where}: collected_at"),
                account_id=row["account"],
            )
            try:
                notice.check()
            except PaymentError as exc:
                raise FileError(f"{where}: {exc}") from None
            notices.append(notice)
        except FileError as exc:
            problems.append(str(exc))
    if problems:
        raise FileError(
            "; ".join(problems[:20])
            + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    return notices


def cash_notice(
    account_id: str,
    amount: Decimal,
    receipt: str,
    *,
    at: datetime,
    desk: str = "cash",
    currency: str = CURRENCY,
) -> PaymentNotice:
    """Money taken at the cash desk against a numbered receipt (the transaction id)."""
    return PaymentNotice(
        provider=desk,
        txn_id=receipt,
        kind="payment",
        amount_fen=to_fen(amount),
        currency=currency,
        occurred_at=at,
        account_id=account_id,
    )
