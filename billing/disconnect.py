"""Applying the credit policy to accounts in the database: alerts, the warning ladder,
cut-offs, restores, holds and approvals, plus the retry re-check and reconciliation.

The decisions are billing.policy's (pure); this module gathers the facts under the account
row lock (``FOR UPDATE SKIP LOCKED``, so engines split the accounts) and records the outcome:
phase changes, alerts for the web page and MQTT, and queued relay commands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing import collection, lifecycle, prepaid_notices, relays
from billing.arrears import CollectionSettings
from billing.lifecycle import CommandState
from billing.money import from_fen, to_fen
from billing.policy import (
    AccountState,
    Action,
    CreditSettings,
    Phase,
    PolicyError,
    ProtectedWindows,
    crossed_alerts,
    decide,
)
from billing.retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyKnobs:
    """Engine-wide settings of the disconnect machinery."""

    max_group_cutoffs: int = 50
    mass_window_s: float = 3600.0  # cut-offs this recent count towards "at once"
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # of the relay commands queued
    reconcile_grace_s: float = 30.0  # leave a finished command's effect this long
    reconcile_max_attempts: int = 3  # repairs of one meter before asking for a site visit
    collection: CollectionSettings = field(default_factory=CollectionSettings)  # postpaid


@dataclass(slots=True)
class EvalStats:
    accounts: int = 0
    alerts: int = 0
    cutoffs_queued: int = 0
    restores_queued: int = 0
    held: int = 0


# an operator's manual hold in force at %(now)s (billing.manual); m is billing_meters
_ACTIVE_HOLD = ("manual_hold IS NOT NULL AND (manual_hold_until IS NULL "
                "OR manual_hold_until > %(now)s)")

_PICK = """
SELECT a.*,
       EXISTS (SELECT 1 FROM billing_topup_intents t WHERE t.account_id = a.account_id
               AND t.settled_at IS NULL AND t.expires_at > %(now)s) AS pending_topup,
       EXISTS (SELECT 1 FROM billing_cutoff_approvals p WHERE p.group_key = a.group_key
               AND p.approved_at IS NOT NULL AND p.valid_until > %(now)s) AS approved
