"""billing.notices: the record billing writes and the notify part delivers (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from billing import NoticeError, due_notices, ledger, notices_of, record_evidence, record_notice

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
TEXTS = {
    "zh-CN": {"subject": "电费账单", "body": "您本月电费 12.30 元。"},
    "en": {"subject": "Electricity bill", "body": "Your bill is 12.30 yuan."},
}


@pytest.fixture
def account(conn: psycopg.Connection) -> str:
    ledger.create_account(conn, "N1", meters=["nm1"], tariff="residential-flat", charge_from=T0)
    return "N1"


def _record(
    conn: psycopg.Connection, account: str, key: str | None = "bill:N1:2026-03", **kw: object
) -> int:
    args: dict[str, object] = dict(
        account_id=account,
        kind="bill",
        required=False,
        not_before=T0,
        params={"amount": "12.30"},
        texts=TEXTS,
        dedupe_key=key,
    )
    args.update(kw)
    return record_notice(conn, **args)  # type: ignore[arg-type]


def test_record_is_idempotent_by_dedupe_key(conn: psycopg.Connection, account: str) -> None:
    first = _record(conn, account)
    assert _record(conn, account) == first
    assert [n.notice_id for n in notices_of(conn, account)] == [first]
    with pytest.raises(NoticeError, match="dedupe_key"):
        _record(conn, account, kind="reminder")


def test_due_until_delivered_then_closed(conn: psycopg.Connection, account: str) -> None:
    later = _record(conn, account, key="r", kind="reminder", not_before=T0 + timedelta(days=1))
    now = _record(conn, account, key="c", kind="cutoff", required=True)
    assert [n.notice_id for n in due_notices(conn, now=T0)] == [now]
    assert [n.notice_id for n in due_notices(conn, now=T0 + timedelta(days=2))] == [now, later]
    record_evidence(conn, now, at=T0, channel="sms", outcome="failed", detail="no signal")
    (still,) = [n for n in due_notices(conn, now=T0) if n.notice_id == now]
    assert (still.attempts, still.last_outcome) == (1, "failed")
    assert still.texts == TEXTS and still.params == {"amount": "12.30"} and still.required
    record_evidence(conn, now, at=T0, channel="sms", outcome="delivered", provider_ref="p-1")
    assert due_notices(conn, now=T0) == []


def test_withdrawn_notice_is_not_due(conn: psycopg.Connection, account: str) -> None:
    from billing.notices import withdraw

    _record(conn, account, key="r", kind="reminder")
    assert withdraw(conn, account, ["reminder"], at=T0) == 1
    assert due_notices(conn, now=T0) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "shout"}, "kind"),
        ({"params": {"amount": 12}}, "params"),
        ({"texts": {"en": TEXTS["en"]}}, "zh-CN"),
        ({"texts": {**TEXTS, "en": {"subject": "x", "body": " "}}}, "body"),
        ({"texts": {**TEXTS, "fr": TEXTS["en"]}}, "unknown languages"),
        ({"not_before": datetime(2026, 3, 2)}, "not_before"),
        ({"required": "yes"}, "required"),
    ],
)
def test_hostile_notice_names_the_field(
    conn: psycopg.Connection, account: str, change: dict[str, object], field: str
) -> None:
    with pytest.raises(NoticeError, match=field):
        _record(conn, account, **change)


def test_evidence_checked_and_notices_immutable(conn: psycopg.Connection, account: str) -> None:
    nid = _record(conn, account)
    with pytest.raises(NoticeError, match="outcome"):
        record_evidence(conn, nid, at=T0, channel="sms", outcome="maybe")
    with pytest.raises(NoticeError, match="channel"):
        record_evidence(conn, nid, at=T0, channel="SMS; drop", outcome="sent")
    with pytest.raises(NoticeError, match="notice_id"):
        record_evidence(conn, nid + 99, at=T0, channel="sms", outcome="sent")
    with pytest.raises(psycopg.errors.RaiseException, match="evidence"):
        conn.execute("UPDATE billing_notices SET texts = '{}' WHERE notice_id = %s", (nid,))
    with pytest.raises(psycopg.errors.RaiseException, match="evidence"):
        conn.execute("DELETE FROM billing_notices WHERE notice_id = %s", (nid,))
    record_evidence(conn, nid, at=T0, channel="letter", outcome="posted")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("DELETE FROM billing_notice_evidence")
