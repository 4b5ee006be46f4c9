"""Billing's contracts: the command states it stores, the one retry policy, and what it may
read of the collector (the ``meter_contract`` view, never the ``meters`` table)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from billing_helpers import put_meter

from billing.lifecycle import ACTIVE, TERMINAL, CommandState, sql_states
from billing.retry import RetryPolicy

BILLING = Path(__file__).resolve().parents[2] / "billing"
T = datetime(2026, 3, 1, tzinfo=UTC)


def _sources() -> dict[str, str]:
    return {p.name: p.read_text("utf-8") for p in sorted(BILLING.glob("*.py"))}


def test_command_states_are_the_stored_ones(conn: psycopg.Connection) -> None:
    row = conn.execute(
        """SELECT pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = 'billing_commands'::regclass AND contype = 'c'
             AND pg_get_constraintdef(oid) LIKE '%state%'"""
    ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'", row[0])) == {s.value for s in CommandState}
    assert set(CommandState) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL


def test_in_flight_literal_matches_the_one_command_per_meter_index(
    conn: psycopg.Connection,
) -> None:
    row = conn.execute(
        "SELECT pg_get_indexdef('billing_commands_one_active'::regclass)"
    ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'", row[0])) == {s.value for s in ACTIVE}
    assert sql_states(ACTIVE) == "('queued', 'sent', 'accepted', 'timed_out')"


def test_retry_policy_backs_off_doubling_up_to_the_cap() -> None:
    p = RetryPolicy(backoff_s=5, max_backoff_s=30, ack_timeout_s=10, ttl_s=60)
    assert [p.next_attempt(T, n) - T for n in (0, 1, 2, 3, 4)] == [
        timedelta(seconds=s) for s in (5, 5, 10, 20, 30)]
    assert p.next_attempt(T, 1, not_before=T + timedelta(hours=1)) == T + timedelta(hours=1)
    assert (p.ack_deadline(T), p.expires_at(T)) == (T + timedelta(seconds=10),
                                                   T + timedelta(seconds=60))
    assert not p.exhausted(4, 5) and p.exhausted(5, 5)


def test_meter_contract_shows_what_the_collector_knows(conn: psycopg.Connection) -> None:
    put_meter(conn, "m1", "s1", "gw1")
    conn.execute("UPDATE meters SET relay = 'open', relay_at = %s WHERE meter_id = 'm1'", (T,))
    rows = conn.execute(
        "SELECT meter_id, site, gateway, relay, relay_at FROM meter_contract"
    ).fetchall()
    assert rows == [("m1", "s1", "gw1", "open", T)]


def test_billing_reads_the_collector_only_through_the_contract() -> None:
    for name, text in _sources().items():
        assert not re.search(r"\b(FROM|JOIN)\s+meters\b", text, re.IGNORECASE), name
        assert "information_schema" not in text, name


def test_only_the_lifecycle_writes_command_rows() -> None:
    writes = re.compile(r"\b(INSERT\s+INTO|UPDATE)\s+billing_command", re.IGNORECASE)
    assert [n for n, text in _sources().items() if writes.search(text)] == ["lifecycle.py"]