FROM billing_accounts a
WHERE a.dirty OR a.phase IN ('warned', 'final')
LIMIT %(n)s
FOR UPDATE OF a SKIP LOCKED
"""


def _alert(
    conn: psycopg.Connection[Any], acc: dict[str, Any], kind: str, message: str,
    threshold: Decimal | None = None,
) -> int:
    row = conn.execute(
        """INSERT INTO billing_alerts (account_id, kind, threshold_fen, balance_fen, message)
           VALUES (%s, %s, %s, %s, %s) RETURNING alert_id""",
        (acc["account_id"], kind, None if threshold is None else to_fen(threshold),
         acc["balance_fen"], message),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _group_load(conn: psycopg.Connection[Any], group: str, now: datetime, window_s: float) -> int:
    """Households of a group being cut at once: on final notice now, or cut off lately."""
    row = conn.execute(
        f"""SELECT (SELECT count(*) FROM billing_accounts WHERE group_key = %(g)s
                   AND phase = 'final')
                + (SELECT count(DISTINCT c.account_id) FROM billing_commands c
                   JOIN billing_accounts a ON a.account_id = c.account_id
                   WHERE a.group_key = %(g)s AND c.purpose = 'cutoff'
                   AND c.created_at > %(since)s
                   AND c.state NOT IN {lifecycle.sql_states(lifecycle.GAVE_UP)})""",
        {"g": group, "since": now - timedelta(seconds=window_s)},
    ).fetchone()
    assert row is not None
    return int(row[0])


def evaluate_accounts(
    conn: psycopg.Connection[Any], now: datetime, knobs: PolicyKnobs, actor: str,
    limit: int = 500,
) -> EvalStats:
    """One pass over the accounts that need attention (balance moved, or a timer running)."""
    stats = EvalStats()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        accounts = cur.execute(_PICK, {"now": now, "n": limit}).fetchall()
        for acc in accounts:
            stats.accounts += 1
            try:
                with conn.transaction():  # a savepoint: one bad account spoils no other
                    _evaluate_one(conn, acc, now, knobs, actor, stats)
            except PolicyError as exc:
                log.warning("account settings unusable",
                            extra={"account": acc["account_id"], "why": str(exc)})
                _alert(conn, acc, "billing_error", f"account settings unusable: {exc}")
                conn.execute("UPDATE billing_accounts SET dirty = false WHERE account_id = %s",
                             (acc["account_id"],))
    return stats


def next_ladder_step(conn: psycopg.Connection[Any], now: datetime) -> datetime | None:
    """When the next warned or final account's timer runs out (at ``now``, the time of the
    evaluation just done, or later), so the engine evaluates it then rather than at its
    next fallback poll. Timers that ran out before ``now`` were evaluated and held."""
    defaults = CreditSettings()
    row = conn.execute(
        """SELECT min(due) FROM (
               SELECT phase_since + make_interval(secs => CASE phase
                   WHEN 'warned' THEN coalesce((credit->>'warning_to_final_s')::float8, %s)
                   ELSE coalesce((credit->>'final_to_cutoff_s')::float8, %s) END) AS due
               FROM billing_accounts WHERE phase IN ('warned', 'final')) d
           WHERE due >= %s""",
        (defaults.warning_to_final_s, defaults.final_to_cutoff_s, now),
    ).fetchone()
    return row[0] if row else None


def _evaluate_one(
    conn: psycopg.Connection[Any], acc: dict[str, Any], now: datetime, knobs: PolicyKnobs,
    actor: str, stats: EvalStats,
) -> None:
    acc_id = acc["account_id"]
    postpaid = acc["billing_mode"] == "postpaid"
    # a postpaid account is cut for what its collection ladder made due, not its balance
    if postpaid:
        settings = collection.postpaid_credit(knobs.collection)
        bal = collection.policy_balance(conn, acc_id, now, knobs.collection)
    else:
        settings = CreditSettings.from_json(acc["credit"])
        bal = from_fen(acc["balance_fen"])
    windows = ProtectedWindows.from_json(acc["windows"])
    updates: dict[str, Any] = {"dirty": False}

    new, alerted = crossed_alerts(settings.alert_thresholds, frozenset(acc["alerted"]), bal)
    for t in new:
        alert_id = _alert(conn, acc, "low_balance", f"balance {bal} is below {t}", t)
        prepaid_notices.low_balance(conn, acc_id, alert_id, bal, t, now)  # to the customer
        stats.alerts += 1
    if alerted != frozenset(acc["alerted"]):
        updates["alerted"] = sorted(alerted)

    phase = Phase(acc["phase"])
    group_load = 0
    if acc["group_key"] and phase is Phase.FINAL:
        group_load = _group_load(conn, acc["group_key"], now, knobs.mass_window_s)
    # meters under an operator's manual hold (billing.manual) are left alone by the policy
    held: dict[str, tuple[str, str]] = {}
    meters: list[str] = []
    for m, hold, by, until in conn.execute(
        f"SELECT meter_id, CASE WHEN {_ACTIVE_HOLD} THEN manual_hold END, manual_hold_by, "
        "manual_hold_until FROM billing_meters WHERE account_id = %(acc)s ORDER BY meter_id",
        {"now": now, "acc": acc_id},
    ):
        if hold is None:
            meters.append(m)
        else:
            held[m] = (hold, f"{by}" + (f" until {until.isoformat()}" if until else ""))
    held_on = {m: who for m, (h, who) in held.items() if h == "closed"}
    held_off = {m: who for m, (h, who) in held.items() if h == "open"}
    manual = None
    if held_on and not meters and not held_off:
        manual = "supply held on by an operator: " + ", ".join(
            f"{m} ({who})" for m, who in sorted(held_on.items()))
    state = AccountState(bal, phase, acc["phase_since"], settings, windows,
                         acc["pending_topup"], acc["approved"], manual)
    decision = decide(state, now, group_load, knobs.max_group_cutoffs)
    a = decision.action

    if a is Action.WARN:
        updates |= {"phase": "warned", "phase_since": now}
        _alert(conn, acc, "warning", f"balance {bal}: please top up, supply will be cut off")
        stats.alerts += 1
    elif a is Action.FINAL_WARNING:
        updates |= {"phase": "final", "phase_since": now, "hold_reason": None}
        _alert(conn, acc, "final_warning",
               f"balance {bal}: supply is cut off in {settings.final_to_cutoff_s:.0f} s "
               "unless topped up")
        stats.alerts += 1
    elif a is Action.CLEAR:
        updates |= {"phase": "normal", "phase_since": now, "hold_reason": None,
                    "awaiting_approval": False}
    elif a is Action.HOLD or a is Action.AWAIT_APPROVAL:
        if acc["hold_reason"] != decision.hold:  # tell people once per kind of hold
            updates["hold_reason"] = decision.hold
            kind = "cutoff_held" if a is Action.HOLD else "approval_needed"
            _alert(conn, acc, kind, decision.reason)
            stats.alerts += 1
        stats.held += 1
        if a is Action.AWAIT_APPROVAL:
            updates["awaiting_approval"] = True
            conn.execute(
                """INSERT INTO billing_cutoff_approvals (group_key, households) VALUES (%s, %s)
                   ON CONFLICT (group_key) DO UPDATE SET households = EXCLUDED.households,
                       requested_at = CASE WHEN billing_cutoff_approvals.valid_until < now()
                           THEN now() ELSE billing_cutoff_approvals.requested_at END,
                       approved_at = CASE WHEN billing_cutoff_approvals.valid_until < now()
                           THEN NULL ELSE billing_cutoff_approvals.approved_at END""",
                (acc["group_key"], group_load),
            )
    elif a is Action.CUTOFF:
        updates |= {"phase": "cut", "phase_since": now, "hold_reason": None,
                    "awaiting_approval": False}
        conn.execute("UPDATE billing_meters SET relay_wanted = 'open' WHERE meter_id = ANY(%s)",
                     (meters,))
        relayless = relays.without_relay(conn, meters)
        for m in relayless:  # no command it could not execute: a person has to go
            relays.ask_site_visit(conn, m, now, "has no relay: the account is cut off but "
                                                "supply flows until someone disconnects it")
        for m in (m for m in meters if m not in relayless):
            # a status question or a clock sync still waiting must not keep the cut-off out
            lifecycle.cancel_unsent(conn, m, "relay_status", actor, "superseded by cut-off")
            lifecycle.cancel_unsent(conn, m, "time_sync", actor, "superseded by cut-off")
            if lifecycle.issue(
                conn, account_id=acc_id, meter_id=m, action="relay_open", purpose="cutoff",
                now=now, retry=knobs.retry, actor=actor, detail=decision.reason,
            ):
                stats.cutoffs_queued += 1
        _alert(conn, acc, "cutoff", f"supply cut off: {decision.reason}" + (
            "; held on by an operator: " + ", ".join(sorted(held_on)) if held_on else ""))
        stats.alerts += 1
    elif a is Action.RESTORE:
        updates |= {"phase": "normal", "phase_since": now, "hold_reason": None}
        conn.execute(
            "UPDATE billing_meters SET relay_wanted = 'closed' WHERE meter_id = ANY(%s)",
            (meters,))
        action = lifecycle.RESTORE_ACTIONS[acc["restore_mode"]]
        relayless = relays.without_relay(conn, meters)
        for m in (m for m in meters if m not in relayless):
            # a cut-off not yet executed is simply cancelled: the payment arrived first
            lifecycle.cancel_unsent(conn, m, "relay_open", actor, "payment arrived first")
            lifecycle.cancel_unsent(conn, m, "relay_status", actor, "superseded by restore")
            lifecycle.cancel_unsent(conn, m, "time_sync", actor, "superseded by restore")
            stats.restores_queued += int(
                ensure_relay(conn, acc_id, m, action, now, knobs, actor, "restore",
                             decision.reason)
            )
        alert_id = _alert(conn, acc, "restored", f"supply restored: {decision.reason}" + (
            "; held off by an operator: " + ", ".join(sorted(held_off)) if held_off else ""))
        if not postpaid:  # a postpaid account's restore notice comes from its collection
            prepaid_notices.restored(conn, acc_id, alert_id, bal, acc["restore_mode"], now)
        stats.alerts += 1

    if postpaid:
        collection.on_policy_action(conn, acc_id, a, bal, now)
    sets = ", ".join(f"{k} = %({k})s" for k in updates)
    conn.execute(f"UPDATE billing_accounts SET {sets} WHERE account_id = %(id)s",
                 {**updates, "id": acc_id})


def ensure_relay(
    conn: psycopg.Connection[Any], account_id: str, meter_id: str, action: str, now: datetime,
    knobs: PolicyKnobs, actor: str, purpose: str, why: str,
) -> bool:
    """Queue ``action`` unless the meter already reports that state; True when queued."""
    row = conn.execute(
        "SELECT relay_reported FROM billing_meters WHERE meter_id = %s", (meter_id,)
    ).fetchone()
    target = "open" if action == "relay_open" else "closed"
    if row is not None and row[0] == target:
        return False
    return lifecycle.issue(
        conn, account_id=account_id, meter_id=meter_id, action=action, purpose=purpose,
        now=now, retry=knobs.retry, actor=actor, detail=why,
    ) is not None


def handle_deadlines(
    conn: psycopg.Connection[Any], now: datetime, knobs: PolicyKnobs, actor: str
) -> dict[CommandState, int]:
    """Commands past their ack deadline or retry time: re-check the account, then retry
    (same command id), defer, cancel, expire or give up."""
    counts: dict[CommandState, int] = {}
    with conn.transaction():
        lifecycle.expire_unsent(conn, now, actor)
        for row in lifecycle.due_for_retry(conn, now):
            wanted, defer, why = _recheck(row, now)
            new = lifecycle.retry_or_close(
                conn, row, now, still_wanted=wanted, defer_until=defer, retry=knobs.retry,
                actor=actor, why=why,
            )
            counts[new] = counts.get(new, 0) + 1
    return counts


def _recheck(row: dict[str, Any], now: datetime) -> tuple[bool, datetime | None, str]:
    """Is the command still wanted, and not before when? (balance, windows, pending top-up)"""
    action = row["action"]
    if action == "relay_open":
        # relay_wanted is the single truth: the policy's restore and an operator's decision
        # (billing.manual) both set it
        if row["relay_wanted"] != "open":
            return False, None, "cut-off no longer wanted (balance recovered or restored)"
        if row.get("manual_hold") == "open":
            return True, None, "an operator's manual cut-off"  # no window/payment deferral
        windows = ProtectedWindows.from_json(row["windows"])
        if windows.contains(now):
            return True, windows.next_open(now), "protected window"
        if row["pending_topup"]:
            return True, now + timedelta(minutes=5), "a top-up is pending"
        return True, None, ""
    if action in ("relay_close", "relay_close_permitted") and row["relay_wanted"] != "closed":
        return False, None, "account cut off again: restore no longer wanted"
    return True, None, ""


# commands whose gateway said they were not executed: they explain no relay movement
_NOT_EXECUTED = lifecycle.sql_states({CommandState.REJECTED, CommandState.EXPIRED})


def absorb_reported_relays(conn: psycopg.Connection[Any]) -> int:
    """Take the relay state meters report with their readings (the collector's
    ``meter_contract`` view gives the newest as ``relay`` / ``relay_at``) when it is newer
    than billing's own, so drift made on site (a bypassed or re-closed relay) is seen.

    A new state that is not the one billing wants, and that the last command billing sent to
    the meter (and the gateway did not refuse) does not explain, is tampering: a ``tamper``
    alert names the meter (published like every alert), and :func:`reconcile` then re-issues
    what the account's state requires. Returns the number of tamper alerts raised.
    """
    with conn.transaction():  # the new state and its tamper alerts together
        return _absorb(conn)


def _absorb(conn: psycopg.Connection[Any]) -> int:
    moved = conn.execute(
        f"""WITH moved AS (
               UPDATE billing_meters bm SET relay_reported = mt.relay,
                   relay_reported_at = mt.relay_at,
                   customer_action_needed = bm.customer_action_needed AND mt.relay <> 'closed'
               FROM meter_contract mt
               WHERE mt.meter_id = bm.meter_id AND mt.relay IN ('open', 'closed')
                 AND mt.relay_at > coalesce(bm.relay_reported_at, '-infinity')
                 AND mt.relay IS DISTINCT FROM bm.relay_reported
               RETURNING bm.meter_id, bm.account_id, bm.relay_reported, bm.relay_reported_at,
                         bm.relay_wanted)
           SELECT m.meter_id, m.account_id, m.relay_reported, m.relay_reported_at,
                  m.relay_wanted, a.balance_fen, last.action
           FROM moved m JOIN billing_accounts a ON a.account_id = m.account_id
           LEFT JOIN LATERAL (
               SELECT c.action FROM billing_commands c
               WHERE c.meter_id = m.meter_id AND c.sent_at IS NOT NULL
                 AND c.action IN ('relay_open', 'relay_close', 'relay_close_permitted')
                 AND c.state NOT IN {_NOT_EXECUTED}
               ORDER BY c.sent_at DESC LIMIT 1) last ON true
           WHERE m.relay_reported IS DISTINCT FROM m.relay_wanted"""
    ).fetchall()
    tampered = 0
    for meter, account, relay, relay_at, wanted, balance_fen, last_action in moved:
        if last_action is not None and lifecycle.ACTION_TARGETS[last_action] == relay:
            continue  # the last command sent there did this (its ack may still be on the way)
        tampered += 1
        last = f"the last command sent was {last_action}" if last_action else "no command was sent"
        message = (f"meter {meter}: relay reported {relay} at {relay_at.isoformat()} but "
                   f"billing wants it {wanted} and {last}; re-issuing")
        log.warning("relay moved without a command (tamper)",
                    extra={"meter": meter, "account": account, "relay": relay,
                           "wanted": wanted})
        conn.execute(
            """INSERT INTO billing_alerts (account_id, kind, balance_fen, message, meter_id)
               VALUES (%s, 'tamper', %s, %s, %s)""",
            (account, balance_fen, message, meter),
        )
    return tampered


@dataclass(frozen=True, slots=True)
class Reconciled:
    queued: int  # repairs queued
    tampered: int  # relay movements no command explains (tamper alerts raised)


def reconcile(
    conn: psycopg.Connection[Any], now: datetime, knobs: PolicyKnobs, actor: str,
    meter_id: str | None = None,
) -> Reconciled:
    """Compare wanted and reported relay state; queue a repair where they differ and nothing
    is in flight, and ask meters awaiting a customer's button press how they stand.

    Without ``meter_id`` the relay states reported with readings are taken in first (and
    tampering found on the way, see :func:`absorb_reported_relays`). With ``meter_id``
    (right after that meter's command finished) no grace period applies.
    """
    queued = tampered = 0
    if meter_id is None:
        tampered = absorb_reported_relays(conn)
        with conn.transaction():
            relays.clear_site_visits(conn)
    # recently finished commands are given time to show their effect, unless asked for one
    # meter right after its command finished
    grace = now + timedelta(days=1) if meter_id else now - timedelta(
        seconds=knobs.reconcile_grace_s)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT m.meter_id, m.account_id, m.relay_wanted, m.relay_reported,
                      m.customer_action_needed, a.windows, a.restore_mode,
                      m.manual_hold IS NOT NULL AND (m.manual_hold_until IS NULL
                          OR m.manual_hold_until > %s) AS manual,
                      m.reconcile_attempts, m.site_visit_since IS NOT NULL AS visit_asked,
                      m.no_relay OR coalesce(NOT f.relay_capable, false) AS no_relay
               FROM billing_meters m JOIN billing_accounts a ON a.account_id = m.account_id
               LEFT JOIN meter_field_contract f ON f.meter_id = m.meter_id
               WHERE (m.relay_reported IS DISTINCT FROM m.relay_wanted
                      OR m.customer_action_needed)
                 AND (%s::text IS NULL OR m.meter_id = %s)
                 AND NOT EXISTS (SELECT 1 FROM billing_commands c
                     WHERE c.meter_id = m.meter_id
                       AND (c.state IN {lifecycle.sql_states(lifecycle.ACTIVE)}
                            OR c.updated_at > %s))
               LIMIT 500
               FOR UPDATE OF m SKIP LOCKED""",
            (now, meter_id, meter_id, grace),
        ).fetchall()
        for r in rows:
            if r["customer_action_needed"] and meter_id:
                continue  # just asked; the periodic pass asks again later
            if r["no_relay"] or (r["reconcile_attempts"] >= knobs.reconcile_max_attempts
                                 and not r["customer_action_needed"]):
                _give_up(conn, r, now, knobs)
                continue
            if r["customer_action_needed"] and r["relay_wanted"] == "closed":
                action, why = "relay_status", "waiting for the customer to press the button"
            elif r["relay_wanted"] == "open":
                # also when the state is unknown: a cut-off that failed must be tried again;
                # an operator's manual cut-off is not deferred by protected windows
                if not r["manual"] and ProtectedWindows.from_json(r["windows"]).contains(now):
                    continue
                action, why = "relay_open", f"relay reads {r['relay_reported']}, wanted open"
                if r["manual"]:
                    why += " (manual hold)"
            elif r["relay_reported"] == "unknown":
                continue  # closed wanted, never heard: the normal state of a new meter
            else:
                action = lifecycle.RESTORE_ACTIONS[r["restore_mode"]]
                why = f"relay reads {r['relay_reported']}, wanted closed"
            if lifecycle.issue(
                conn, account_id=r["account_id"], meter_id=r["meter_id"], action=action,
                purpose="reconcile", now=now, retry=knobs.retry, actor=actor, detail=why,
            ):
                queued += 1
                if action != "relay_status":  # asking how it stands repairs nothing
                    conn.execute("UPDATE billing_meters SET reconcile_attempts = "
                                 "reconcile_attempts + 1 WHERE meter_id = %s", (r["meter_id"],))
    return Reconciled(queued, tampered)


def _give_up(conn: psycopg.Connection[Any], r: dict[str, Any], now: datetime,
             knobs: PolicyKnobs) -> None:
    """No more repairs for this meter: a person must go (asked once, by a site_visit alert).
    Where the relay wanted is closed and the meter has none, there is nothing to repair."""
    if r["no_relay"]:
        if r["relay_wanted"] == "open":
            relays.ask_site_visit(conn, r["meter_id"], now, "has no relay: the account is "
                                  "cut off but supply flows until someone disconnects it")
        return
    if not r["visit_asked"]:
        relays.ask_site_visit(
            conn, r["meter_id"], now,
            f"relay reads {r['relay_reported']}, wanted {r['relay_wanted']}, after "
            f"{r['reconcile_attempts']} reconciliation attempts (limit "
            f"{knobs.reconcile_max_attempts}); reconciliation has stopped")
