"""Accounts, balances, ledger, alerts, top-ups, and relay commands (history and manual).

Top-ups go through :func:`billing.topup` (idempotent by channel + payment reference),
so a double-clicked button or a retried request is one ledger entry. Operators may cut a
meter off or restore it by hand through :func:`billing.manual_relay`: billing records the
operator's manual hold (its policy and reconciliation keep it until ``hold_until`` passes or
an operator releases it, ``POST /meters/{meter}/hold/release``) and drives the command like
any other, with every step in its audit trail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import psycopg
from aiohttp import web

import billing
from billing import read_model as billing_read
from web import accounts, database, inputs
from web._http import API, SETTINGS_KEY, current_user, json_response, page, requires
from web.auth import User
from web.errors import BadRequest, Conflict, NotFound

routes = web.RouteTableDef()

PHASES = ("normal", "warned", "final", "cut")
COMMAND_STATES = tuple(str(s) for s in billing.CommandState)
MANUAL_ACTIONS = ("cutoff", "restore")


@routes.get(f"{API}/accounts")
@requires("viewer")
async def list_accounts(request: web.Request) -> web.Response:
    search = inputs.query_text(request, "q")
    phase = inputs.query_text(request, "phase", choices=PHASES)
    limit, offset = page(request)
    rows, total = await database.run(request, accounts.accounts, search, phase, limit, offset)
    return json_response({"accounts": rows, "total": total, "limit": limit, "offset": offset})


@routes.get(API + "/accounts/{account}")
@requires("viewer")
async def get_account(request: web.Request) -> web.Response:
    account_id = inputs.path_text(request, "account")
    row = await database.run(request, accounts.account, account_id)
    if row is None:
        raise NotFound(f"no account {account_id!r}")
    return json_response(row)


@routes.get(API + "/accounts/{account}/ledger")
@requires("viewer")
async def account_ledger(request: web.Request) -> web.Response:
    account_id = inputs.path_text(request, "account")
    limit, offset = page(request)

    def load(conn: psycopg.Connection[Any]) -> list[billing_read.LedgerLine] | None:
        if not billing_read.account_exists(conn, account_id):
            return None
        return billing_read.ledger_lines(conn, account_id, limit, offset)

    rows = await database.run(request, load)
    if rows is None:
        raise NotFound(f"no account {account_id!r}")
    return json_response({"account": account_id, "entries": rows, "limit": limit,
                          "offset": offset})


@routes.post(API + "/accounts/{account}/topups")
@requires("operator")
async def create_topup(request: web.Request) -> web.Response:
    account_id = inputs.path_text(request, "account")
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("amount", "channel", "reference"))
    amount = inputs.money(body.get("amount"), "amount",
                          max_yuan=request.app[SETTINGS_KEY].door.max_topup_yuan)
    channel = inputs.text(body.get("channel"), "channel", max_len=20)
    if channel not in billing.TOPUP_CHANNELS:
        raise BadRequest(f"channel must be one of {', '.join(billing.TOPUP_CHANNELS)}")
    reference = inputs.text(body.get("reference"), "reference", max_len=200)
    assert reference is not None
    user = current_user(request)

    def post(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        database.audit(conn, user, "account.topup", f"account:{account_id}",
                       {"amount": amount, "channel": channel, "reference": reference})
        try:
            with database.tuple_rows(conn):
                entry = billing.topup(conn, account_id, amount, channel, reference,
                                      actor=f"web:{user.name}")
                left = billing.balance(conn, account_id)
        except billing.UnknownAccount:
            raise NotFound(f"no account {account_id!r}") from None
        except billing.TopupConflict as exc:
            raise Conflict(str(exc)) from None
        except billing.BillingError as exc:
            raise BadRequest(str(exc)) from None
        return {
            "entry": {"id": entry.entry_id, "kind": entry.kind, "amount": entry.amount,
                      "balance_after": entry.balance_after, "created_at": entry.created_at,
                      "channel": entry.channel, "reference": entry.reference},
            "balance": left,
        }

    return json_response(await database.run(request, post), status=201)


@routes.get(f"{API}/alerts")
@requires("viewer")
async def list_alerts(request: web.Request) -> web.Response:
    account_id = inputs.query_text(request, "account")
    limit, offset = page(request)
    rows = await database.run(request, billing_read.alerts, account_id, limit, offset)
    return json_response({"alerts": rows, "limit": limit, "offset": offset})


# ---------------------------------------------------------------------------- mass cut-offs


@routes.get(f"{API}/cutoff-approvals")
@requires("viewer")
async def list_approvals(request: web.Request) -> web.Response:
    """Buildings / transformers whose many due cut-offs wait for (or got) a person's yes."""
    pending = inputs.query_text(request, "state", choices=("waiting", "all"), default="waiting")
    rows = await database.run(request, billing_read.approvals, pending == "waiting")
    return json_response({"approvals": rows})


@routes.post(f"{API}/cutoff-approvals")
@requires("operator")
async def approve(request: web.Request) -> web.Response:
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("group",))
    group = inputs.text(body.get("group"), "group", max_len=200)
    assert group is not None
    user = current_user(request)

    def post(conn: psycopg.Connection[Any]) -> billing_read.Approval:
        database.audit(conn, user, "cutoff.approve", f"group:{group}")
        with database.tuple_rows(conn):
            found = billing.approve_cutoffs(conn, group, by=f"web:{user.name}")
        if not found:
            raise NotFound(f"no mass cut-off is waiting for group {group!r}")
        return next(r for r in billing_read.approvals(conn, False) if r["group"] == group)

    return json_response(await database.run(request, post))


