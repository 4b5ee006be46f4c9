"""The relay command lifecycle in the database (no MQTT here: see billing.commands).

queued -> sent -> accepted -> confirmed -> verified, or rejected / timed_out (retried with
the same command id after re-checking the account) / expired / cancelled / failed. One
command per meter may be in flight (a partial unique index), and sending is claimed with
``FOR UPDATE SKIP LOCKED``, so two engines never send the same command. Every transition
writes an audit row saying who or what caused it.

This module alone writes ``billing_commands`` and ``billing_command_audit``: the policy,
operators and the engine move commands on only through its functions, with the timing of
one :class:`billing.retry.RetryPolicy`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.retry import RetryPolicy
from meterhub import channels, wire


class CommandState(StrEnum):
    """A command's state, as stored in ``billing_commands.state`` (same strings)."""

    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    CONFIRMED = "confirmed"
    VERIFIED = "verified"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


ACTIVE = frozenset({CommandState.QUEUED, CommandState.SENT, CommandState.ACCEPTED,
                    CommandState.TIMED_OUT})  # in flight: at most one per meter
TERMINAL = frozenset(CommandState) - ACTIVE
AWAITING_ACK = frozenset({CommandState.SENT, CommandState.ACCEPTED})
UNSENT = frozenset({CommandState.QUEUED, CommandState.TIMED_OUT})  # not executed (yet)
GAVE_UP = frozenset({CommandState.CANCELLED, CommandState.FAILED})  # never took effect


def sql_states(states: Iterable[CommandState]) -> str:
    """A SQL list literal of ``states``, e.g. ``('queued', 'sent')``: literal rather than a
    parameter so the planner matches the partial indexes on ``state IN (...)``."""
    wanted = set(states)
    return "(" + ", ".join(f"'{s.value}'" for s in CommandState if s in wanted) + ")"


_ACTIVE_SQL = sql_states(ACTIVE)
_RETRY_DUE_SQL = sql_states(ACTIVE - {CommandState.QUEUED})

