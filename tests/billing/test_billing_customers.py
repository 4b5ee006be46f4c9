"""Customers: contacts checked once with errors naming the field, verified flag and date,
links to accounts, and the undeliverable list staff re-verify."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import create_account
from billing.customers import (
    CustomerError,
    UnknownCustomer,
    check_phone,
    create_customer,
    customer_of_account,
    link_account,
    mark_undeliverable,
    undeliverable_contacts,
    update_customer,
    verify_contacts,
)

pytestmark = pytest.mark.integration
AT = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def _customer(conn: psycopg.Connection, cid: str = "c-1", **kw: object):
    fields = {
        "phones": ["+86 138-0013-8000"],
        "email": "wang@example.com",
        "wechat_openid": "oXyZ_123456",
        "preferred_channel": "wechat",
        "language": "zh-CN",
        "address": "3-2-501",
        "compound": "Garden Court",
    } | kw
    return create_customer(conn, cid, name="Wang Fang", **fields)


def test_customer_fields_stored_and_channels_in_preference_order(conn) -> None:
    c = _customer(conn)
    assert c.phones == ("+8613800138000",)  # spaces and dashes dropped
    assert c.channels() == ["wechat", "sms", "email"]
    assert c.contact("sms") == "+8613800138000"
    assert (c.contact_verified, c.contact_verified_at) == (False, None)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("phones", ["13800138000"], r"phones\[0\]"),  # no country code
        ("phones", "+8613800138000", "list"),
        ("email", "no-at-sign", "email"),
        ("wechat_openid", "bad id!", "wechat_openid"),
        ("language", "fr", "language"),
        ("preferred_channel", "fax", "preferred_channel"),
        ("address", "line\x00break", "address"),
    ],
)
def test_bad_fields_are_refused_by_name(conn, field: str, value: object, says: str) -> None:
    with pytest.raises(CustomerError, match=says):
        _customer(conn, **{field: value})
    assert conn.execute("SELECT count(*) FROM billing_customers").fetchone() == (0,)


def test_preferred_channel_needs_a_contact(conn) -> None:
    with pytest.raises(CustomerError, match="preferred_channel: email needs a contact"):
        _customer(conn, email=None, preferred_channel="email")


def test_changing_a_contact_unverifies_it_and_verifying_resolves_undeliverable(conn) -> None:
    _customer(conn)
    verify_contacts(conn, "c-1", by="clerk-li", at=AT)
    c = update_customer(conn, "c-1", address="3-2-502")
    assert c.contact_verified and c.contact_verified_at == AT  # not a contact
    mark_undeliverable(conn, "c-1", "sms", "+8613800138000", "unknown subscriber", at=AT)
    mark_undeliverable(conn, "c-1", "sms", "+8613800138000", "unknown subscriber", at=AT)
    [entry] = undeliverable_contacts(conn)
    assert (entry.customer_id, entry.channel, entry.failures) == ("c-1", "sms", 2)
    c = update_customer(conn, "c-1", phones=["+8613900139000"])
    assert not c.contact_verified
    assert verify_contacts(conn, "c-1", by="clerk-li", at=AT) == 1
    assert undeliverable_contacts(conn) == []
    with pytest.raises(UnknownCustomer):
        update_customer(conn, "nobody", name="x")


def test_account_link(conn) -> None:
    _customer(conn)
    create_account(conn, "acc-1", meters=["m-1"], tariff="residential-flat")
    assert customer_of_account(conn, "acc-1") is None
    link_account(conn, "acc-1", "c-1")
    assert customer_of_account(conn, "acc-1").customer_id == "c-1"
    with pytest.raises(UnknownCustomer):
        link_account(conn, "acc-1", "c-2")


@settings(deadline=None)  # timing is not the property; CI is loaded
@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_every_e164_number_is_accepted_unchanged(number: str) -> None:
    assert check_phone(number) == number


@settings(deadline=None)  # timing is not the property; CI is loaded
@given(st.text(max_size=30))
def test_phone_check_never_crashes(text: str) -> None:
    try:
        out = check_phone(text)
    except CustomerError as exc:
        assert "phones" in str(exc)
    else:
        assert out.startswith("+") and out[1:].isdigit()
