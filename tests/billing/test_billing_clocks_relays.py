"""Meter clocks and relay capability in billing, on a real database: the time-sync policy and
its read-back verification, prepaid accounts on relay-less meters (refused or flagged), and
reconciliation that gives up after a bounded number of attempts with a site-visit alert."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from billing_helpers import put_meter

from billing import RelaylessMeter, ledger, lifecycle
from billing.clocks import ClockPolicy, queue_time_syncs
from billing.disconnect import PolicyKnobs, evaluate_accounts, reconcile
from billing.policy import CreditSettings
from billing.retry import RetryPolicy
from billing.tariffs import load_tariffs
from meterhub import wire

TARIFFS = load_tariffs()
NOON = datetime(2026, 11, 18, 4, 0, tzinfo=UTC)  # Wednesday 12:00 Shanghai
CREDIT = CreditSettings(alert_thresholds=(Decimal(0),), warning_to_final_s=60,
                        final_to_cutoff_s=60)
KNOBS = PolicyKnobs(reconcile_max_attempts=2)
RETRY = RetryPolicy()
POLICY = ClockPolicy(threshold_s=60, tolerance_s=5, min_gap_s=3600)


def capabilities(conn: psycopg.Connection, gateway: str, meters: dict[str, bool]) -> None:
    """The gateway's status, as the collector stores it: each meter's capabilities."""
    health = {"meters": {m: {"capabilities": {"relay": relay, "time_sync": True,
                                              "clock": True}} for m, relay in meters.items()}}
    conn.execute("INSERT INTO gateways (gateway, site, state, health) VALUES (%s, 's1', "
                 "'online', %s) ON CONFLICT (gateway) DO UPDATE SET health = excluded.health",
                 (gateway, json.dumps(health)))


def clock_check(conn: psycopg.Connection, meter: str, at: datetime, drift: float) -> None:
    conn.execute("INSERT INTO clock_checks (meter_id, read_at, meter_clock, drift_s, gateway) "
                 "VALUES (%s, %s, %s, %s, 'gw1')",
                 (meter, at, at + timedelta(seconds=drift), drift))


def account(conn: psycopg.Connection, acc: str, meter: str, balance: str = "10",
            **kw: object) -> None:
    ledger.create_account(conn, acc, meters=[meter], tariff="residential-flat",
                          opening_balance=balance, tariffs=TARIFFS, credit=CREDIT,
                          **kw)  # type: ignore[arg-type]


def alerts(conn: psycopg.Connection, kind: str) -> list[tuple[str, str]]:
    return conn.execute("SELECT meter_id, message FROM billing_alerts WHERE kind = %s "
                        "ORDER BY alert_id", (kind,)).fetchall()


def commands(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    return conn.execute("SELECT action, purpose, state FROM billing_commands "
                        "ORDER BY created_at, command_id").fetchall()


# ---------------------------------------------------------------------------- relays


@pytest.fixture
def relayless(conn: psycopg.Connection) -> str:
    """m97: a DL/T645-1997 meter its gateway reports without a relay; m07 has one."""
    put_meter(conn, "m97", "s1", "gw1")
    put_meter(conn, "m07", "s1", "gw1")
    capabilities(conn, "gw1", {"m97": False, "m07": True})
    return "m97"


def test_a_prepaid_account_on_a_relayless_meter_is_refused(conn, relayless) -> None:
    with pytest.raises(RelaylessMeter, match="meter m97 of account 'A' has no relay"):
        account(conn, "A", relayless)
    assert conn.execute("SELECT count(*) FROM billing_accounts").fetchone() == (0,)
    account(conn, "B", "m07")  # a meter with a relay is fine
    # a meter never heard of yet cannot be judged: it is accepted (capability unknown)
    account(conn, "C", "m-new")


def test_flagged_it_needs_a_site_visit_and_no_command_is_ever_sent(conn, relayless) -> None:
    account(conn, "A", relayless, balance="-1", relayless="flag")
    assert conn.execute("SELECT no_relay FROM billing_meters WHERE meter_id = 'm97'"
                        ).fetchone() == (True,)
    assert [m for m, _ in alerts(conn, "site_visit")] == ["m97"]
    t = NOON
    for step in (0, 61, 61):  # warning, final warning, cut-off
        t += timedelta(seconds=step)
        evaluate_accounts(conn, t, KNOBS, "test")
    assert conn.execute("SELECT phase FROM billing_accounts").fetchone() == ("cut",)
    for minutes in (2, 4, 6):
        reconcile(conn, t + timedelta(minutes=minutes), KNOBS, "test")
    assert commands(conn) == []  # nothing the meter cannot execute
    assert len(alerts(conn, "site_visit")) == 1  # asked once, not on every pass
    assert "site visit" in alerts(conn, "site_visit")[0][1]


def test_a_meter_found_relayless_after_the_account_opened_gets_no_cutoff(conn) -> None:
    account(conn, "A", "m-later", balance="-1")
    put_meter(conn, "m-later", "s1", "gw1")
    capabilities(conn, "gw1", {"m-later": False})
    t = NOON
    for step in (0, 61, 61):
        t += timedelta(seconds=step)
        evaluate_accounts(conn, t, KNOBS, "test")
    assert commands(conn) == []
    assert [m for m, _ in alerts(conn, "site_visit")] == ["m-later"]


def test_reconciliation_gives_up_after_its_bound_and_asks_for_a_visit(conn, relayless) -> None:
    account(conn, "A", "m07")
    conn.execute("UPDATE billing_meters SET relay_wanted = 'open', relay_reported = 'closed'")
    t = NOON
    for _ in range(5):  # each repair fails at the meter
        t += timedelta(minutes=5)
        reconcile(conn, t, KNOBS, "test")
        conn.execute("UPDATE billing_commands SET state = 'failed', updated_at = %s "
                     "WHERE state = 'queued'", (t,))
    assert commands(conn) == [("relay_open", "reconcile", "failed")] * 2  # the bound
    [(meter, message)] = alerts(conn, "site_visit")
    assert meter == "m07" and "after 2 reconciliation attempts" in message
    # the relay reads as wanted again (a person went): counting starts afresh
    conn.execute("UPDATE billing_meters SET relay_reported = 'open'")
    reconcile(conn, t + timedelta(minutes=5), KNOBS, "test")
    assert conn.execute("SELECT reconcile_attempts, site_visit_since FROM billing_meters"
                        ).fetchone() == (0, None)


# ---------------------------------------------------------------------------- clocks


@pytest.fixture
def synced(conn: psycopg.Connection) -> str:
    put_meter(conn, "m1", "s1", "gw1")
    capabilities(conn, "gw1", {"m1": True})
    account(conn, "A", "m1")
    return "m1"


def _ack(conn: psycopg.Connection, at: datetime, drift: float | None) -> lifecycle.AckResult:
    [out] = lifecycle.claim_due(conn, at, RETRY, "test")
    assert out.command.action == "time_sync" and (out.site, out.gateway) == ("s1", "gw1")
    clock = None if drift is None else wire.ClockCheck(at + timedelta(seconds=drift), at)
    result = lifecycle.apply_ack(conn, wire.Ack(out.command.command_id, "gw1", "m1", "done",
                                                at, "ok", None, None, clock), "gw1")
    assert result is not None
    return result


def test_a_drifted_clock_is_synced_and_verified_by_the_read_back(conn, synced) -> None:
    clock_check(conn, synced, NOON, 30.0)  # within the threshold
    assert queue_time_syncs(conn, NOON, POLICY, RETRY, "test") == 0
    clock_check(conn, synced, NOON + timedelta(minutes=1), 95.0)
    t = NOON + timedelta(minutes=2)
    assert queue_time_syncs(conn, t, POLICY, RETRY, "test") == 1
    assert queue_time_syncs(conn, t, POLICY, RETRY, "test") == 0  # one in flight
    assert _ack(conn, t, 0.4).state is lifecycle.CommandState.VERIFIED
    row = conn.execute("SELECT purpose, clock_drift_s, reason FROM billing_commands").fetchone()
    assert row[:2] == ("time_sync", 0.4) and "95 s ahead" in row[2]
    # the check that caused it is older than the sync: no second sync for it
    assert queue_time_syncs(conn, t + timedelta(hours=2), POLICY, RETRY, "test") == 0
    # drifted again, long after: synced again
    clock_check(conn, synced, t + timedelta(hours=2), -70.0)
    assert queue_time_syncs(conn, t + timedelta(hours=2), POLICY, RETRY, "test") == 1


def test_a_clock_still_off_after_the_sync_fails_and_waits_for_the_gap(conn, synced) -> None:
    clock_check(conn, synced, NOON, 300.0)
    assert queue_time_syncs(conn, NOON, POLICY, RETRY, "test") == 1
    result = _ack(conn, NOON, 299.0)
    assert result.state is lifecycle.CommandState.FAILED
    assert "still +299.0 s off" in conn.execute("SELECT reason FROM billing_commands"
                                                ).fetchone()[0]
    clock_check(conn, synced, NOON + timedelta(minutes=5), 300.0)
    assert queue_time_syncs(conn, NOON + timedelta(minutes=5), POLICY, RETRY, "test") == 0
    assert queue_time_syncs(conn, NOON + timedelta(minutes=61), POLICY, RETRY, "test") == 1


def test_a_sync_not_read_back_stays_confirmed(conn, synced) -> None:
    clock_check(conn, synced, NOON, 300.0)
    queue_time_syncs(conn, NOON, POLICY, RETRY, "test")
    assert _ack(conn, NOON, None).state is lifecycle.CommandState.CONFIRMED


def test_a_cutoff_supersedes_a_waiting_time_sync(conn, synced) -> None:
    clock_check(conn, synced, NOON, 300.0)
    queue_time_syncs(conn, NOON, POLICY, RETRY, "test")
    ledger.adjust(conn, "A", Decimal("-20"), "t1", reason="test", actor="test")
    t = NOON
    for step in (0, 61, 61):
        t += timedelta(seconds=step)
        evaluate_accounts(conn, t, KNOBS, "test")
    assert commands(conn) == [("time_sync", "time_sync", "cancelled"),
                              ("relay_open", "cutoff", "queued")]


def test_clock_policy_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="tolerance_s < threshold_s"):
        ClockPolicy(threshold_s=5, tolerance_s=10)


def test_a_status_value_that_is_not_a_boolean_reads_as_unknown(conn) -> None:
    """The gateway's status is free-form: a capability that is not a JSON boolean must not
    break the view billing reads (nor make the meter count as relay-less)."""
    put_meter(conn, "mx", "s1", "gw1")
    conn.execute("""INSERT INTO gateways (gateway, site, state, health) VALUES ('gw1', 's1',
                    'online', '{"meters": {"mx": {"capabilities": {"relay": "maybe",
                    "time_sync": 1}}}}')""")
    assert conn.execute("SELECT relay_capable, time_sync_capable FROM meter_field_contract "
                        "WHERE meter_id = 'mx'").fetchone() == (None, None)
    account(conn, "A", "mx")  # accepted: the capability is unknown


def test_waiting_for_the_customers_button_is_not_a_failed_repair(conn, relayless) -> None:
    account(conn, "A", "m07")
    conn.execute("UPDATE billing_meters SET relay_wanted = 'closed', relay_reported = 'open', "
                 "customer_action_needed = true")
    t = NOON
    for _ in range(5):  # each pass asks how the relay stands; the customer has not pressed
        t += timedelta(minutes=5)
        reconcile(conn, t, KNOBS, "test")
        conn.execute("UPDATE billing_commands SET state = 'verified', updated_at = %s "
                     "WHERE state = 'queued'", (t,))
    assert commands(conn) == [("relay_status", "reconcile", "verified")] * 5
    assert alerts(conn, "site_visit") == []