WANTS = {"relay_open": "open", "relay_close": "closed"}  # relay read back that verifies
# where each switching command leaves the relay (close-permitted: once the customer presses)
ACTION_TARGETS = {**WANTS, "relay_close_permitted": "closed"}
RELAY_READS = ("open", "closed")  # a relay actually read back (not None, not "unknown")
RESTORE_ACTIONS = {"close": "relay_close", "close_permitted": "relay_close_permitted"}
TIME_SYNC_TOLERANCE_S = 5.0  # a clock read back within this of gateway time verifies a sync


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command claimed for sending, with where to send it."""

    site: str
    gateway: str
    command: wire.Command


@dataclass(frozen=True, slots=True)
class AckResult:
    command_id: str
    action: str
    purpose: str
    state: CommandState
    changed: bool  # this call moved the state (so counts happen once across engines)
    refused: str | None = None  # why the ack was ignored (wrong gateway or meter, ...)


def _audit(
    conn: psycopg.Connection[Any], command_id: str, old: CommandState | None,
    new: CommandState, actor: str, detail: str = "",
) -> None:
    conn.execute(
        "INSERT INTO billing_command_audit (command_id, from_state, to_state, actor, detail) "
        "VALUES (%s, %s, %s, %s, %s)",
        (command_id, old, new, actor, detail),
    )


def _move(
    conn: psycopg.Connection[Any], command_id: str, old: CommandState, new: CommandState,
    actor: str, detail: str = "", **cols: Any,
) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in cols)
    conn.execute(
        f"UPDATE billing_commands SET state = %(new)s, updated_at = now()"
        f"{', ' + sets if sets else ''} WHERE command_id = %(id)s",
        {"new": new, "id": command_id, **cols},
    )
    _audit(conn, command_id, old, new, actor, detail)


def issue(
    conn: psycopg.Connection[Any],
    *,
    account_id: str,
    meter_id: str,
    action: str,
    purpose: str,
    now: datetime,
    retry: RetryPolicy,
    actor: str,
    detail: str = "",
    reason: str | None = None,
    not_before: datetime | None = None,
) -> str | None:
    """Queue a command (routed by the collector's ``meter_contract`` when the meter was
    heard); its id, or None when the meter already has one in flight."""
    command_id = uuid.uuid4().hex
    row = conn.execute(
        f"""INSERT INTO billing_commands (command_id, account_id, meter_id, action, purpose,
               state, max_attempts, site, gateway, created_at, expires_at, next_attempt_at,
               reason)
           SELECT %(id)s, %(acc)s, %(meter)s, %(action)s, %(purpose)s, %(state)s, %(max)s,
                  m.site, m.gateway, %(now)s, %(exp)s, %(nb)s, %(reason)s
           FROM (SELECT 1) one LEFT JOIN meter_contract m ON m.meter_id = %(meter)s
           ON CONFLICT (meter_id) WHERE state IN {_ACTIVE_SQL}
           DO NOTHING RETURNING command_id""",
        {"id": command_id, "acc": account_id, "meter": meter_id, "action": action,
         "purpose": purpose, "state": CommandState.QUEUED, "max": retry.max_attempts,
         "now": now, "exp": retry.expires_at(now), "nb": not_before or now, "reason": reason},
    ).fetchone()
    if row is None:
        return None
    _audit(conn, command_id, None, CommandState.QUEUED, actor, detail)
    channels.notify(conn, channels.COMMANDS, command_id)  # the senders wake at commit
    return command_id


def cancel_unsent(
    conn: psycopg.Connection[Any], meter_id: str, action: str, actor: str, why: str
) -> int:
    """Cancel a not-yet-executed command (queued or waiting for its retry)."""
    rows = conn.execute(
        f"""SELECT command_id, state FROM billing_commands
           WHERE meter_id = %s AND action = %s AND state IN {sql_states(UNSENT)}
           FOR UPDATE""",
        (meter_id, action),
    ).fetchall()
    for command_id, state in rows:
        _move(conn, command_id, CommandState(state), CommandState.CANCELLED, actor, why,
              reason=why)
    return len(rows)


def expire_unsent(conn: psycopg.Connection[Any], now: datetime, actor: str) -> int:
    """Queued commands whose time to live ran out before any engine sent them expire."""
    why = "expired before it could be sent"
    cur = conn.execute(
        """WITH gone AS (
               UPDATE billing_commands SET state = %(new)s, updated_at = now(),
                   reason = %(why)s
               WHERE state = %(old)s AND expires_at <= %(now)s RETURNING command_id)
           INSERT INTO billing_command_audit (command_id, from_state, to_state, actor, detail)
           SELECT command_id, %(old)s, %(new)s, %(actor)s, %(why)s FROM gone""",
        {"new": CommandState.EXPIRED, "old": CommandState.QUEUED, "now": now,
         "actor": actor, "why": why},
    )
    return cur.rowcount


def claim_due(
    conn: psycopg.Connection[Any], now: datetime, retry: RetryPolicy, actor: str,
    limit: int = 200,
) -> list[Outgoing]:
    """Mark due queued commands as sent and return them for publishing (one engine each),
    in sending order: restores of good payers first (after a mass restore they get their
    supply back before the rest), then everything by when it fell due."""
    queued = CommandState.QUEUED
    with conn.transaction():
        conn.execute(
            """UPDATE billing_commands c SET site = m.site, gateway = m.gateway
               FROM meter_contract m WHERE c.state = %s AND c.gateway IS NULL
               AND m.meter_id = c.meter_id AND m.gateway IS NOT NULL""",
            (queued,),
        )
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                """WITH due AS (
                       SELECT q.command_id, q.next_attempt_at AS due_at,
                              coalesce(q.action = ANY(%(restores)s)
                                       AND a.good_payer_since IS NOT NULL, false) AS good_first
                       FROM billing_commands q
                       LEFT JOIN billing_accounts a ON a.account_id = q.account_id
                       WHERE q.state = %(queued)s AND q.next_attempt_at <= %(now)s
                         AND q.gateway IS NOT NULL AND q.site IS NOT NULL
                       ORDER BY good_first DESC, q.next_attempt_at, q.command_id
                       LIMIT %(n)s FOR UPDATE OF q SKIP LOCKED)
                   UPDATE billing_commands c
                   SET state = %(sent)s, attempt = c.attempt + 1, sent_at = %(now)s,
                       next_attempt_at = %(deadline)s, updated_at = now()
                   FROM due WHERE c.command_id = due.command_id
                   RETURNING c.*, due.good_first, due.due_at""",
                {"now": now, "deadline": retry.ack_deadline(now), "n": limit,
                 "sent": CommandState.SENT, "queued": queued,
                 "restores": list(RESTORE_ACTIONS.values())},
            ).fetchall()
        rows.sort(key=lambda r: (not r["good_first"], r["due_at"], r["command_id"]))
        out = []
        for r in rows:
            _audit(conn, r["command_id"], queued, CommandState.SENT, actor,
                   f"attempt {r['attempt']} to {r['site']}/{r['gateway']}")
            out.append(
                Outgoing(r["site"], r["gateway"], wire.Command(
                    command_id=r["command_id"], meter=r["meter_id"], action=r["action"],
                    issued_at=now, expires_at=r["expires_at"], attempt=r["attempt"],
                ))
            )
    return out


def unsend(conn: psycopg.Connection[Any], command_id: str, actor: str, why: str) -> None:
    """Publishing failed (broker gone): back to queued, same attempt count next time."""
    with conn.transaction():
        conn.execute(
            "UPDATE billing_commands SET state = %s, attempt = attempt - 1 "
            "WHERE command_id = %s AND state = %s",
            (CommandState.QUEUED, command_id, CommandState.SENT),
        )
        _audit(conn, command_id, CommandState.SENT, CommandState.QUEUED, actor,
               f"publish failed: {why}")


def _refusal(row: dict[str, Any], ack: wire.Ack) -> str | None:
    """Why this ack cannot be about this command, or None when it can.

    Only the gateway the command was sent to may answer, for the meter it was sent for, and
    a success must not contradict the action (``done ok relay=closed`` for a cut-off): the
    gateway reports a relay that did not move as ``failed``, so such an ack is not genuine.
    """
    if ack.gateway != row["gateway"]:
        return "wrong_gateway"
    if ack.meter != row["meter_id"]:
        return "wrong_meter"
    wanted = WANTS.get(row["action"])
    if (ack.stage == "done" and ack.outcome == "ok" and wanted is not None
            and ack.relay in RELAY_READS and ack.relay != wanted):
        return "inconsistent"
    return None


def apply_ack(conn: psycopg.Connection[Any], ack: wire.Ack, actor: str, *,
              clock_tolerance_s: float = TIME_SYNC_TOLERANCE_S) -> AckResult | None:
    """Move a command on by its gateway ack; None when the command is not ours.

    ``ack.gateway`` must be the gateway that sent it (billing.commands checks the payload
    against the topic the broker authenticated). An ack refused by :func:`_refusal` changes
    nothing and writes nothing; the result says why.
    """
    who = f"gateway:{ack.gateway}"
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_commands WHERE command_id = %s FOR UPDATE",
            (ack.command_id,),
        ).fetchone()
        if row is None:
            return None
        state, cid = CommandState(row["state"]), row["command_id"]
        result = AckResult(cid, row["action"], row["purpose"], state, False)
        refused = _refusal(row, ack)
        if refused is not None:
            return AckResult(cid, row["action"], row["purpose"], state, False, refused)
        if state in TERMINAL:
            return result  # a late duplicate: already decided
        if ack.stage == "accepted":
            if state is not CommandState.SENT:
                return result
            _move(conn, cid, state, CommandState.ACCEPTED, who)
            return AckResult(cid, row["action"], row["purpose"], CommandState.ACCEPTED, True)
        outcome = ack.outcome
        if outcome == "ok" and row["action"] == "time_sync":
            new = _apply_time_sync(conn, row, state, ack, who, clock_tolerance_s)
        elif outcome == "ok":
            new = _apply_ok(conn, row, state, ack, who)
        elif outcome in ("rejected", "expired"):
            new = CommandState(outcome)  # the outcome names the state
            _move(conn, cid, state, new, who, ack.reason or "", reason=ack.reason)
        elif outcome in ("unknown_meter", "invalid"):
            new = CommandState.FAILED
            _move(conn, cid, state, new, who, f"{outcome}: {ack.reason or ''}",
                  reason=f"{outcome}: {ack.reason or ''}")
        else:  # no_answer / failed: the meter may answer next time; retry after backoff
            new = CommandState.TIMED_OUT
            _move(conn, cid, state, new, who, f"{outcome}: {ack.reason or ''}",
                  reason=f"{outcome}: {ack.reason or ''}", next_attempt_at=ack.at)
        return AckResult(cid, row["action"], row["purpose"], new, True)


def _apply_ok(
    conn: psycopg.Connection[Any], row: dict[str, Any], state: CommandState, ack: wire.Ack,
    who: str,
) -> CommandState:
    """A success the relay read-back does not contradict (see :func:`_refusal`)."""
    cid, action = row["command_id"], row["action"]
    _move(conn, cid, state, CommandState.CONFIRMED, who,
          f"meter done, relay reads {ack.relay}", relay_reported=ack.relay)
    if ack.relay not in RELAY_READS:
        return CommandState.CONFIRMED  # not read back: reconciliation will ask
    conn.execute(
        """UPDATE billing_meters SET relay_reported = %s, relay_reported_at = %s,
               customer_action_needed = %s WHERE meter_id = %s""",
        (ack.relay, ack.at, action == "relay_close_permitted" and ack.relay == "open",
         row["meter_id"]),
    )
    _move(conn, cid, CommandState.CONFIRMED, CommandState.VERIFIED, who,
          f"relay read back {ack.relay}")
    return CommandState.VERIFIED


def _apply_time_sync(
    conn: psycopg.Connection[Any], row: dict[str, Any], state: CommandState, ack: wire.Ack,
    who: str, tolerance_s: float,
) -> CommandState:
    """A time sync is verified by the clock the gateway read back afterwards: within
    ``tolerance_s`` of gateway time; further off, the meter did not take it (failed, and the
    clock policy tries again after its gap); not read back, it stays confirmed."""
    cid = row["command_id"]
    if ack.clock is None:
        _move(conn, cid, state, CommandState.CONFIRMED, who, "clock set, not read back")
        return CommandState.CONFIRMED
    drift = ack.clock.drift_s
    _move(conn, cid, state, CommandState.CONFIRMED, who, f"clock set, reads {drift:+.1f} s",
          clock_drift_s=drift)
    if abs(drift) > tolerance_s:
        why = f"meter clock still {drift:+.1f} s off after the sync (tolerance {tolerance_s} s)"
        _move(conn, cid, CommandState.CONFIRMED, CommandState.FAILED, who, why, reason=why)
        return CommandState.FAILED
    _move(conn, cid, CommandState.CONFIRMED, CommandState.VERIFIED, who,
          f"clock read back {drift:+.1f} s from gateway time")
    return CommandState.VERIFIED


def due_for_retry(
    conn: psycopg.Connection[Any], now: datetime, limit: int = 200
) -> list[dict[str, Any]]:
    """Commands whose ack deadline or retry time has come (locked; caller holds the txn)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"""SELECT c.*, a.phase, a.balance_fen, a.credit, a.windows, a.restore_mode,
                      mt.relay_wanted,
                      CASE WHEN mt.manual_hold_until IS NULL OR mt.manual_hold_until > %s
                           THEN mt.manual_hold END AS manual_hold,
                      EXISTS (SELECT 1 FROM billing_topup_intents t
                              WHERE t.account_id = c.account_id AND t.settled_at IS NULL
                                AND t.expires_at > %s) AS pending_topup
               FROM billing_commands c
               JOIN billing_accounts a ON a.account_id = c.account_id
               LEFT JOIN billing_meters mt ON mt.meter_id = c.meter_id
               WHERE c.state IN {_RETRY_DUE_SQL}
                 AND c.next_attempt_at <= %s
               ORDER BY c.next_attempt_at LIMIT %s
               FOR UPDATE OF c SKIP LOCKED""",
            (now, now, now, limit),
        ).fetchall()


