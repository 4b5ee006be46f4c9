"""The disconnect policy applied to accounts in a real database (no broker needed: the
commands are only queued here; sending is covered by test_billing_engine)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
from billing_helpers import T0, put_intervals, put_meter

from billing import ledger, lifecycle
from billing.charging import charge_all
from billing.disconnect import (
    PolicyKnobs,
    absorb_reported_relays,
    evaluate_accounts,
    handle_deadlines,
    reconcile,
)
from billing.lifecycle import apply_ack
from billing.policy import CreditSettings, ProtectedWindows
from billing.reports import list_accounts
from billing.tariffs import load_tariffs
from meterhub import wire

TARIFFS = load_tariffs()
CREDIT = CreditSettings(alert_thresholds=(Decimal(10), Decimal(0)), warning_to_final_s=60,
                        final_to_cutoff_s=60)
NOON = datetime(2026, 11, 18, 4, 0, tzinfo=UTC)  # Wednesday 12:00 Shanghai
KNOBS = PolicyKnobs(max_group_cutoffs=2)


def account(conn: psycopg.Connection, acc: str, balance: str, **kw: object) -> None:
    kw.setdefault("credit", CREDIT)
    ledger.create_account(conn, acc, meters=[f"{acc}-m"], tariff="residential-flat",
                          opening_balance=balance, tariffs=TARIFFS, **kw)  # type: ignore[arg-type]


def phases(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT account_id, phase FROM billing_accounts").fetchall())


def cutoffs(conn: psycopg.Connection) -> list[str]:
    return [a for (a,) in conn.execute(
        "SELECT account_id FROM billing_commands WHERE action = 'relay_open' "
        "AND state <> 'cancelled' ORDER BY account_id")]


def kinds(conn: psycopg.Connection, acc: str) -> list[str]:
    return [k for (k,) in conn.execute(
        "SELECT kind FROM billing_alerts WHERE account_id = %s ORDER BY alert_id", (acc,))]


def ladder(conn: psycopg.Connection, start: datetime = NOON) -> datetime:
    """Walk the clock through warning, final warning and the cut-off moment."""
    t = start
    for step in (0, 61, 61):
        t += timedelta(seconds=step)
        evaluate_accounts(conn, t, KNOBS, "test")
    return t


def test_warning_final_warning_then_cutoff(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1.00")
    evaluate_accounts(conn, NOON, KNOBS, "test")
    assert phases(conn) == {"A": "warned"} and cutoffs(conn) == []
    evaluate_accounts(conn, NOON + timedelta(seconds=30), KNOBS, "test")
    assert phases(conn) == {"A": "warned"}
    evaluate_accounts(conn, NOON + timedelta(seconds=61), KNOBS, "test")
    assert phases(conn) == {"A": "final"} and cutoffs(conn) == []
    evaluate_accounts(conn, NOON + timedelta(seconds=122), KNOBS, "test")
    assert phases(conn) == {"A": "cut"} and cutoffs(conn) == ["A"]
    assert kinds(conn, "A") == ["low_balance", "low_balance", "warning", "final_warning",
                                "cutoff"]
    assert conn.execute("SELECT relay_wanted FROM billing_meters").fetchone() == ("open",)


def test_emergency_credit_defers_the_ladder(conn: psycopg.Connection) -> None:
    account(conn, "A", "-4.99", credit=CreditSettings(
        alert_thresholds=(Decimal(0),), emergency_credit=Decimal(5), warning_to_final_s=60,
        final_to_cutoff_s=60))
    ladder(conn)
    assert phases(conn) == {"A": "normal"}
    ledger.adjust(conn, "A", "-0.02", "x", reason="test")
    ladder(conn, NOON + timedelta(hours=1))
    assert phases(conn) == {"A": "cut"}


def test_protected_window_holds_then_cuts_when_it_opens(conn: psycopg.Connection) -> None:
    nights = ProtectedWindows(ZoneInfo("Asia/Shanghai"), (time(18), time(8)))
    account(conn, "A", "-1", windows=nights)
    evening = datetime(2026, 11, 18, 9, 58, tzinfo=UTC)  # 17:58 local: due at 18:00:02
    t = ladder(conn, evening)
    assert phases(conn) == {"A": "final"} and cutoffs(conn) == []
    evaluate_accounts(conn, t + timedelta(hours=3), KNOBS, "test")  # still night
    assert kinds(conn, "A").count("cutoff_held") == 1  # told once, not every pass
    row = conn.execute("SELECT hold_reason FROM billing_accounts").fetchone()
    assert row == ("protected window",)
    morning = datetime(2026, 11, 19, 0, 5, tzinfo=UTC)  # 08:05 local
    evaluate_accounts(conn, morning, KNOBS, "test")
    assert cutoffs(conn) == ["A"]


def test_pending_topup_holds_and_payment_clears(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1")
    evaluate_accounts(conn, NOON, KNOBS, "test")
    evaluate_accounts(conn, NOON + timedelta(seconds=61), KNOBS, "test")
    ledger.announce_topup(conn, "A", "30", "bank", "TX-9")
    evaluate_accounts(conn, NOON + timedelta(seconds=122), KNOBS, "test")
    assert phases(conn) == {"A": "final"} and cutoffs(conn) == []
    ledger.topup(conn, "A", "30", "bank", "TX-9")  # settles the announced payment
    evaluate_accounts(conn, NOON + timedelta(seconds=123), KNOBS, "test")
    assert phases(conn) == {"A": "normal"} and cutoffs(conn) == []


def test_mass_cutoff_waits_for_approval(conn: psycopg.Connection) -> None:
    for a in ("A", "B", "C"):
        account(conn, a, "-1", group="T1")
    account(conn, "D", "-1", group="T2")
    ladder(conn)
    assert cutoffs(conn) == ["D"]  # the other transformer is not held up
    assert phases(conn)["A"] == "final"
    row = conn.execute("SELECT households, approved_at FROM billing_cutoff_approvals "
                       "WHERE group_key = 'T1'").fetchone()
    assert row == (3, None)
    assert ledger.approve_cutoffs(conn, "T1", by="duty engineer")
    evaluate_accounts(conn, NOON + timedelta(seconds=130), KNOBS, "test")
    assert cutoffs(conn) == ["A", "B", "C", "D"]


def test_restore_after_topup_even_inside_a_window(conn: psycopg.Connection) -> None:
    nights = ProtectedWindows(ZoneInfo("Asia/Shanghai"), (time(18), time(8)))
    account(conn, "A", "-1", windows=nights)
    t = ladder(conn)
    assert phases(conn) == {"A": "cut"}
    # the cut-off is still queued (never sent): a payment cancels it instead of a restore
    ledger.topup(conn, "A", "20", "counter", "C1")
    evaluate_accounts(conn, t + timedelta(hours=8), KNOBS, "test")  # 20:00 local
    rows = conn.execute("SELECT action, state FROM billing_commands ORDER BY created_at")
    assert rows.fetchall() == [("relay_open", "cancelled"), ("relay_close", "queued")]
    assert phases(conn) == {"A": "normal"}


def test_unsendable_command_expires(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1")  # its meter was never heard: no gateway to send to
    t = ladder(conn)
    handle_deadlines(conn, t + timedelta(hours=2), KNOBS, "test")
    assert conn.execute("SELECT state FROM billing_commands").fetchone() == ("expired",)


def test_risk_grade_and_days_left_from_history(conn: psycopg.Connection) -> None:
    ledger.create_account(conn, "A", meters=["m"], tariff="residential-flat",
                          opening_balance="1", charge_from=T0, tariffs=TARIFFS)
    now = T0 + timedelta(days=7)
    put_intervals(conn, "m", ["0.25"] * 96 * 7)  # 1 kWh an hour for a week: 13.44 yuan/day
    charge_all(conn, TARIFFS)
    ledger.topup(conn, "A", "200", "wechat", "late")  # paid while below zero
    [s] = list_accounts(conn, TARIFFS, now=now)
    assert s.balance == Decimal("200") + 1 - Decimal("94.08")
    assert s.risk_grade == "B"  # went below zero once and paid late: an early warning
    # the last 4 weeks hold one week of use, so the weekly average is a quarter of it
    assert s.days_left == (s.balance / (Decimal("13.44") / 4)).quantize(Decimal("0.1"))


def test_failed_cutoff_is_tried_again_by_reconciliation(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1")
    t = ladder(conn)
    conn.execute("UPDATE billing_commands SET state = 'failed', updated_at = %s", (t,))
    assert reconcile(conn, t + timedelta(seconds=10), KNOBS, "test").queued == 0  # grace first
    assert reconcile(conn, t + timedelta(seconds=60), KNOBS, "test").queued == 1
    rows = conn.execute("SELECT purpose, state FROM billing_commands ORDER BY created_at")
    assert rows.fetchall() == [("cutoff", "failed"), ("reconcile", "queued")]


def test_retry_rechecks_pending_topup_and_balance(conn: psycopg.Connection) -> None:
    from billing_helpers import put_meter

    from billing.lifecycle import claim_due

    account(conn, "A", "-1")
    put_meter(conn, "A-m", "s1", "gw1")
    t = ladder(conn)
    [out] = claim_due(conn, t, KNOBS.retry, "test")  # sent, and then nothing comes back
    assert out.command.attempt == 1
    ledger.announce_topup(conn, "A", "10", "bank", "TX-1")
    handle_deadlines(conn, t + timedelta(seconds=31), KNOBS, "test")
    row = conn.execute("SELECT state, next_attempt_at FROM billing_commands").fetchone()
    assert row is not None and row[0] == "queued"
    assert row[1] >= t + timedelta(minutes=5)  # deferred while the payment is on its way
    ledger.topup(conn, "A", "10", "bank", "TX-1")
    evaluate_accounts(conn, t + timedelta(seconds=40), KNOBS, "test")
    rows = conn.execute("SELECT action, state FROM billing_commands ORDER BY created_at")
    assert rows.fetchall() == [("relay_open", "cancelled"), ("relay_close", "queued")]


def test_one_broken_account_spoils_no_other(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1")
    account(conn, "B", "-1")
    conn.execute("""UPDATE billing_accounts SET credit = '{"cutoff_threshold": "x y"}'
                    WHERE account_id = 'A'""")
    evaluate_accounts(conn, NOON, KNOBS, "test")
    assert phases(conn) == {"A": "normal", "B": "warned"}
    assert "billing_error" in kinds(conn, "A")


def test_acks_only_count_from_the_gateway_the_command_went_to(conn: psycopg.Connection) -> None:
    from billing_helpers import put_meter

    from billing.lifecycle import CommandState, apply_ack, claim_due
    from meterhub import wire

    account(conn, "A", "-1")
    put_meter(conn, "A-m", "s1", "gw1")
    t = ladder(conn)
    [out] = claim_due(conn, t, KNOBS.retry, "test")

    def ack(gateway: str, meter: str) -> wire.Ack:
        return wire.Ack(out.command.command_id, gateway, meter, "done", t, "ok", "open")

    assert apply_ack(conn, ack("gw2", "A-m"), "test").changed is False  # type: ignore[union-attr]
    assert apply_ack(conn, ack("gw1", "other"), "test").changed is False  # type: ignore[union-attr]
    assert conn.execute("SELECT state FROM billing_commands").fetchone() == ("sent",)
    result = apply_ack(conn, ack("gw1", "A-m"), "test")
    assert result is not None and result.state is CommandState.VERIFIED
    again = apply_ack(conn, ack("gw1", "A-m"), "test")  # a re-delivered ack changes nothing
    assert again is not None and not again.changed


def report_relay(conn: psycopg.Connection, meter: str, relay: str, at: datetime) -> None:
    """What the collector stores when a reading carries the meter's relay state."""
    conn.execute("UPDATE meters SET relay = %s, relay_at = %s WHERE meter_id = %s",
                 (relay, at, meter))


