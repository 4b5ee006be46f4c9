"""Operator commands held against the policy (billing.manual), in a real database. Sending
is simulated in-process here (claim, then the ack a gateway would give); the same paths over
the real broker with the gateway peer are in test_billing_engine."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from billing_helpers import put_meter

from billing import (
    BillingError,
    CommandInFlight,
    CreditSettings,
    UnknownMeter,
    ledger,
    manual_holds,
    manual_relay,
    release_manual_hold,
)
from billing.disconnect import PolicyKnobs, evaluate_accounts, handle_deadlines, reconcile
from billing.lifecycle import apply_ack, audit_trail, claim_due
from billing.manual import end_expired_holds, hold_trail
from billing.policy import ProtectedWindows
from billing.tariffs import load_tariffs
from meterhub import wire

TARIFFS = load_tariffs()
CREDIT = CreditSettings(alert_thresholds=(Decimal(0),), warning_to_final_s=60,
                        final_to_cutoff_s=60)
NOON = datetime(2026, 11, 18, 4, 0, tzinfo=UTC)  # Wednesday 12:00 Shanghai
KNOBS = PolicyKnobs()


def account(conn: psycopg.Connection, acc: str, balance: str, meters: int = 1,
            **kw: object) -> list[str]:
    ids = [f"{acc}-m{i}" for i in range(meters)]
    ledger.create_account(conn, acc, meters=ids, tariff="residential-flat", credit=CREDIT,
                          opening_balance=balance, tariffs=TARIFFS, **kw)  # type: ignore[arg-type]
    for m in ids:
        put_meter(conn, m, "s1", "gw1")
    return ids


def gateway(conn: psycopg.Connection, now: datetime) -> list[tuple[str, str]]:
    """Send what is due and answer like a meter that obeys: (meter, action) executed."""
    done = []
    for out in claim_due(conn, now, KNOBS.retry, "test"):
        c = out.command
        relay = "open" if c.action == "relay_open" else "closed"
        apply_ack(conn, wire.Ack(c.command_id, out.gateway, c.meter, "done", now, "ok", relay),
                  "test")
        done.append((c.meter, c.action))
    return done


def tick(conn: psycopg.Connection, now: datetime) -> list[tuple[str, str]]:
    """What one engine pass does, without MQTT: holds, policy, deadlines, reconcile, send."""
    end_expired_holds(conn, now, KNOBS, "engine")
    evaluate_accounts(conn, now, KNOBS, "engine")
    handle_deadlines(conn, now, KNOBS, "engine")
    reconcile(conn, now, KNOBS, "engine")
    return gateway(conn, now)


def relay(conn: psycopg.Connection, meter: str) -> tuple[str, str]:
    row = conn.execute("SELECT relay_wanted, relay_reported FROM billing_meters "
                       "WHERE meter_id = %s", (meter,)).fetchone()
    assert row is not None
    return row


def phase(conn: psycopg.Connection, acc: str) -> str:
    row = conn.execute("SELECT phase FROM billing_accounts WHERE account_id = %s",
                       (acc,)).fetchone()
    assert row is not None
    return str(row[0])


def test_manual_cutoff_of_a_paying_account_stays_through_reconciliation(
    conn: psycopg.Connection,
) -> None:
    [m] = account(conn, "A", "100")
    cid = manual_relay(conn, m, "open", by="op:alice", reason="tampered seal", now=NOON)
    assert tick(conn, NOON) == [(m, "relay_open")]
    assert relay(conn, m) == ("open", "open")
    trail = audit_trail(conn, cid)
    assert trail[0][3] == "op:alice" and "tampered seal" in trail[0][4]
    # payments, charges and many passes later the relay is still open
    ledger.topup(conn, "A", "50", "wechat", "W1")
    t = NOON
    for _ in range(5):
        t += timedelta(minutes=10)
        assert tick(conn, t) == []
    assert relay(conn, m) == ("open", "open") and phase(conn, "A") == "normal"
    # someone closes it on site: reconciliation repairs towards the hold (the commands'
    # wall-clock updated_at is put back on this test's clock, past reconcile's grace)
    conn.execute("UPDATE billing_commands SET updated_at = %s", (t,))
    conn.execute("UPDATE billing_meters SET relay_reported = 'closed'")
    assert tick(conn, t + timedelta(minutes=10)) == [(m, "relay_open")]
    # released: the policy (a paying account: closed) applies at once
    assert release_manual_hold(conn, m, by="op:alice", now=t + timedelta(minutes=11))
    assert not release_manual_hold(conn, m, by="op:alice")  # nothing left to release
    assert tick(conn, t + timedelta(minutes=11)) == [(m, "relay_close")]
    assert relay(conn, m) == ("closed", "closed") and manual_holds(conn) == []
    assert [(h["event"], h["actor"], h["wanted"]) for h in hold_trail(conn, m)] == [
        ("set", "op:alice", "open"), ("released", "op:alice", "open")]


def test_manual_restore_holds_the_ladder_until_released(conn: psycopg.Connection) -> None:
    [m] = account(conn, "A", "-1")
    evaluate_accounts(conn, NOON, KNOBS, "engine")  # warned
    evaluate_accounts(conn, NOON + timedelta(seconds=61), KNOBS, "engine")  # final notice
    assert phase(conn, "A") == "final"
    manual_relay(conn, m, "closed", by="op:bob", reason="oxygen concentrator",
                 now=NOON + timedelta(seconds=62))
    t = NOON + timedelta(seconds=62)
    for _ in range(6):  # the cut-off is due from +122 s on; nothing is cut
        t += timedelta(minutes=5)
        tick(conn, t)
    assert phase(conn, "A") == "final" and relay(conn, m)[0] == "closed"
    assert conn.execute("SELECT count(*) FROM billing_commands WHERE action = 'relay_open'"
                        ).fetchone() == (0,)
    row = conn.execute("SELECT hold_reason FROM billing_accounts").fetchone()
    assert row == ("manual hold",)
    held = conn.execute("SELECT message FROM billing_alerts WHERE kind = 'cutoff_held'"
                        ).fetchall()
    assert len(held) == 1 and "op:bob" in held[0][0]  # told once, naming the operator
    release_manual_hold(conn, m, by="op:bob", now=t)
    assert tick(conn, t + timedelta(seconds=1)) == [(m, "relay_open")]
    assert phase(conn, "A") == "cut" and relay(conn, m) == ("open", "open")


def test_manual_restore_of_a_cut_account_ends_with_its_hold(conn: psycopg.Connection) -> None:
    [m] = account(conn, "A", "-1")
    t = NOON
    for step in (0, 61, 61):
        t += timedelta(seconds=step)
        tick(conn, t)
    assert phase(conn, "A") == "cut" and relay(conn, m) == ("open", "open")
    until = t + timedelta(hours=2)
    cid = manual_relay(conn, m, "closed", by="op:bob", reason="funeral", hold_until=until,
                       now=t)
    assert tick(conn, t) == [(m, "relay_close")]
    while t < until - timedelta(minutes=10):  # policy ticks during the hold: still on
        t += timedelta(minutes=10)
        ledger.adjust(conn, "A", "-0.01", f"x{t.timestamp()}", reason="test")  # dirty
        assert tick(conn, t) == []
    assert relay(conn, m) == ("closed", "closed") and phase(conn, "A") == "cut"
    assert audit_trail(conn, cid)[0][3] == "op:bob"
    # the hold ends: the policy's cut-off resumes
    assert tick(conn, until + timedelta(seconds=1)) == [(m, "relay_open")]
    assert relay(conn, m) == ("open", "open")
    trail = [(h["event"], h["actor"]) for h in hold_trail(conn, m)]
    assert trail == [("set", "op:bob"), ("expired", "engine")]
    cut = conn.execute("SELECT purpose, created_at FROM billing_commands "
                       "ORDER BY created_at DESC LIMIT 1").fetchone()
    assert cut is not None and cut[0] == "cutoff" and cut[1] > until


def test_topup_restores_the_meters_not_held_off(conn: psycopg.Connection) -> None:
    a, b = account(conn, "A", "-1", meters=2)
    t = NOON
    for step in (0, 61, 61):
        t += timedelta(seconds=step)
        tick(conn, t)
    assert relay(conn, a) == relay(conn, b) == ("open", "open")
    manual_relay(conn, b, "open", by="op:carol", reason="illegal tap", now=t)
    tick(conn, t)
    ledger.topup(conn, "A", "30", "counter", "C1")
    t += timedelta(minutes=1)
    assert tick(conn, t) == [(a, "relay_close")]  # a top-up restores as before ...
    assert relay(conn, b) == ("open", "open")  # ... but not the meter held off
    msg = conn.execute("SELECT message FROM billing_alerts WHERE kind = 'restored'").fetchone()
    assert msg is not None and b in msg[0]
    for _ in range(3):
        t += timedelta(minutes=10)
        assert tick(conn, t) == []


def test_manual_cutoff_is_not_deferred_by_a_protected_window(conn: psycopg.Connection) -> None:
    nights = ProtectedWindows(ZoneInfo("Asia/Shanghai"), (time(18), time(8)))
    [m] = account(conn, "A", "100", windows=nights)
    night = datetime(2026, 11, 18, 14, 0, tzinfo=UTC)  # 22:00 local
    manual_relay(conn, m, "open", by="op:alice", reason="fire", now=night)
    assert len(claim_due(conn, night, KNOBS.retry, "test")) == 1  # sent; lost on the way
    handle_deadlines(conn, night + timedelta(seconds=31), KNOBS, "engine")
    row = conn.execute("SELECT state, next_attempt_at FROM billing_commands").fetchone()
    assert row is not None and row[0] == "queued"
    assert row[1] < night + timedelta(minutes=5)  # retried in the night, not in the morning


def test_refusals_change_nothing(conn: psycopg.Connection) -> None:
    [m] = account(conn, "A", "100")
    with pytest.raises(UnknownMeter):
        manual_relay(conn, "nope", "open", by="op", reason="")
    with pytest.raises(BillingError, match="future"):
        manual_relay(conn, m, "open", by="op", reason="", hold_until=NOON, now=NOON)
    with pytest.raises(BillingError, match="operator"):
        manual_relay(conn, m, "open", by=" ", reason="")
    manual_relay(conn, m, "open", by="op:alice", reason="first")
    with pytest.raises(CommandInFlight):
        manual_relay(conn, m, "closed", by="op:dave", reason="second")
    [h] = manual_holds(conn)
    assert (h["wanted"], h["by"]) == ("open", "op:alice")
    assert [e["event"] for e in hold_trail(conn, m)] == ["set"]
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute("DELETE FROM billing_manual_hold_audit")
