"""Operator commands: a manual cut-off or restore of one meter, held against the policy.

:func:`manual_relay` records what the operator wants as a *manual hold* on the meter (who,
why, until when; audited in ``billing_manual_hold_audit``), sets ``relay_wanted`` to it and
queues the command through the normal lifecycle (same retries, read-back verification and
command audit, with the operator as the actor). While the hold is active:

* the disconnect policy neither cuts off a meter held closed (a cut-off due for an account
  whose every meter is held closed becomes a hold, "manual hold", and waits) nor restores a
  meter held open (a top-up restores the account's other meters as before);
* retries and reconciliation drive the relay towards the hold, protected windows and
  pending top-ups notwithstanding (the operator decided);

When it ends (:func:`release_manual_hold` by an operator, or :func:`end_expired_holds` in the
engine tick once ``hold_until`` has passed) ``relay_wanted`` goes back to what the policy
wants (open while the account is cut off, closed otherwise), the account is re-evaluated
and the relay is driven there at once (a cut-off waits for a protected window to close).

Locks are taken account first, then meter, like charging and the policy pass.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from billing import lifecycle
from billing.disconnect import PolicyKnobs, ensure_relay
from billing.errors import BillingError
from billing.policy import ProtectedWindows
from meterhub import channels

Wanted = Literal["open", "closed"]

class UnknownMeter(BillingError):
    """The meter belongs to no billing account."""


class CommandInFlight(BillingError):
    """The meter already has a command in flight; nothing was changed."""


def _lock(conn: psycopg.Connection[Any], meter_id: str) -> dict[str, Any]:
    """Lock the meter's account, then the meter; the joined row."""
    with conn.cursor(row_factory=dict_row) as cur:
        for _ in range(3):  # the meter could move to another account in between
            found = cur.execute("SELECT account_id FROM billing_meters WHERE meter_id = %s",
                                (meter_id,)).fetchone()
            if found is None:
                raise UnknownMeter(f"meter {meter_id!r} belongs to no account")
            cur.execute("SELECT 1 FROM billing_accounts WHERE account_id = %s FOR UPDATE",
                        (found["account_id"],))
            row = cur.execute(
                """SELECT m.*, a.phase, a.restore_mode, a.balance_fen, a.windows
                   FROM billing_meters m JOIN billing_accounts a USING (account_id)
                   WHERE m.meter_id = %s FOR UPDATE OF m""", (meter_id,)).fetchone()
            if row is None:
                raise UnknownMeter(f"meter {meter_id!r} belongs to no account")
            if row["account_id"] == found["account_id"]:
                return row
    raise BillingError(f"meter {meter_id!r} keeps changing accounts; try again")