def tamper_alerts(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute("SELECT account_id, meter_id FROM billing_alerts WHERE kind = 'tamper' "
                        "ORDER BY alert_id").fetchall()


def test_relay_movements_no_command_explains_are_tamper(conn: psycopg.Connection) -> None:
    account(conn, "A", "-1")
    put_meter(conn, "A-m", "s1", "gw1")
    # on the wall clock: reconciliation's grace compares with the rows' updated_at (now())
    t = ladder(conn, datetime.now(UTC))  # cut off: relay_open queued, relay wanted open
    [out] = lifecycle.claim_due(conn, t, KNOBS.retry, "test")
    # paid while the cut-off is on its way: a restore is wanted, but the relay opening is
    # the cut-off's doing (its ack not in yet), not tampering
    ledger.topup(conn, "A", "50", "wechat", "W-1")
    evaluate_accounts(conn, t + timedelta(seconds=1), KNOBS, "test")
    assert conn.execute("SELECT relay_wanted FROM billing_meters").fetchone() == ("closed",)
    report_relay(conn, "A-m", "open", t + timedelta(seconds=2))
    assert absorb_reported_relays(conn) == 0 and tamper_alerts(conn) == []
    apply_ack(conn, wire.Ack(out.command.command_id, "gw1", "A-m", "done", t, "ok", "open"),
              "test")
    # the restore goes out and closes the relay; then the relay opens with no command
    later = t + timedelta(minutes=5)
    done = reconcile(conn, later, KNOBS, "test")
    assert (done.queued, done.tampered) == (1, 0)
    [restore] = lifecycle.claim_due(conn, later, KNOBS.retry, "test")
    apply_ack(conn, wire.Ack(restore.command.command_id, "gw1", "A-m", "done", later, "ok",
                             "closed"), "test")
    report_relay(conn, "A-m", "open", later + timedelta(minutes=1))
    done = reconcile(conn, later + timedelta(minutes=2), KNOBS, "test")
    assert (done.queued, done.tampered) == (1, 1)  # alerted, and the restore re-issued
    assert tamper_alerts(conn) == [("A", "A-m")]
    assert conn.execute("SELECT action, purpose FROM billing_commands WHERE state = 'queued'"
                        ).fetchall() == [("relay_close", "reconcile")]


def test_a_relay_closed_while_cut_off_is_tamper_and_the_cut_off_is_reissued(
    conn: psycopg.Connection,
) -> None:
    account(conn, "A", "-1")
    put_meter(conn, "A-m", "s1", "gw1")
    t = ladder(conn, datetime.now(UTC))
    [out] = lifecycle.claim_due(conn, t, KNOBS.retry, "test")
    apply_ack(conn, wire.Ack(out.command.command_id, "gw1", "A-m", "done", t, "ok", "open"),
              "test")
    report_relay(conn, "A-m", "closed", t + timedelta(minutes=1))  # bypassed on site
    done = reconcile(conn, t + timedelta(minutes=2), KNOBS, "test")
    assert (done.queued, done.tampered) == (1, 1)
    assert conn.execute("SELECT action, purpose FROM billing_commands WHERE state = 'queued'"
                        ).fetchall() == [("relay_open", "reconcile")]
    # a reading repeating the same state raises nothing new
    report_relay(conn, "A-m", "closed", t + timedelta(minutes=3))
    assert absorb_reported_relays(conn) == 0 and len(tamper_alerts(conn)) == 1


def test_low_balance_and_restore_become_customer_notices(conn: psycopg.Connection) -> None:
    """Each low-balance alert and each restore records a notice for notify (both languages,
    one per alert), in the transaction of the decision."""
    from billing import notices_of

    account(conn, "A", "-1.00")
    ladder(conn)
    evaluate_accounts(conn, NOON + timedelta(seconds=300), KNOBS, "test")  # nothing new
    ledger.topup(conn, "A", "50", "wechat", "PAY-1")
    evaluate_accounts(conn, NOON + timedelta(seconds=400), KNOBS, "test")
    assert phases(conn) == {"A": "normal"}
    got = [(n.kind, n.required, n.params) for n in reversed(notices_of(conn, "A"))]
    assert got == [
        ("low_balance", False, {"account": "A", "balance": "-1.00", "threshold": "10.00"}),
        ("low_balance", False, {"account": "A", "balance": "-1.00", "threshold": "0.00"}),
        ("restore", False, {"account": "A", "balance": "49.00", "restore_mode": "close"}),
    ]
    restore = notices_of(conn, "A")[0]
    assert "49.00" in restore.texts["zh-CN"]["body"] and "restored" in restore.texts["en"][
        "subject"]
