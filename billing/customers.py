"""Customers: who an account belongs to and how to reach them (sync; psycopg Connection).

Contacts are checked here, once, with errors naming the field, because a wrong number found
only when a cut-off notice bounces is the expensive way to learn it. Changing a contact
clears the verified flag (nobody has confirmed the new one); verifying the contacts resolves
the customer's open undeliverable entries, which delivery failures feed (tenants move,
numbers change) and staff work through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.errors import BillingError

CONTACT_CHANNELS = ("sms", "email", "wechat")
LANGUAGES = ("zh-CN", "en")

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_PHONE = re.compile(r"\+[1-9][0-9]{6,14}")  # E.164
_EMAIL = re.compile(r"[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+")
_OPENID = re.compile(r"[A-Za-z0-9_-]{6,64}")
_MAX_TEXT = 200


class CustomerError(BillingError):
    """A customer or contact that cannot be stored as given; the message names the field."""


class UnknownCustomer(CustomerError):
    pass


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    name: str
    phones: tuple[str, ...]
    email: str | None
    wechat_openid: str | None
    preferred_channel: str
    language: str
    address: str
    compound: str | None
    contact_verified: bool
    contact_verified_at: datetime | None

    def contact(self, channel: str) -> str | None:
        """The address to use on ``channel`` (the first phone for SMS), or None."""
        if channel == "sms":
            return self.phones[0] if self.phones else None
        return {"email": self.email, "wechat": self.wechat_openid}.get(channel)

    def channels(self) -> list[str]:
        """Channels with a contact, the preferred one first: the order delivery tries."""
        order = [
            self.preferred_channel,
            *(c for c in CONTACT_CHANNELS if c != self.preferred_channel),
        ]
        return [c for c in order if self.contact(c)]


@dataclass(frozen=True, slots=True)
class Undeliverable:
    undeliverable_id: int
    customer_id: str
    name: str
    channel: str
    contact: str
    reason: str
    failures: int
    first_failed_at: datetime
    last_failed_at: datetime


def _text(value: object, field: str, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise CustomerError(f"{field}: must be text")
    value = value.strip()
    if required and not value:
        raise CustomerError(f"{field}: must not be empty")
    if len(value) > _MAX_TEXT or any(ord(c) < 32 for c in value):
        raise CustomerError(f"{field}: at most {_MAX_TEXT} characters, no control characters")
    return value


def check_phone(value: object, field: str = "phones") -> str:
    """An E.164 number: ``+``, country code, subscriber number (spaces and dashes dropped)."""
    text = re.sub(r"[\s-]", "", _text(value, field))
    if not _PHONE.fullmatch(text):
        raise CustomerError(f"{field}: {text[:20]!r} is not an E.164 number like +8613800138000")
    return text


def check_email(value: object, field: str = "email") -> str:
    text = _text(value, field)
    if not _EMAIL.fullmatch(text):
        raise CustomerError(f"{field}: {text[:40]!r} is not an e-mail address")
    return text


def check_openid(value: object, field: str = "wechat_openid") -> str:
    text = _text(value, field)
    if not _OPENID.fullmatch(text):
        raise CustomerError(f"{field}: a WeChat openid is 6-64 letters, digits, '_' or '-'")
    return text


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the given fields (only those present); contacts normalised."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "name":
            out[key] = _text(value, "name", required=True)
        elif key == "phones":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise CustomerError("phones: give a list of numbers")
            out[key] = list(
                dict.fromkeys(check_phone(p, f"phones[{i}]") for i, p in enumerate(value))
            )
        elif key in ("email", "wechat_openid"):
            check = check_email if key == "email" else check_openid
            out[key] = None if value in (None, "") else check(value, key)
        elif key == "preferred_channel":
            if value not in CONTACT_CHANNELS:
                raise CustomerError(
                    f"preferred_channel: {value!r} is not one of {', '.join(CONTACT_CHANNELS)}"
                )
            out[key] = value
        elif key == "language":
            if value not in LANGUAGES:
                raise CustomerError(f"language: {value!r} is not one of {', '.join(LANGUAGES)}")
            out[key] = value
        elif key in ("address", "compound"):
            text = _text(value or "", key)
            out[key] = text or (None if key == "compound" else "")
        else:
            raise CustomerError(f"{key}: not a customer field")
    return out


_CONTACT_FIELDS = frozenset({"phones", "email", "wechat_openid"})


def _customer(row: Mapping[str, Any]) -> Customer:
    return Customer(
        customer_id=row["customer_id"],
        name=row["name"],
        phones=tuple(row["phones"]),
        email=row["email"],
        wechat_openid=row["wechat_openid"],
        preferred_channel=row["preferred_channel"],
        language=row["language"],
        address=row["address"],
        compound=row["compound"],
        contact_verified=row["contact_verified"],
        contact_verified_at=row["contact_verified_at"],
    )


def create_customer(
    conn: psycopg.Connection[Any], customer_id: str, *, name: str, **fields: Any
) -> Customer:
    """Register a customer; other fields as in :func:`update_customer`. Contacts start
    unverified (``verify_contacts`` after staff confirmed them)."""
    if not isinstance(customer_id, str) or not _ID.fullmatch(customer_id):
        raise CustomerError("customer_id: 1-64 of letters, digits, '_', '.', ':' or '-'")
    values = _clean({"name": name, **fields})
    _check_preferred(values)
    cols = ["customer_id", *values]
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            row = cur.execute(
                f"INSERT INTO billing_customers ({', '.join(cols)}) "
                f"VALUES ({', '.join(['%s'] * len(cols))}) RETURNING *",
                [customer_id, *values.values()],
            ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise CustomerError(f"customer {customer_id!r} already exists") from None
    assert row is not None
    return _customer(row)


def _check_preferred(values: Mapping[str, Any]) -> None:
    preferred = values.get("preferred_channel", "sms")
    contact = {
        "sms": values.get("phones"),
        "email": values.get("email"),
        "wechat": values.get("wechat_openid"),
    }[preferred]
    if not contact:
        raise CustomerError(f"preferred_channel: {preferred} needs a contact on that channel")


def update_customer(conn: psycopg.Connection[Any], customer_id: str, **fields: Any) -> Customer:
    """Change fields (name, phones, email, wechat_openid, preferred_channel, language,
    address, compound). A changed contact is unverified until staff verify it again."""
    values = _clean(fields)
    with conn.transaction():
        old = _lock(conn, customer_id)
        merged = {
            k: old[k] for k in ("phones", "email", "wechat_openid", "preferred_channel")
        } | values
        _check_preferred(merged)
        contact_changed = any(k in _CONTACT_FIELDS and values[k] != old[k] for k in values)
        sets = dict(values)
        if contact_changed:
            sets |= {
                "contact_verified": False,
                "contact_verified_at": None,
                "contact_verified_by": None,
            }
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "UPDATE billing_customers SET updated_at = now()"
                + "".join(f", {k} = %({k})s" for k in sets)
                + " WHERE customer_id = %(customer_id)s RETURNING *",
                {**sets, "customer_id": customer_id},
            ).fetchone()
    assert row is not None
    return _customer(row)


def _lock(conn: psycopg.Connection[Any], customer_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_customers WHERE customer_id = %s FOR UPDATE", (customer_id,)
        ).fetchone()
    if row is None:
        raise UnknownCustomer(f"customer {customer_id!r} does not exist")
    return row


def get_customer(conn: psycopg.Connection[Any], customer_id: str) -> Customer:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_customers WHERE customer_id = %s", (customer_id,)
        ).fetchone()
    if row is None:
        raise UnknownCustomer(f"customer {customer_id!r} does not exist")
    return _customer(row)


def link_account(conn: psycopg.Connection[Any], account_id: str, customer_id: str) -> None:
    """The account belongs to this customer (one customer may hold several accounts)."""
    with conn.transaction():
        _lock(conn, customer_id)
        cur = conn.execute(
            "UPDATE billing_accounts SET customer_id = %s WHERE account_id = %s",
            (customer_id, account_id),
        )
        if cur.rowcount != 1:
            raise BillingError(f"account {account_id!r} does not exist")


def customer_of_account(conn: psycopg.Connection[Any], account_id: str) -> Customer | None:
    """The customer an account belongs to (None: no customer linked yet)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """SELECT c.* FROM billing_accounts a
               JOIN billing_customers c ON c.customer_id = a.customer_id
               WHERE a.account_id = %s""",
            (account_id,),
        ).fetchone()
    return _customer(row) if row else None