def _audit(conn: psycopg.Connection[Any], row: dict[str, Any], event: str, actor: str,
           reason: str, *, wanted: str | None = None, until: datetime | None = None,
           command_id: str | None = None) -> None:
    conn.execute(
        """INSERT INTO billing_manual_hold_audit (meter_id, account_id, event, wanted,
               hold_until, actor, reason, command_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (row["meter_id"], row["account_id"], event, wanted, until, actor, reason, command_id),
    )


def manual_relay(
    conn: psycopg.Connection[Any],
    meter_id: str,
    wanted: Wanted,
    *,
    by: str,
    reason: str,
    hold_until: datetime | None = None,
    now: datetime | None = None,
    knobs: PolicyKnobs | None = None,
) -> str:
    """An operator cuts a meter off (``wanted="open"``) or restores it (``"closed"``).

    Holds against the policy until ``hold_until`` (None: until
    :func:`release_manual_hold`); returns the id of the queued command. Raises
    :class:`UnknownMeter`, :class:`CommandInFlight` (the meter has a command in flight:
    nothing changed) or :class:`BillingError` for bad input. Restore uses the account's
    restore mode (close directly, or close permitted: the customer presses the button).
    """
    if wanted not in ("open", "closed"):
        raise BillingError(f"wanted must be 'open' or 'closed', got {wanted!r}")
    if not by or not by.strip():
        raise BillingError("a manual command needs the operator's name (by)")
    now = now or datetime.now(UTC)
    if hold_until is not None:
        if hold_until.tzinfo is None:
            raise BillingError("hold_until needs a time zone")
        if hold_until <= now:
            raise BillingError(f"hold_until {hold_until.isoformat()} is not in the future")
    knobs = knobs or PolicyKnobs()
    with conn.transaction():
        row = _lock(conn, meter_id)
        if wanted == "open":
            action, purpose = "relay_open", "cutoff"
        else:
            action, purpose = lifecycle.RESTORE_ACTIONS[row["restore_mode"]], "restore"
        why = f"manual {purpose} by {by}" + (f": {reason}" if reason else "")
        if hold_until is not None:
            why += f" (held until {hold_until.isoformat()})"
        command_id = lifecycle.issue(
            conn, account_id=row["account_id"], meter_id=meter_id, action=action,
            purpose=purpose, now=now, retry=knobs.retry, actor=by, detail=why, reason=why,
        )
        if command_id is None:
            raise CommandInFlight(f"meter {meter_id!r} already has a command in flight; "
                                  "wait for it to finish or expire")
        conn.execute(
            """UPDATE billing_meters SET relay_wanted = %s, manual_hold = %s,
                   manual_hold_until = %s, manual_hold_by = %s, manual_hold_reason = %s,
                   manual_hold_since = %s, manual_hold_command = %s
               WHERE meter_id = %s""",
            (wanted, wanted, hold_until, by, reason, now, command_id, meter_id),
        )
        replaced = (f" (replaces the {row['manual_hold']} hold by {row['manual_hold_by']})"
                    if row["manual_hold"] else "")
        _audit(conn, row, "set", by, reason + replaced, wanted=wanted, until=hold_until,
               command_id=command_id)
        conn.execute("UPDATE billing_accounts SET dirty = true WHERE account_id = %s",
                     (row["account_id"],))
        channels.notify(conn, channels.ACCOUNTS, row["account_id"])
    return command_id


def release_manual_hold(
    conn: psycopg.Connection[Any],
    meter_id: str,
    *,
    by: str,
    reason: str = "",
    now: datetime | None = None,
    knobs: PolicyKnobs | None = None,
) -> bool:
    """An operator ends a meter's manual hold: the policy applies again at once (the relay
    is driven to what the policy wants). False when the meter had no hold."""
    if not by or not by.strip():
        raise BillingError("releasing a hold needs the operator's name (by)")
    now = now or datetime.now(UTC)
    with conn.transaction():
        row = _lock(conn, meter_id)
        if row["manual_hold"] is None:
            return False
        _end(conn, row, "released", by, reason or f"released by {by}", now,
             knobs or PolicyKnobs())
    return True


def end_expired_holds(
    conn: psycopg.Connection[Any], now: datetime, knobs: PolicyKnobs, actor: str,
    limit: int = 500,
) -> int:
    """Holds whose ``hold_until`` has passed end (audited, by ``actor``); the policy applies
    again to those meters. Returns how many ended."""
    candidates = [m for (m,) in conn.execute(
        """SELECT meter_id FROM billing_meters
           WHERE manual_hold IS NOT NULL AND manual_hold_until <= %s
           ORDER BY manual_hold_until LIMIT %s""", (now, limit)).fetchall()]
    ended = 0
    for meter_id in candidates:
        with conn.transaction():
            try:
                row = _lock(conn, meter_id)
            except UnknownMeter:
                continue
            until = row["manual_hold_until"]
            if row["manual_hold"] is None or until is None or until > now:
                continue  # released or renewed meanwhile
            _end(conn, row, "expired", actor, f"hold until {until.isoformat()} ended", now,
                 knobs)
            ended += 1
    return ended


def _end(conn: psycopg.Connection[Any], row: dict[str, Any], event: str, actor: str,
         reason: str, now: datetime, knobs: PolicyKnobs) -> None:
    """End the hold of the locked meter ``row`` and hand it back to the policy."""
    meter_id, account_id = row["meter_id"], row["account_id"]
    policy_wants = "open" if row["phase"] == "cut" else "closed"
    conn.execute(
        """UPDATE billing_meters SET relay_wanted = %s, manual_hold = NULL,
               manual_hold_until = NULL, manual_hold_by = NULL, manual_hold_reason = NULL,
               manual_hold_since = NULL, manual_hold_command = NULL
           WHERE meter_id = %s""", (policy_wants, meter_id))
    _audit(conn, row, event, actor, reason, wanted=row["manual_hold"],
           until=row["manual_hold_until"], command_id=row["manual_hold_command"])
    conn.execute("UPDATE billing_accounts SET dirty = true WHERE account_id = %s",
                 (account_id,))
    channels.notify(conn, channels.ACCOUNTS, account_id)
    why = (f"manual {row['manual_hold']} hold of {row['manual_hold_by']} {event}: "
           f"policy wants the relay {policy_wants}")
    if policy_wants == "open":
        # the account is on a policy cut-off: resume it, unless a protected window is open
        # (reconciliation cuts when it closes)
        if ProtectedWindows.from_json(row["windows"]).contains(now):
            return
        if row["relay_reported"] != "open":
            lifecycle.cancel_unsent(conn, meter_id, "relay_status", actor, "hold ended")
            lifecycle.issue(
                conn, account_id=account_id, meter_id=meter_id, action="relay_open",
                purpose="cutoff", now=now, retry=knobs.retry, actor=actor, detail=why)
    else:
        ensure_relay(conn, account_id, meter_id, lifecycle.RESTORE_ACTIONS[row["restore_mode"]],
                     now, knobs, actor, "restore", why)


def hold_trail(conn: psycopg.Connection[Any], meter_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT at, event, wanted, hold_until, actor, reason, command_id
               FROM billing_manual_hold_audit WHERE meter_id = %s ORDER BY audit_id""",
            (meter_id,)).fetchall()