# ---------------------------------------------------------------------------- commands


@routes.get(f"{API}/commands")
@requires("viewer")
async def list_commands(request: web.Request) -> web.Response:
    account_id = inputs.query_text(request, "account")
    meter_id = inputs.query_text(request, "meter")
    state = inputs.query_text(request, "state", choices=COMMAND_STATES)
    limit, offset = page(request)
    rows, total = await database.run(request, billing_read.commands, account_id, meter_id, state,
                                     limit, offset)
    return json_response({"commands": rows, "total": total, "limit": limit, "offset": offset})


@routes.get(API + "/commands/{command}")
@requires("viewer")
async def get_command(request: web.Request) -> web.Response:
    command_id = inputs.path_text(request, "command")
    row = await database.run(request, billing_read.command, command_id)
    if row is None:
        raise NotFound(f"no command {command_id!r}")
    return json_response(row)


@routes.post(f"{API}/commands")
@requires("operator")
async def create_command(request: web.Request) -> web.Response:
    """A manual cut-off or restore of one meter's relay, by an operator; held against the
    policy until ``hold_until`` (an ISO-8601 time with timezone, in the future) or, without
    it, until an operator releases the hold."""
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("meter", "action", "reason", "hold_until"))
    meter_id = inputs.text(body.get("meter"), "meter", max_len=100)
    action = inputs.text(body.get("action"), "action", max_len=20)
    if action not in MANUAL_ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(MANUAL_ACTIONS)}")
    reason = inputs.text(body.get("reason"), "reason", required=False, max_len=500,
                         min_len=0) or ""
    hold_until = _hold_until(body.get("hold_until"))
    assert meter_id is not None
    user = current_user(request)
    row = await database.run(request, _queue_manual, meter_id, action, reason, hold_until,
                             user)
    return json_response(row, status=201)


def _hold_until(value: Any) -> datetime | None:
    """The optional end of a manual hold: an ISO-8601 time with timezone, in the future."""
    raw = inputs.text(value, "hold_until", required=False, max_len=64)
    if raw is None:
        return None
    until = inputs.parse_time(raw, "hold_until")
    if until <= datetime.now(UTC):
        raise BadRequest(f"hold_until must be in the future; {raw!r} has already passed "
                         "(leave it out to hold until an operator releases it)")
    return until


def _queue_manual(conn: psycopg.Connection[Any], meter_id: str, purpose: str, reason: str,
                  hold_until: datetime | None, user: User) -> billing_read.CommandDetail:
    """Billing owns operator commands: :func:`billing.manual_relay` records the operator's
    intent as a manual hold (kept by billing's policy and reconciliation until it expires or
    is released), queues the command through the lifecycle and audits it with the user's
    name."""
    wanted: Literal["open", "closed"] = "open" if purpose == "cutoff" else "closed"
    try:
        with database.tuple_rows(conn):
            command_id = billing.manual_relay(conn, meter_id, wanted, by=f"web:{user.name}",
                                              reason=reason, hold_until=hold_until)
    except billing.UnknownMeter:
        raise NotFound(f"meter {meter_id!r} belongs to no account; nothing to cut off"
                       ) from None
    except billing.CommandInFlight:
        raise Conflict(f"meter {meter_id!r} already has a command in flight; "
                       "wait for it to finish or expire") from None
    except billing.BillingError as exc:  # e.g. hold_until passed between the check and the lock
        raise BadRequest(str(exc)) from None
    seen = billing_read.billing_meter(conn, meter_id)
    database.audit(conn, user, f"command.{purpose}", f"meter:{meter_id}",
                   {"command_id": command_id, "reason": reason, "hold_until": hold_until,
                    "balance": seen["balance"] if seen else None})
    out = billing_read.command(conn, command_id)
    assert out is not None
    return out


@routes.post(API + "/meters/{meter}/hold/release")
@requires("operator")
async def release_hold(request: web.Request) -> web.Response:
    """End an operator's manual hold on a meter: billing's policy applies again at once."""
    meter_id = inputs.path_text(request, "meter")
    body = await inputs.json_body(request)
    inputs.only_keys(body, ("reason",))
    reason = inputs.text(body.get("reason"), "reason", required=False, max_len=500,
                         min_len=0) or ""
    user = current_user(request)
    out = await database.run(request, _release, meter_id, reason, user)
    return json_response(out)


def _release(conn: psycopg.Connection[Any], meter_id: str, reason: str,
             user: User) -> dict[str, Any]:
    """:func:`billing.release_manual_hold` and the web audit row, in one transaction."""
    held = accounts.holds(conn, meters=[meter_id])
    try:
        with database.tuple_rows(conn):
            released = billing.release_manual_hold(conn, meter_id, by=f"web:{user.name}",
                                                   reason=reason)
    except billing.UnknownMeter:
        raise NotFound(f"meter {meter_id!r} belongs to no account") from None
    except billing.BillingError as exc:
        raise BadRequest(str(exc)) from None
    if not released or not held:
        raise Conflict(f"meter {meter_id!r} has no manual hold to release")
    database.audit(conn, user, "hold.release", f"meter:{meter_id}",
                   {"reason": reason, "released": held[0]})
    row = billing_read.billing_meter(conn, meter_id)
    assert row is not None
    return {"meter": meter_id, "released": held[0], "relay_wanted": row["relay_wanted"],
            "relay_reported": row["relay_reported"]}