def accounts_of(conn: psycopg.Connection[Any], customer_id: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT account_id FROM billing_accounts WHERE customer_id = %s ORDER BY account_id",
            (customer_id,),
        )
    ]


def verify_contacts(
    conn: psycopg.Connection[Any], customer_id: str, *, by: str, at: datetime
) -> int:
    """Staff confirmed the customer's contacts: set the flag and date, and resolve the open
    undeliverable entries of contacts the customer still has. Returns entries resolved."""
    if at.tzinfo is None:
        raise CustomerError("at: must be a timezone-aware datetime")
    by = _text(by, "by", required=True)
    with conn.transaction():
        _lock(conn, customer_id)
        conn.execute(
            """UPDATE billing_customers SET contact_verified = true, contact_verified_at = %s,
                   contact_verified_by = %s WHERE customer_id = %s""",
            (at, by, customer_id),
        )
        cur = conn.execute(
            """UPDATE billing_undeliverable_contacts SET resolved_at = %s, resolved_by = %s
               WHERE customer_id = %s AND resolved_at IS NULL""",
            (at, by, customer_id),
        )
    return cur.rowcount


def mark_undeliverable(
    conn: psycopg.Connection[Any],
    customer_id: str,
    channel: str,
    contact: str,
    reason: str,
    *,
    at: datetime,
) -> None:
    """A delivery found this contact dead: list it for staff and clear the verified flag."""
    if channel not in CONTACT_CHANNELS:
        raise CustomerError(f"channel: {channel!r} is not one of {', '.join(CONTACT_CHANNELS)}")
    with conn.transaction():
        conn.execute(
            """INSERT INTO billing_undeliverable_contacts (customer_id, channel, contact, reason,
                   first_failed_at, last_failed_at) VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (customer_id, channel, contact) WHERE resolved_at IS NULL
               DO UPDATE SET failures = billing_undeliverable_contacts.failures + 1,
                   reason = EXCLUDED.reason, last_failed_at = EXCLUDED.last_failed_at""",
            (customer_id, channel, contact, reason[:500], at, at),
        )
        conn.execute(
            """UPDATE billing_customers SET contact_verified = false,
                   contact_verified_at = NULL, contact_verified_by = NULL
               WHERE customer_id = %s""",
            (customer_id,),
        )


def undeliverable_contacts(
    conn: psycopg.Connection[Any], *, limit: int = 500
) -> list[Undeliverable]:
    """Open entries for staff to re-verify, most recently failed first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT u.*, c.name FROM billing_undeliverable_contacts u
               JOIN billing_customers c USING (customer_id)
               WHERE u.resolved_at IS NULL ORDER BY u.last_failed_at DESC LIMIT %s""",
            (limit,),
        ).fetchall()
    return [
        Undeliverable(
            r["undeliverable_id"],
            r["customer_id"],
            r["name"],
            r["channel"],
            r["contact"],
            r["reason"],
            r["failures"],
            r["first_failed_at"],
            r["last_failed_at"],
        )
        for r in rows
    ]
