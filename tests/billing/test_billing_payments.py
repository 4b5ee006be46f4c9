"""Payments from providers: idempotent by transaction id, currency and amount checked,
refunds out of order, signed webhooks over real HTTP (forged and replayed ones refused),
direct-debit files, the cash desk, and the daily reconciliation against the ledger."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import announce_topup, balance, create_account
from billing.payment_channels import FileError, cash_notice, debit_notices
from billing.payment_http import PaymentsConfig, serve
from billing.payment_reconcile import open_differences, reconcile_statement, resolve_difference
from billing.payments import (
    PaymentConflict,
    PaymentError,
    PaymentNotice,
    apply_payment,
)
from meterhub.security.files import write_private_file
from meterhub.security.webhooks import SignatureError, sign, verify_signature

pytestmark = pytest.mark.integration
AT = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SECRET = b"provider-shared-secret-0123456789"


def _pay(txn: str, fen: int, account: str = "acc-1", **kw: object) -> PaymentNotice:
    return PaymentNotice(
        **(
            {
                "provider": "acmepay",
                "txn_id": txn,
                "kind": "payment",
                "amount_fen": fen,
                "currency": "CNY",
                "occurred_at": AT,
                "account_id": account,
            }
            | kw
        )
    )  # type: ignore[arg-type]


def _refund(txn: str, fen: int, original: str) -> PaymentNotice:
    return PaymentNotice(
        "acmepay", txn, "refund", fen, "CNY", AT + timedelta(minutes=5), None, original
    )


@pytest.fixture
def account(conn: psycopg.Connection) -> str:
    create_account(conn, "acc-1", meters=["m-1"], tariff="residential-flat")
    return "acc-1"


def _entries(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT kind, amount_fen, reference FROM billing_ledger "
        "WHERE account_id = 'acc-1' ORDER BY entry_id"
    ).fetchall()


def test_payment_applied_once_and_replay_with_other_content_refused(conn, account) -> None:
    assert apply_payment(conn, _pay("T1", 5025), channel="wechat").status == "applied"
    assert apply_payment(conn, _pay("T1", 5025), channel="wechat").status == "duplicate"
    with pytest.raises(PaymentConflict, match="other content"):
        apply_payment(conn, _pay("T1", 9999), channel="wechat")
    assert _entries(conn) == [("topup", 5025, "acmepay:T1")]
    assert balance(conn, account) == Decimal("50.25")


def test_currency_amount_and_account_checked(conn, account) -> None:
    out = apply_payment(conn, _pay("T2", 100, currency="USD"), channel="wechat")
    assert (out.status, out.reason) == ("refused", "currency 'USD' is not CNY")
    out = apply_payment(conn, _pay("T3", 100, account="nobody"), channel="wechat")
    assert out.status == "refused" and "does not exist" in out.reason
    out = apply_payment(conn, _pay("T4", 10_000_001), channel="wechat")
    assert out.status == "refused" and "limit" in out.reason
    announce_topup(conn, account, "30.00", "wechat", "T5")
    out = apply_payment(conn, _pay("T5", 2000), channel="wechat")
    assert out.status == "refused" and "30.00 announced" in out.reason
    assert (
        apply_payment(conn, _pay("T2", 100, currency="USD"), channel="wechat").status == "refused"
    )  # a replay stays refused
    with pytest.raises(PaymentError, match="amount_fen"):
        apply_payment(conn, _pay("T6", Decimal("1.5")), channel="wechat")  # type: ignore[arg-type]
    assert _entries(conn) == []
    states = conn.execute(
        "SELECT provider_txn, state FROM billing_payments ORDER BY provider_txn"
    ).fetchall()
    assert states == [("T2", "refused"), ("T3", "refused"), ("T4", "refused"), ("T5", "refused")]


def test_refund_before_its_payment_waits_then_applies(conn, account) -> None:
    assert apply_payment(conn, _refund("R1", 1000, "T7"), channel="wechat").status == "waiting"
    assert _entries(conn) == []
    assert apply_payment(conn, _pay("T7", 3000), channel="wechat").status == "applied"
    assert _entries(conn) == [("topup", 3000, "acmepay:T7"), ("refund", -1000, "acmepay:R1")]
    out = apply_payment(conn, _refund("R2", 2001, "T7"), channel="wechat")
    assert out.status == "refused" and "exceed" in out.reason
    assert apply_payment(conn, _refund("R3", 2000, "T7"), channel="wechat").status == "applied"
    assert balance(conn, account) == Decimal("0.00")


def test_debit_file_and_cash_desk(conn, account) -> None:
    text = (
        "txn_id,account,amount,currency,collected_at,status\n"
        "D1,acc-1,12.34,CNY,2026-12-03T09:00:00+08:00,ok\n"
        "D2,acc-1,99.00,CNY,2026-12-03T09:00:00+08:00,failed\n"
    )
    notices = debit_notices(text, "bank-icbc")
    assert [(n.txn_id, n.amount_fen) for n in notices] == [("D1", 1234)]
    for n in notices * 2:  # the same file imported twice
        apply_payment(conn, n, channel="bank")
    bad = (
        "txn_id,account,amount,currency,collected_at,status\n"
        "D3,acc-1,1.234,CNY,2026-12-03T09:00:00+08:00,ok\n"
        "D4,acc-1,1.00,CNY,yesterday,ok\n"
    )
    with pytest.raises(FileError, match=r"line 2: amount.*line 3: collected_at"):
        debit_notices(bad, "bank-icbc")
    apply_payment(conn, cash_notice(account, Decimal("20"), "RC-0001", at=AT), channel="counter")
    assert _entries(conn) == [("topup", 1234, "bank-icbc:D1"), ("topup", 2000, "cash:RC-0001")]


def test_reconciliation_lists_injected_differences(conn, account) -> None:
    apply_payment(conn, _pay("S1", 1000), channel="wechat")
    apply_payment(conn, _pay("S2", 2000), channel="wechat")
    apply_payment(conn, _pay("S3", 3000), channel="wechat")
    statement = (
        "txn_id,kind,amount,currency,occurred_at\n"
        "S1,payment,10.00,CNY,2026-12-03T10:00:00+08:00\n"
        "S2,payment,20.01,CNY,2026-12-03T10:00:00+08:00\n"  # injected: 1 fen more
        "S4,payment,5.00,CNY,2026-12-03T11:00:00+08:00\n"
    )  # never notified
    run = reconcile_statement(conn, "acmepay", date(2026, 12, 3), statement, by="clerk")
    found = {(d.txn_id, d.kind, d.statement_fen, d.ledger_fen) for d in run.differences}
    assert found == {
        ("S2", "amount_mismatch", 2001, 2000),
        ("S4", "missing_in_ledger", 500, None),
        ("S3", "missing_in_statement", None, 3000),
    }
    assert (run.statement_rows, run.matched, run.repeated) == (3, 1, False)
    again = reconcile_statement(conn, "acmepay", date(2026, 12, 3), statement, by="clerk")
    assert again.repeated and again.run_id == run.run_id
    rows = open_differences(conn)
    assert len(rows) == 3
    resolve_difference(conn, rows[0][0], by="clerk", resolution="provider corrected")
    assert len(open_differences(conn)) == 2


def test_reconciliation_of_a_clean_day_has_no_differences(conn, account) -> None:
    apply_payment(conn, _pay("S1", 1000), channel="wechat")
    statement = (
        "txn_id,kind,amount,currency,occurred_at\nS1,payment,10.00,CNY,2026-12-03T10:00:00+08:00\n"
    )
    run = reconcile_statement(conn, "acmepay", date(2026, 12, 3), statement, by="clerk")
    assert run.differences == [] and run.matched == 1


# ------------------------------------------------------------------ signed webhook, real HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def payments_config(tmp_path: Path) -> PaymentsConfig:
    write_private_file(tmp_path / "acmepay.secret", SECRET + b"\n")
    (tmp_path / "payments.toml").write_text(
        'currency = "CNY"\n[providers.acmepay]\nchannel = "wechat"\n'
        'secret = {file = "acmepay.secret"}\ntolerance_s = 300\n'
    )
    return PaymentsConfig.load(tmp_path / "payments.toml")


def _body(txn: str, fen: int, account: str = "acc-1") -> bytes:
    return json.dumps(
        {
            "event": "payment.succeeded",
            "txn_id": txn,
            "account": account,
            "amount_fen": fen,
            "currency": "CNY",
            "occurred_at": "2026-12-03T10:00:00+08:00",
        }
    ).encode()


async def test_webhook_applies_signed_and_refuses_forged_or_replayed(
    db_url, account, payments_config, caplog
) -> None:
    port, stop = _free_port(), asyncio.Event()
    server = asyncio.create_task(serve(db_url, payments_config, "127.0.0.1", port, stop))
    url = f"http://127.0.0.1:{port}/payments/acmepay"
    now = int(datetime.now(UTC).timestamp())
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                try:
                    async with http.post(url, data=b"{}"):
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)

            async def post(body: bytes, header: str | None) -> tuple[int, dict]:
                headers = {"Meterhub-Signature": header} if header else {}
                async with http.post(url, data=body, headers=headers) as r:
                    return r.status, await r.json()

            body = _body("W1", 4200)
            assert await post(body, sign(SECRET, body, now)) == (
                200,
                {"status": "applied", "reason": ""},
            )
            assert (await post(body, sign(SECRET, body, now)))[1]["status"] == "duplicate"
            forged = _body("W2", 999_00)
            status, answer = await post(forged, sign(b"guessed", forged, now))
            assert status == 401 and "does not match" in answer["error"]
            status, _ = await post(forged, None)
            assert status == 401
            tampered = _body("W1", 9_999_00)  # a signed body altered in flight
            assert (await post(tampered, sign(SECRET, body, now)))[0] == 401
            replay = _body("W3", 100)  # captured an hour ago, sent again now
            status, answer = await post(replay, sign(SECRET, replay, now - 3600))
            assert status == 401 and "replay" in answer["error"]
            usd = json.dumps({**json.loads(_body("W4", 100)), "currency": "USD"}).encode()
            status, answer = await post(usd, sign(SECRET, usd, now))
            assert status == 422 and "USD" in answer["error"]
            floaty = b'{"event": "payment.succeeded", "amount_fen": 1.5}'
            assert (await post(floaty, sign(SECRET, floaty, now)))[0] == 400
            async with http.post(url.replace("acmepay", "other"), data=b"{}") as r:
                assert r.status == 404
    finally:
        stop.set()
        await server
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT kind, amount_fen FROM billing_ledger").fetchall() == [
            ("topup", 4200)
        ]
    assert SECRET.decode() not in caplog.text


def test_config_refuses_inline_secret_and_names_keys(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"providers.acme.secret: give it as"):
        PaymentsConfig.from_dict({"providers": {"acme": {"channel": "wechat", "secret": "inline"}}})
    with pytest.raises(Exception, match=r"currency: a 3-letter.*providers.acme.channel"):
        PaymentsConfig.from_dict({"currency": "yuan", "providers": {"acme": {}}})


@settings(deadline=None)  # timing is not the property; CI is loaded
@given(st.binary(max_size=200), st.integers(0, 2**31), st.integers(0, 199), st.integers(1, 255))
def test_any_altered_byte_breaks_the_signature(
    body: bytes, stamp: int, pos: int, flip: int
) -> None:
    header = sign(SECRET, body, stamp)
    at = datetime.fromtimestamp(stamp, UTC)
    verify_signature(SECRET, header, body, now=at, tolerance_s=300)
    if body:
        i = pos % len(body)
        altered = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
        with pytest.raises(SignatureError):
            verify_signature(SECRET, header, altered, now=at, tolerance_s=300)