def retry_or_close(
    conn: psycopg.Connection[Any],
    row: dict[str, Any],
    now: datetime,
    *,
    still_wanted: bool,
    defer_until: datetime | None,
    retry: RetryPolicy,
    actor: str,
    why: str = "",
) -> CommandState:
    """Decide the fate of a command whose deadline passed; returns the new state."""
    cid, state = row["command_id"], CommandState(row["state"])
    if state in AWAITING_ACK:
        _move(conn, cid, state, CommandState.TIMED_OUT, actor, f"no ack {state} -> done in time")
        state = CommandState.TIMED_OUT
    if row["expires_at"] <= now:
        _move(conn, cid, state, CommandState.EXPIRED, actor,
              "expired before the meter confirmed")
        return CommandState.EXPIRED
    if not still_wanted:
        _move(conn, cid, state, CommandState.CANCELLED, actor, why, reason=why)
        return CommandState.CANCELLED
    if retry.exhausted(row["attempt"], row["max_attempts"]):
        gave_up = f"no answer after {row['attempt']} attempts"
        _move(conn, cid, state, CommandState.FAILED, actor, gave_up, reason=gave_up)
        return CommandState.FAILED
    when = retry.next_attempt(now, row["attempt"], defer_until)
    _move(conn, cid, state, CommandState.QUEUED, actor,
          f"retry {row['attempt'] + 1} at {when.isoformat()}" + (f" ({why})" if why else ""),
          next_attempt_at=when)
    return CommandState.QUEUED


def command_history(
    conn: psycopg.Connection[Any], account_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT command_id, account_id, meter_id, action, purpose, state, attempt,
                      created_at, updated_at, relay_reported, clock_drift_s, reason
               FROM billing_commands WHERE %(acc)s::text IS NULL OR account_id = %(acc)s
               ORDER BY created_at DESC LIMIT %(n)s""",
            {"acc": account_id, "n": limit},
        ).fetchall()


def audit_trail(conn: psycopg.Connection[Any], command_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT at, from_state, to_state, actor, detail FROM billing_command_audit "
        "WHERE command_id = %s ORDER BY audit_id", (command_id,),
    ).fetchall()
