"""The relay command lifecycle in the database (no MQTT here: see billing.commands).

queued -> sent -> accepted -> confirmed -> verified, or rejected / timed_out (retried with
the same command id after re-checking the account) / expired / cancelled / failed. One
command per meter may be in flight (a partial unique index), and sending is claimed with
``FOR UPDATE SKIP LOCKED``, so two engines never send the same command. Every transition
writes an audit row saying who or what caused it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from meterhub import wire

ACTIVE = ("queued", "sent", "accepted", "timed_out")
TERMINAL = ("confirmed", "verified", "rejected", "expired", "cancelled", "failed")
WANTS = {"relay_open": "open", "relay_close": "closed"}  # relay read back that verifies
RESTORE_ACTIONS = {"close": "relay_close", "close_permitted": "relay_close_permitted"}


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
    state: str
    changed: bool  # this call moved the state (so counts happen once across engines)


def audit(
    conn: psycopg.Connection[Any], command_id: str, old: str | None, new: str, actor: str,
    detail: str = "",
) -> None:
    conn.execute(
        "INSERT INTO billing_command_audit (command_id, from_state, to_state, actor, detail) "
        "VALUES (%s, %s, %s, %s, %s)",
        (command_id, old, new, actor, detail),
    )


def _move(
    conn: psycopg.Connection[Any], command_id: str, old: str, new: str, actor: str,
    detail: str = "", **cols: Any,
) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in cols)
    conn.execute(
        f"UPDATE billing_commands SET state = %(new)s, updated_at = now()"
        f"{', ' + sets if sets else ''} WHERE command_id = %(id)s",
        {"new": new, "id": command_id, **cols},
    )
    audit(conn, command_id, old, new, actor, detail)


def queue_command(
    conn: psycopg.Connection[Any],
    *,
    account_id: str,
    meter_id: str,
    action: str,
    purpose: str,
    now: datetime,
    ttl_s: float,
    max_attempts: int,
    actor: str,
    detail: str = "",
    not_before: datetime | None = None,
) -> str | None:
    """Queue a command; None when the meter already has one in flight."""
    command_id = uuid.uuid4().hex
    row = conn.execute(
        """INSERT INTO billing_commands (command_id, account_id, meter_id, action, purpose,
               state, max_attempts, site, gateway, created_at, expires_at, next_attempt_at)
           SELECT %(id)s, %(acc)s, %(meter)s, %(action)s, %(purpose)s, 'queued', %(max)s,
                  m.site, m.gateway, %(now)s, %(exp)s, %(nb)s
           FROM (SELECT 1) one LEFT JOIN meters m ON m.meter_id = %(meter)s
           ON CONFLICT (meter_id) WHERE state IN ('queued', 'sent', 'accepted', 'timed_out')
           DO NOTHING RETURNING command_id""",
        {"id": command_id, "acc": account_id, "meter": meter_id, "action": action,
         "purpose": purpose, "max": max_attempts, "now": now,
         "exp": now + timedelta(seconds=ttl_s), "nb": not_before or now},
    ).fetchone()
    if row is None:
        return None
    audit(conn, command_id, None, "queued", actor, detail)
    return command_id


def cancel_active(
    conn: psycopg.Connection[Any], meter_id: str, action: str, actor: str, why: str
) -> int:
    """Cancel a not-yet-executed command (queued or waiting for its retry)."""
    rows = conn.execute(
        """SELECT command_id, state FROM billing_commands
           WHERE meter_id = %s AND action = %s AND state IN ('queued', 'timed_out')
           FOR UPDATE""",
        (meter_id, action),
    ).fetchall()
    for command_id, state in rows:
        _move(conn, command_id, state, "cancelled", actor, why, reason=why)
    return len(rows)


def claim_due(
    conn: psycopg.Connection[Any], now: datetime, ack_timeout_s: float, actor: str,
    limit: int = 200,
) -> list[Outgoing]:
    """Mark due queued commands as sent and return them for publishing (one engine each)."""
    with conn.transaction():
        conn.execute(
            """UPDATE billing_commands c SET site = m.site, gateway = m.gateway
               FROM meters m WHERE c.state = 'queued' AND c.gateway IS NULL
               AND m.meter_id = c.meter_id AND m.gateway IS NOT NULL""",
        )
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                """UPDATE billing_commands c
                   SET state = 'sent', attempt = c.attempt + 1, sent_at = %(now)s,
                       next_attempt_at = %(deadline)s, updated_at = now()
                   WHERE command_id IN (
                       SELECT command_id FROM billing_commands
                       WHERE state = 'queued' AND next_attempt_at <= %(now)s
                         AND gateway IS NOT NULL AND site IS NOT NULL
                       ORDER BY next_attempt_at LIMIT %(n)s FOR UPDATE SKIP LOCKED)
                   RETURNING *""",
                {"now": now, "deadline": now + timedelta(seconds=ack_timeout_s), "n": limit},
            ).fetchall()
        out = []
        for r in rows:
            audit(conn, r["command_id"], "queued", "sent", actor,
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
            "UPDATE billing_commands SET state = 'queued', attempt = attempt - 1 "
            "WHERE command_id = %s AND state = 'sent'", (command_id,),
        )
        audit(conn, command_id, "sent", "queued", actor, f"publish failed: {why}")


def apply_ack(conn: psycopg.Connection[Any], ack: wire.Ack, actor: str) -> AckResult | None:
    """Move a command on by its gateway ack; None when the command is not ours."""
    who = f"gateway:{ack.gateway}"
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM billing_commands WHERE command_id = %s FOR UPDATE",
            (ack.command_id,),
        ).fetchone()
        if row is None:
            return None
        state, cid = row["state"], row["command_id"]
        result = AckResult(cid, row["action"], row["purpose"], state, False)
        if ack.gateway != row["gateway"] or ack.meter != row["meter_id"]:
            # only the gateway the command went to may answer for its meter
            audit(conn, cid, state, state, who,
                  f"ack ignored: sent to {row['gateway']} for {row['meter_id']}, "
                  f"answered by {ack.gateway} for {ack.meter}")
            return result
        if state in TERMINAL:
            return result  # a late duplicate: already decided
        if ack.stage == "accepted":
            if state != "sent":
                return result
            _move(conn, cid, state, "accepted", who)
            return AckResult(cid, row["action"], row["purpose"], "accepted", True)
        outcome = ack.outcome
        if outcome == "ok":
            new = _apply_ok(conn, row, ack, who)
        elif outcome == "rejected":
            new = "rejected"
            _move(conn, cid, state, new, who, ack.reason or "", reason=ack.reason)
        elif outcome == "expired":
            new = "expired"
            _move(conn, cid, state, new, who, ack.reason or "", reason=ack.reason)
        elif outcome in ("unknown_meter", "invalid"):
            new = "failed"
            _move(conn, cid, state, new, who, f"{outcome}: {ack.reason or ''}",
                  reason=f"{outcome}: {ack.reason or ''}")
        else:  # no_answer / failed: the meter may answer next time; retry after backoff
            new = "timed_out"
            _move(conn, cid, state, new, who, f"{outcome}: {ack.reason or ''}",
                  reason=f"{outcome}: {ack.reason or ''}", next_attempt_at=ack.at)
        return AckResult(cid, row["action"], row["purpose"], new, True)


def _apply_ok(
    conn: psycopg.Connection[Any], row: dict[str, Any], ack: wire.Ack, who: str
) -> str:
    cid, action, state = row["command_id"], row["action"], row["state"]
    _move(conn, cid, state, "confirmed", who, f"meter done, relay reads {ack.relay}",
          relay_reported=ack.relay)
    if ack.relay is None or ack.relay == "unknown":
        return "confirmed"  # not read back: reconciliation will ask
    conn.execute(
        """UPDATE billing_meters SET relay_reported = %s, relay_reported_at = %s,
               customer_action_needed = %s WHERE meter_id = %s""",
        (ack.relay, ack.at, action == "relay_close_permitted" and ack.relay == "open",
         row["meter_id"]),
    )
    wanted = WANTS.get(action)
    if action == "relay_close_permitted" or action == "relay_status" or ack.relay == wanted:
        _move(conn, cid, "confirmed", "verified", who, f"relay read back {ack.relay}")
        return "verified"
    conn.execute("UPDATE billing_commands SET reason = %s WHERE command_id = %s",
                 (f"relay reads {ack.relay}, wanted {wanted}", cid))
    return "confirmed"


def due_for_retry(
    conn: psycopg.Connection[Any], now: datetime, limit: int = 200
) -> list[dict[str, Any]]:
    """Commands whose ack deadline or retry time has come (locked; caller holds the txn)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT c.*, a.phase, a.balance_fen, a.credit, a.windows, a.restore_mode,
                      mt.relay_wanted,
                      CASE WHEN mt.manual_hold_until IS NULL OR mt.manual_hold_until > %s
                           THEN mt.manual_hold END AS manual_hold,
                      EXISTS (SELECT 1 FROM billing_topup_intents t
                              WHERE t.account_id = c.account_id AND t.settled_at IS NULL
                                AND t.expires_at > %s) AS pending_topup
               FROM billing_commands c
               JOIN billing_accounts a ON a.account_id = c.account_id
               LEFT JOIN billing_meters mt ON mt.meter_id = c.meter_id
               WHERE c.state IN ('sent', 'accepted', 'timed_out')
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
    backoff_s: float,
    actor: str,
    why: str = "",
) -> str:
    """Decide the fate of a command whose deadline passed; returns the new state."""
    cid, state = row["command_id"], row["state"]
    if state in ("sent", "accepted"):
        _move(conn, cid, state, "timed_out", actor, f"no ack {state} -> done in time")
        state = "timed_out"
    if row["expires_at"] <= now:
        _move(conn, cid, state, "expired", actor, "expired before the meter confirmed")
        return "expired"
    if not still_wanted:
        _move(conn, cid, state, "cancelled", actor, why, reason=why)
        return "cancelled"
    if row["attempt"] >= row["max_attempts"]:
        _move(conn, cid, state, "failed", actor, f"no answer after {row['attempt']} attempts",
              reason=f"no answer after {row['attempt']} attempts")
        return "failed"
    delay = backoff_s * 2 ** max(0, row["attempt"] - 1)
    when = max(now + timedelta(seconds=min(delay, 3600)), defer_until or now)
    _move(conn, cid, state, "queued", actor,
          f"retry {row['attempt'] + 1} at {when.isoformat()}" + (f" ({why})" if why else ""),
          next_attempt_at=when)
    return "queued"


def command_history(
    conn: psycopg.Connection[Any], account_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT command_id, account_id, meter_id, action, purpose, state, attempt,
                      created_at, updated_at, relay_reported, reason
               FROM billing_commands WHERE %(acc)s::text IS NULL OR account_id = %(acc)s
               ORDER BY created_at DESC LIMIT %(n)s""",
            {"acc": account_id, "n": limit},
        ).fetchall()


def audit_trail(conn: psycopg.Connection[Any], command_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT at, from_state, to_state, actor, detail FROM billing_command_audit "
        "WHERE command_id = %s ORDER BY audit_id", (command_id,),
    ).fetchall()
