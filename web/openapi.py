"""The OpenAPI 3 document of ``/api/v1``, served at ``/api/v1/openapi.json``.

Written by hand next to the routes it describes and checked against the running service by
schemathesis (tests/web/test_openapi.py): every answer must match it, and a route added
without a description fails ``test_every_route_is_documented``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from billing import CommandState
from meterhub.i18n import N_
from meterhub.quantities import QUANTITIES
from web.auth import ROLES

S = dict[str, Any]


def _ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, S], optional: tuple[str, ...] = (), extra: bool = False) -> S:
    return {
        "type": "object",
        "properties": props,
        "required": [k for k in props if k not in optional],
        "additionalProperties": extra,
    }


def _null(schema: S) -> S:
    return {**schema, "nullable": True}


def _arr(item: S) -> S:
    return {"type": "array", "items": item}


STR: S = {"type": "string"}
INT: S = {"type": "integer"}
NUM: S = {"type": "number"}
BOOL: S = {"type": "boolean"}
TIME: S = {"type": "string", "format": "date-time"}
MONEY: S = {"type": "string", "pattern": r"^-?\d+\.\d{2}$", "example": "50.00"}
# What a top-up accepts (billing.parse_yuan with the default bound, 100000 yuan): ASCII
# digits, at most two decimals, no leading zeros, 0.01 to 100000.
AMOUNT: S = {"oneOf": [
    {"type": "string", "maxLength": 20, "example": "50.00",
     "pattern": r"^([1-9][0-9]{0,4}(\.[0-9]{1,2})?|100000(\.00?)?|0\.(0[1-9]|[1-9][0-9]?))$",
     "x-pattern-text": N_("must be an amount in yuan more than zero and at most 100000: "
                          "ASCII digits with at most two decimals, like 50 or 50.25")},
    {"type": "integer", "minimum": 1, "maximum": 100000},
]}
# Ids of gateways, meters, accounts and commands as the API accepts them.
ID_TEXT: S = {"type": "string", "minLength": 1, "maxLength": 64,
              "pattern": r"^[A-Za-z0-9._:-]+$",
              "x-pattern-text": N_("must be letters, digits and . _ : - only")}
ID_FILTER: S = {"type": "string", "maxLength": 64, "pattern": r"^([A-Za-z0-9._:-]*|\s*)$",
                "x-pattern-text": N_("must be letters, digits and . _ : - only"),
                "description": "an id; empty (or blank) means no filter"}
ANY_OBJ: S = {"type": "object", "additionalProperties": True}
# an interval's kWh as a person enters it (collector.review_decisions.parse_kwh)
KWH: S = {"type": "string", "maxLength": 20,
          "pattern": r"^([0-9]{1,6}(\.[0-9]{1,4})?|1000000(\.0{1,4})?)$",
          "example": "0.2500", "x-pattern-text": N_("must be kWh with at most 4 decimals")}
_NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; web.inputs refuses it
_NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _text(max_len: int = 500) -> S:
    """A string the API accepts as input (web.inputs.text)."""
    return {"type": "string", "pattern": _NO_NUL, "maxLength": max_len,
            "x-pattern-text": N_("must not contain NUL characters")}


def _name(max_len: int = 100) -> S:
    """A required input string that must not be blank."""
    return {"type": "string", "pattern": _NOT_BLANK, "minLength": 1, "maxLength": max_len,
            "x-pattern-text": N_("must not be empty (nor contain NUL characters)")}

REVIEW_STATUSES = ("open", "confirmed", "dismissed", "rejected", "corrected", "estimated")

GATEWAY: dict[str, S] = {
    "gateway": STR, "site": _null(STR),
    "status": {"type": "string", "enum": ["online", "offline"],
               "description": "offline when the gateway said so (or its last will fired) "
                              "or nothing was heard for offline_after_s"},
    "offline_reason": _null(STR), "reported_state": _null(STR), "status_at": _null(TIME),
    "last_seen": _null(TIME), "health": ANY_OBJ, "max_seq": _null(INT), "batches": INT,
    "duplicate_batches": INT, "clock_offset_s": _null(NUM), "meters": INT,
}

METER: dict[str, S] = {
    "meter": STR, "gateway": _null(STR), "site": _null(STR), "protocol": _null(STR),
    "expected_interval_s": _null(INT), "first_seen": _null(TIME), "last_seen": _null(TIME),
    "relay": {"type": "string", "enum": ["open", "closed", "unknown", "none"],
              "description": "as last read from the meter (with a reading or read back "
                             "after a command); none: the meter has no relay"},
    "relay_at": _null(TIME), "relay_capable": _null(BOOL),
    "clock_drift_s": _null({**NUM, "description": "newest clock check: meter clock minus "
                                                   "gateway time, seconds"}),
    "clock_read_at": _null(TIME), "open_reviews": INT,
    "values": {"type": "object", "additionalProperties": _ref("Value"),
                   "description": "newest value of each quantity, by canonical name"},
    }

SCHEMAS: dict[str, S] = {
    "Error": _obj({"error": _obj({"status": INT, "message": STR, "details": ANY_OBJ},
                                 optional=("details",))}),
    "User": _obj({"id": INT, "name": STR, "role": {"type": "string", "enum": list(ROLES)},
                  "via": {"type": "string", "enum": ["session", "token"]}}),
    "AdminUser": _obj({"id": INT, "name": STR, "role": {"type": "string", "enum": list(ROLES)},
                       "disabled": BOOL, "created_at": TIME, "created_by": _null(STR)}),
    "Gateway": _obj(GATEWAY),
    "GatewayDetail": _obj({
        **GATEWAY,
        "gaps": _arr(_obj({"from_seq": INT, "to_seq": INT, "noticed_after": TIME})),
        "late": _arr(_obj({"seq_from": INT, "seq_to": INT, "readings": INT, "oldest": TIME,
                           "newest": TIME, "delay_s": INT, "received_at": TIME})),
        "events": _arr(_ref("GatewayEvent")), "meter_ids": _arr(STR),
    }),
    "GatewayEvent": _obj({"id": INT, "source": STR, "kind": STR, "meter": _null(STR),
                          "at": TIME, "detail": STR, "data": ANY_OBJ, "received_at": TIME}),
    "Value": _obj({"value": NUM, "unit": STR, "at": TIME}),
    "Meter": _obj(METER),
    "MeterDetail": _obj({**METER, "billing": _null(_obj({
        "account": STR, "relay_wanted": {"type": "string", "enum": ["open", "closed"]},
        "relay_reported": STR, "customer_action_needed": BOOL,
        "hold": _null(_ref("Hold"))}))}),
    "Hold": {**_obj({
        "meter": STR, "account": STR,
        "wanted": {"type": "string", "enum": ["open", "closed"],
                   "description": "what the relay is held at (open: cut off)"},
        "until": _null({**TIME, "description": "when the hold ends; null: until released"}),
        "by": _null(STR), "reason": _null(STR), "since": _null(TIME),
        "command": _null({"type": "string", "description": "the command that set it"}),
    }), "description": "An operator's manual hold: billing's disconnect policy and "
                       "reconciliation keep the relay there until it ends"},
    "Point": _obj({"t": TIME, "value": NUM, "min": NUM, "max": NUM, "last": NUM}),
    "Interval": _obj({
        "start": TIME, "end": TIME, "kwh": {"type": "string", "description": "decimal kWh"},
        "quality": {"type": "string", "enum": ["A", "E", "S", "F"],
                    "description": "NEM12 quality flag: Actual, Estimate, Substitute, Final"},
        "method": _null(INT), "held": BOOL, "reason": _null(STR), "raw_kwh": _null(STR),
        "flags": _arr(STR),
    }),
    "Anomaly": _obj({"id": INT, "meter": STR, "rule": STR, "at": TIME, "reason": STR,
                     "value": _null(NUM), "expected": _null(NUM),
                     "value_unit": {"type": "string", "description": "unit of value; '' if none"},
                     "expected_unit": {"type": "string", "description": "unit of expected"},
                     "holds": BOOL,
                     "review_item_id": _null(INT), "detected_at": TIME}),
    "ReviewItem": _obj({
        "id": INT, "meter": STR, "rule": STR, "period_start": TIME, "period_end": TIME,
        "reason": STR, "status": {"type": "string", "enum": list(REVIEW_STATUSES)},
        "opened_at": TIME, "decided_at": _null(TIME), "decided_by": _null(STR),
        "comment": _null(STR), "anomalies": _arr(_ref("Anomaly")),
        "released_intervals": {"type": "integer",
                               "description": "intervals this decision released to billing"},
    }, optional=("anomalies", "released_intervals")),
    "ReviewOutcome": _obj({
        "id": INT, "status": {"type": "string", "enum": list(REVIEW_STATUSES)},
        "released_intervals": INT,
        "changed": _arr(_obj({"interval_start": TIME, "previous_kwh": KWH, "kwh": KWH}))}),
    "ReviewStep": _obj({"at": TIME, "by": STR, "comment": STR, "detail": ANY_OBJ,
                        "action": {"type": "string", "enum": [
                            "assigned", "comment", "decided", "work_order",
                            "work_order_closed"]}}),
    "WorkOrder": _obj({"id": INT, "item_id": INT, "meter": STR, "created_at": TIME,
                       "created_by": STR, "assigned_to": _null(STR), "due_at": _null(TIME),
                       "instructions": STR,
                       "status": {"type": "string", "enum": ["open", "done", "cancelled"]},
                       "closed_at": _null(TIME), "closed_by": _null(STR),
                       "findings": _null(STR)}),
    "DeadLetter": _obj({"id": INT, "topic": STR, "reason": STR, "gateway": _null(STR),
                        "received_at": TIME, "size": INT,
                        "payload": {"type": "string", "description": "first 2000 bytes"}}),
    "PendingMeter": _obj({"meter_id": STR, "gateway": STR, "site": _null(STR),
                          "first_seen": TIME, "last_seen": TIME, "readings": INT,
                          "status": {"type": "string", "enum": ["pending", "rejected"]},
                          "decided_by": _null(STR), "decided_at": _null(TIME)}),
    "Risk": _obj({"grade": {"type": "string", "enum": ["A", "B", "C", "D"]}, "score": INT,
                  "late_topups": INT, "times_below_zero": INT, "disconnections": INT,
                  "days_in_arrears": INT}),
    "Alert": _obj({"id": INT, "account": STR, "kind": STR, "threshold": _null(MONEY),
                   "balance": MONEY, "message": STR, "created_at": TIME,
                   "published_at": _null(TIME)}),
    "Account": _obj({
        "account": STR, "name": STR, "tariff": STR, "group": _null(STR),
        "restore_mode": {"type": "string", "enum": ["close", "close_permitted"]},
        "balance": MONEY, "arrears": MONEY,
        "phase": {"type": "string", "enum": ["normal", "warned", "final", "cut"]},
        "phase_since": TIME, "hold_reason": _null(STR), "awaiting_approval": BOOL,
        "created_at": TIME, "meters": _arr(STR), "cut_off": _null(BOOL),
        "customer_action_needed": _null(BOOL),
        "supply": {"type": "string", "enum": ["on", "off", "unknown"],
                   "description": "off only when every meter's relay was read back open"},
        "site_visit_needed": _null(BOOL),
        "days_of_credit": _null({"type": "string",
                                 "description": "days until the balance runs out at the "
                                                "account's own usage; null: no usage"}),
        "risk": _ref("Risk"), "alerts": _arr(_ref("Alert")),
        "holds": {**_arr(_ref("Hold")), "description": "active manual holds on its meters"},
    }, optional=("alerts",)),
    "LedgerEntry": _obj({
        "id": INT, "kind": STR, "amount": MONEY, "balance_after": MONEY, "created_at": TIME,
        "meter": _null(STR), "interval_start": _null(TIME), "channel": _null(STR),
        "reference": _null(STR), "actor": _null(STR),
    }),
    "Command": _obj({
        "id": STR, "account": STR, "meter": STR, "action": STR,
        "purpose": {"type": "string",
                    "enum": ["cutoff", "restore", "reconcile", "time_sync"]},
        "state": STR, "attempt": INT, "max_attempts": INT, "site": _null(STR),
        "gateway": _null(STR), "created_at": TIME, "expires_at": TIME, "sent_at": _null(TIME),
        "updated_at": TIME, "relay_reported": _null(STR), "clock_drift_s": _null(NUM),
        "reason": _null(STR),
        "audit": _arr(_obj({"at": TIME, "from_state": _null(STR), "to_state": STR,
                            "actor": STR, "detail": STR})),
    }, optional=("audit",)),
    "Approval": _obj({"group": STR, "households": INT, "requested_at": TIME,
                      "approved_at": _null(TIME), "approved_by": _null(STR),
                      "valid_until": _null(TIME), "accounts_waiting": INT}),
    "AuditEntry": _obj({"id": INT, "at": TIME, "user": STR, "role": STR,
                        "source": {"type": "string", "description": "the client's address"},
                        "action": STR, "target": STR, "detail": ANY_OBJ}),
    "Session": _obj({"id": INT, "created_at": TIME, "last_seen_at": TIME,
                     "expires_at": {**TIME, "description": "idle or absolute end, whichever "
                                                         "comes first"},
                     "source": STR, "user_agent": STR, "current": BOOL}),
}


def _page_props() -> dict[str, S]:
    return {"limit": INT, "offset": INT}


def _q(name: str, schema: S, description: str = "") -> S:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _p(name: str, schema: S | None = None) -> S:
    return {"name": name, "in": "path", "required": True, "schema": schema or ID_TEXT}


LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
OFFSET = _q("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000})
ID = _p("id", {"type": "integer", "minimum": 1, "maximum": 2**63 - 1, "format": "int64"})
FROM = _q("from", TIME, "start of the range (ISO-8601 with timezone)")
TO = _q("to", TIME, "end of the range (ISO-8601 with timezone, default now)")


def _errors(*codes: int) -> dict[str, S]:
    text = {400: "invalid input (the message says what)", 401: "not logged in",
            403: "role too low, or a cross-site request (the message says which)",
            404: "not found", 409: "conflicts with the current state",
            415: "a request that changes something must be 'Content-Type: application/json'",
            429: "too many attempts; the message says when to try again",
            503: "a needed part (database, billing tables) is not available"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ref("Error")}}}
            for c in codes}


def _op(summary: str, ok: S, *, params: list[S] | None = None, body: S | None = None,
        status: int = 200, errors: tuple[int, ...] = (400, 401, 403, 503),
        role: str = "viewer", tag: str = "", public: bool = False,
        body_required: bool = True) -> S:
    op: S = {
        "summary": summary,
        "description": f"Needs the **{role}** role." if not public else "No login needed.",
        "tags": [tag] if tag else [],
        "parameters": params or [],
        "responses": {
            str(status): {"description": "success",
                          "content": {"application/json": {"schema": ok}}},
            **_errors(*errors),
        },
    }
    if public:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": body}}}
    return op


def _list(key: str, item: S, total: bool = True) -> S:
    props = {key: _arr(item), **_page_props()}
    if total:
        props["total"] = INT
    return _obj(props)


def _paths() -> dict[str, S]:
    meter = _p("meter")
    return {
        "/openapi.json": {"get": {
            "summary": "This document", "description": "No login needed.", "tags": ["service"],
            "security": [],
            "responses": {"200": {"description": "the OpenAPI 3 document",
                                  "content": {"application/json": {"schema": ANY_OBJ}}}},
        }},
        "/health": {"get": _op("Liveness: the service and its database answer",
                               _obj({"status": STR}), public=True, errors=(503,),
                               tag="service")},
        "/session": {
            "post": _op("Log in to the page (sets the session cookie)",
                        _obj({"user": _ref("User")}), public=True,
                        errors=(400, 401, 403, 429, 503),
                        body=_obj({"name": _name(100), "password": _name(200)}),
                        tag="session"),
            "delete": _op("Log out (ends this session on the server, clears the cookie)",
                          _obj({"ok": BOOL}), tag="session", public=True, errors=(403, 503)),
        },
        "/me/password": {"post": _op(
            "Change one's password (needs the current one); every other session ends",
            _obj({"ok": BOOL, "sessions_ended": INT}), tag="session",
            body=_obj({"current": _name(200),
                       "new": {**_name(200), "minLength": 12}}))},
        "/sessions": {"get": _op("One's own live sessions", _obj({
            "sessions": _arr(_ref("Session"))}), tag="session")},
        "/sessions/{id}": {"delete": _op(
            "End one session (one's own; an admin: anyone's)", _obj({"revoked": INT}),
            params=[ID], tag="session", errors=(400, 401, 403, 404, 503))},
        "/me/logout-all": {"post": _op(
            "Log out everywhere: end every session of one's own, this one included",
            _obj({"sessions_ended": INT}), tag="session")},
        "/users/{id}/sessions": {"delete": _op(
            "End every session of a user", _obj({"sessions_ended": INT}), params=[ID],
            role="admin", tag="admin", errors=(400, 401, 403, 404, 503))},
        "/me": {"get": _op("Who is asking", _obj({"user": _ref("User")}), tag="session",
                           errors=(401, 503))},
        "/gateways": {"get": _op("Gateways with online/offline, last seen and health",
                                 _obj({"gateways": _arr(_ref("Gateway"))}), tag="fleet")},
        "/gateways/{gateway}": {"get": _op(
            "One gateway: status, sequence gaps, recent events, its meters",
            _ref("GatewayDetail"),
            params=[_p("gateway"), _q("events", {"type": "integer", "minimum": 0,
                                                 "maximum": 500})],
            errors=(400, 401, 403, 404, 503), tag="fleet")},
        "/meters": {"get": _op(
            "Meters with their newest values",
            _list("meters", _ref("Meter")),
            params=[_q("gateway", ID_FILTER), _q("q", _text(), "part of the meter id"), LIMIT,
                    OFFSET],
            tag="fleet")},
        "/meters/{meter}": {"get": _op("One meter with its newest values and billing's view",
                                       _ref("MeterDetail"),
                                       params=[meter], errors=(400, 401, 403, 404, 503),
                                       tag="fleet")},
        "/meters/{meter}/history": {"get": _op(
            "One quantity over a range; resolution picked from the range unless given "
            "(<=2 h raw, <=12 h 1 min, <=3 d 15 min, <=60 d hour, else day)",
            _obj({"meter": STR, "quantity": STR, "unit": STR, "from": TIME, "to": TIME,
                  "resolution": {"type": "string",
                                 "enum": ["raw", "1min", "15min", "hour", "day"]},
                  "points": _arr(_ref("Point"))}),
            params=[meter, _q("quantity", {"type": "string", "enum": list(QUANTITIES)},
                              "canonical quantity, default power_active_total"),
                    FROM, TO,
                    _q("resolution", {"type": "string", "enum": [
                        "auto", "raw", "1min", "15min", "hour", "day"]})],
            errors=(400, 401, 403, 404, 503), tag="fleet")},
        "/meters/{meter}/intervals": {"get": _op(
            "Validated interval consumption and the anomalies in the range (default 24 h)",
            _obj({"meter": STR, "from": TIME, "to": TIME,
                  "intervals": _arr(_ref("Interval")), "anomalies": _arr(_ref("Anomaly"))}),
            params=[meter, FROM, TO, _q("limit", {"type": "integer", "minimum": 1,
                                                  "maximum": 5000})],
            errors=(400, 401, 403, 404, 503), tag="fleet")},
        "/anomalies": {"get": _op(
            "Validation rules that fired, newest first",
            _obj({"anomalies": _arr(_ref("Anomaly")), **_page_props()}),
            params=[_q("meter", ID_FILTER), _q("rule", _text()), FROM, TO, LIMIT, OFFSET],
            tag="review")},
        "/review-items": {"get": _op(
            "The review queue (abnormal work orders); open ones first",
            _list("review_items", _ref("ReviewItem")),
            params=[_q("status", {"type": "string",
                                  "enum": [*REVIEW_STATUSES, "all"]}),
                    _q("meter", ID_FILTER), LIMIT, OFFSET], tag="review")},
        "/review-items/{id}": {"get": _op("One review item with its anomalies",
                                          _ref("ReviewItem"), params=[ID],
                                          errors=(400, 401, 403, 404, 503), tag="review")},
        "/review-items/{id}/confirm": {"post": _op(
            "Confirm the anomaly is real (releases the held intervals)", _ref("ReviewItem"),
            params=[ID], body=_obj({"comment": _text(2000)}, optional=("comment",)),
            body_required=False, role="engineer", errors=(400, 401, 403, 404, 409, 503),
            tag="review")},
        "/review-items/{id}/dismiss": {"post": _op(
            "Dismiss the item as no fault (releases the held intervals)", _ref("ReviewItem"),
            params=[ID], body=_obj({"comment": _text(2000)}, optional=("comment",)),
            body_required=False, role="engineer", errors=(400, 401, 403, 404, 409, 503),
            tag="review")},
        "/accounts": {"get": _op(
            "Prepaid accounts, lowest balance first, with days of credit left and risk grade",
            _list("accounts", _ref("Account")),
            params=[_q("q", _text(), "part of the account id, name or a meter id"),
                    _q("phase", {"type": "string",
                                 "enum": ["normal", "warned", "final", "cut"]}),
                    LIMIT, OFFSET], tag="accounts")},
        "/accounts/{account}": {"get": _op(
            "One account with its recent alerts", _ref("Account"), params=[_p("account")],
            errors=(400, 401, 403, 404, 503), tag="accounts")},
        "/accounts/{account}/ledger": {"get": _op(
            "Ledger entries, newest first",
            _obj({"account": STR, "entries": _arr(_ref("LedgerEntry")), **_page_props()}),
            params=[_p("account"), LIMIT, OFFSET], errors=(400, 401, 403, 404, 503),
            tag="accounts")},
        "/accounts/{account}/topups": {"post": _op(
            "Credit a payment; the same channel + reference again is the same entry",
            _obj({"entry": _obj({"id": INT, "kind": STR, "amount": MONEY,
                                 "balance_after": MONEY, "created_at": TIME,
                                 "channel": _null(STR), "reference": _null(STR)}),
                  "balance": MONEY}),
            params=[_p("account")], status=201, role="operator",
            body=_obj({"amount": AMOUNT,
                       "channel": {"type": "string",
                                   "enum": ["wechat", "alipay", "bank", "counter"]},
                       "reference": _name(200)}),
            errors=(400, 401, 403, 404, 409, 503), tag="accounts")},
        "/alerts": {"get": _op("Balance alerts and warnings, newest first",
                               _obj({"alerts": _arr(_ref("Alert")), **_page_props()}),
                               params=[_q("account", ID_FILTER), LIMIT, OFFSET], tag="accounts")},
        "/cutoff-approvals": {
            "get": _op("Mass cut-offs (one building or transformer) waiting for a person's "
                       "approval, or all of them", _obj({"approvals": _arr(_ref("Approval"))}),
                       params=[_q("state", {"type": "string", "enum": ["waiting", "all"]})],
                       tag="accounts"),
            "post": _op("Approve the waiting mass cut-off of a group (valid for 4 hours)",
                        _ref("Approval"), role="operator", tag="accounts",
                        body=_obj({"group": _name(200)}),
                        errors=(400, 401, 403, 404, 503)),
        },
        "/commands": {
            "get": _op("Relay command history, newest first",
                       _list("commands", _ref("Command")),
                       params=[_q("account", ID_FILTER), _q("meter", ID_FILTER),
                               _q("state", {"type": "string",
                                            "enum": [str(s) for s in CommandState]}),
                               LIMIT, OFFSET], tag="commands"),
            "post": _op("Manual cut-off or restore of one meter's relay, held against "
                        "billing's policy until hold_until or, without it, until released "
                        "(POST /meters/{meter}/hold/release)", _ref("Command"),
                        status=201, role="operator",
                        body=_obj({"meter": ID_TEXT,
                                   "action": {"type": "string",
                                              "enum": ["cutoff", "restore"]},
                                   "reason": _text(500),
                                   "hold_until": {
                                       **TIME, "maxLength": 64,
                                       "description": "end of the manual hold: ISO-8601 with "
                                                      "timezone, in the future (else 400)"}},
                                  optional=("reason", "hold_until")),
                        errors=(400, 401, 403, 404, 409, 503), tag="commands"),
        },
        "/meters/{meter}/hold/release": {"post": _op(
            "Release an operator's manual hold on a meter; billing's policy applies again "
            "at once (404: no such billing meter, 409: no hold)",
            _obj({"meter": STR, "released": _ref("Hold"),
                  "relay_wanted": {"type": "string", "enum": ["open", "closed"]},
                  "relay_reported": STR}),
            params=[meter], role="operator", tag="commands",
            body=_obj({"reason": _text(500)}, optional=("reason",)), body_required=False,
            errors=(400, 401, 403, 404, 409, 503))},
        "/commands/{command}": {"get": _op("One command with its audit trail", _ref("Command"),
                                           params=[_p("command")],
                                           errors=(400, 401, 403, 404, 503),
                                           tag="commands")},
        "/pending-meters": {"get": _op(
            "Unknown meters a gateway sent outside commissioning, waiting for an operator "
            "(approve or reject with `meterhub collector pending`)",
            _obj({"pending_meters": _arr(_ref("PendingMeter"))}),
            params=[_q("status", {"type": "string", "enum": ["pending", "rejected"]})],
            tag="fleet")},
        "/dead-letters": {"get": _op(
            "Messages the collector refused, with the reason",
            _list("dead_letters", _ref("DeadLetter")),
            params=[_q("gateway", ID_FILTER), LIMIT, OFFSET], tag="fleet")},
        "/users": {
            "get": _op("Users", _obj({"users": _arr(_ref("AdminUser"))}), role="admin",
                       tag="admin"),
            "post": _op("Create a user; the generated password is in this answer only",
                        _obj({"user": _ref("AdminUser"), "password": STR}), status=201,
                        role="admin", tag="admin", errors=(400, 401, 403, 409, 503),
                        body=_obj({"name": _name(100),
                                   "role": {"type": "string", "enum": list(ROLES)}})),
        },
        "/users/{id}": {"patch": _op(
            "Change a user's role or disable them", _obj({"user": _ref("AdminUser")}),
            params=[ID], role="admin", tag="admin", errors=(400, 401, 403, 404, 503),
            body={**_obj({"role": {"type": "string", "enum": list(ROLES)}, "disabled": BOOL},
                         optional=("role", "disabled")), "minProperties": 1})},
        "/tokens": {
            "get": _op("API tokens (never the tokens themselves)",
                       _obj({"tokens": _arr(_obj({
                           "id": INT, "user": STR, "label": STR, "created_at": TIME,
                           "last_used_at": _null(TIME), "revoked_at": _null(TIME)}))}),
                       role="admin", tag="admin"),
            "post": _op("Create an API token; the token is in this answer only",
                        _obj({"id": INT, "user": STR, "label": STR, "token": STR}),
                        status=201, role="admin", tag="admin",
                        errors=(400, 401, 403, 404, 503),
                        body=_obj({"user": _name(100), "label": _text(200)},
                                  optional=("label",))),
        },
        "/tokens/{id}": {"delete": _op("Revoke an API token",
                                       _obj({"id": INT, "revoked_at": TIME}), params=[ID],
                                       role="admin", tag="admin",
                                       errors=(400, 401, 403, 404, 503))},
        "/audit": {"get": _audit_op()},
        "/live": {"get": {
            "summary": "Live telemetry as Server-Sent Events",
            "description": "Needs the **viewer** role. Events: `snapshot` (gateways and the "
                           "open review count), `gateway` (a gateway changed: status, "
                           "last seen, health), `meter` (newest values of a meter that "
                           "reported), `review` (open review count changed), `unavailable` "
                           "(the database did not answer; browsers reconnect by themselves). "
                           "A comment line every 15 s keeps proxies from closing it.",
            "tags": ["live"],
            "responses": {"200": {"description": "an endless event stream",
                                  "content": {"text/event-stream": {"schema": STR}}},
                          **_errors(401, 403)},
        }},
        **_customer_paths(),
    }


def _customer_paths() -> dict[str, S]:
    """The customer's own page (role customer): their accounts, usage, notices."""
    account = _obj({"account": STR, "name": STR, "balance": MONEY,
                    "phase": {"type": "string", "enum": ["normal", "warned", "final", "cut"]},
                    "meters": _arr(STR), "cut_off": _null(BOOL),
                    "customer_action_needed": _null(BOOL),
                    "restore_mode": {"type": "string", "enum": ["close", "close_permitted"]}})
    customer = _obj({"id": STR, "name": STR, "language": {"type": "string",
                                                          "enum": ["zh-CN", "en"]},
                     "preferred_channel": {"type": "string", "enum": ["sms", "email", "wechat"]},
                     "contact_verified": BOOL})
    kwh = {"type": "string", "pattern": r"^\d+(\.\d+)?$"}
    notice = _obj({"id": INT, "account": STR, "kind": STR, "at": TIME, "subject": STR,
                   "body": STR, "delivered": BOOL})
    errors = (400, 401, 403, 503)
    return {
        "/my/accounts": {"get": _op("The customer's own accounts: balance, supply state",
                                    _obj({"customer": customer, "accounts": _arr(account)}),
                                    role="customer", tag="customer", errors=errors)},
        "/my/usage": {"get": _op(
            "Daily consumption of one of the customer's accounts (local days)",
            _obj({"account": STR, "zone": STR,
                  "days": _arr(_obj({"date": {"type": "string", "format": "date"},
                                     "kwh": kwh}))}),
            params=[_q("account", ID_FILTER, "one of the customer's accounts (default: the "
                                             "first)"),
                    _q("days", {"type": "integer", "minimum": 1, "maximum": 92})],
            role="customer", tag="customer", errors=(*errors, 404))},
        "/my/bills": {"get": _op(
            "The customer's postpaid bills, newest first",
            _obj({"bills": _arr(_obj({
                "bill_id": INT, "account": STR, "period_start": STR, "period_end": STR,
                "issued_at": TIME, "due_date": STR, "kwh": STR, "amount_due": MONEY,
                "penalties": MONEY}))}),
            params=[_q("limit", {"type": "integer", "minimum": 1, "maximum": 120})],
            role="customer", tag="customer", errors=errors)},
        "/my/bills/{id}": {"get": _bill_page_op()},
        "/my/notices": {"get": _op(
            "Notices sent to the customer, newest first, in their language",
            _obj({"notices": _arr(notice)}),
            params=[_q("limit", {"type": "integer", "minimum": 1, "maximum": 200})],
            role="customer", tag="customer", errors=errors)},
    }


def _bill_page_op() -> S:
    op = _op("One of the customer's e-bills as a page (zh-CN and English)", STR, params=[ID],
             role="customer", tag="customer", errors=(400, 401, 403, 404, 503))
    op["responses"]["200"]["content"] = {"text/html": {"schema": STR}}
    return op


def _collection_paths() -> dict[str, S]:
    """Postpaid collection (web/routes_collection.py)."""
    money_map: S = {"type": "object", "additionalProperties": MONEY}
    state = _obj({
        "account_id": STR, "name": STR, "group": _null(STR), "customer_class": STR,
        "phase": STR, "unpaid": MONEY, "overdue": MONEY, "ageing": money_map,
        "stage": _null(STR), "next_step": _null(STR), "next_at": _null(TIME),
        "cut_at": _null(TIME), "hold": _null(STR), "escalated": BOOL,
        "escalation_reason": _null(STR),
        "escalation_cleared": _null(_obj({"at": TIME, "by": STR, "reason": STR})),
        "good_payer": BOOL, "large": BOOL,
    })
    schedule = _obj({
        "schedule_id": INT, "account_id": STR, "month": STR, "expected": MONEY,
        "state": {"type": "string", "enum": ["kept", "missed", "settled", "cancelled"]},
        "created_at": TIME, "created_by": STR, "reason": STR, "ended_at": _null(TIME),
        "missed_due": _null(STR), "missed": _null(MONEY),
        "instalments": _arr(_obj({"seq": INT, "due": STR, "share": STR, "amount": MONEY})),
        "bill_share": STR, "bill_amount": MONEY})
    schedule_body = _obj({
        "month": {"type": "string", "pattern": r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$",
                  "example": "2026-05"},
        "expected": {"type": "string", "maxLength": 11, "example": "120000.00",
                     "pattern": r"^[1-9][0-9]{0,7}(\.[0-9]{1,2})?$",
                     "description": "expected monthly amount in yuan; default: the last "
                                    "bill's energy charges"},
        "instalments": {**_arr(_obj({
            "day": {"type": "integer", "minimum": 1, "maximum": 31},
            "share": {"type": "string", "pattern": r"^0\.[0-9]{1,6}$", "example": "0.3"}})),
            "minItems": 1, "maxItems": 6,
            "description": "days of the month in order, shares together below 1; "
                           "default: the configured hv_instalments (10th and 20th, 30 % "
                           "each); the month's bill settles the rest"},
        "reason": _name(500)}, optional=("expected", "instalments"))
    bill = _obj({k: MONEY for k in ("opening", "charges", "corrections", "adjustments",
                                    "penalties", "payments", "closing", "amount_due")}
                | {"bill_id": INT, "account_id": STR, "period_start": STR, "period_end": STR,
                   "issued_at": TIME, "due_date": STR, "customer_class": STR,
                   "tariff_id": STR, "kwh": STR, "breakdown": _arr({"type": "object"})})
    plan = _obj({"plan_id": INT, "account_id": STR, "state": STR, "created_at": TIME,
                 "created_by": STR, "reason": STR, "waive_penalty": BOOL, "covered": MONEY,
                 "ended_at": _null(TIME), "missed_due": _null(STR),
                 "instalments": _arr(_obj({"seq": INT, "due": STR, "amount": MONEY}))})
    notice = _obj({"notice_id": INT, "kind": STR, "required": BOOL, "not_before": TIME,
                   "attempts": INT, "last_outcome": _null(STR), "texts": {"type": "object"}})
    penalty = _obj({"bill_id": STR, "through": STR, "exact": STR, "total": MONEY,
                    "posted": MONEY})
    rate_row = {"type": "object", "additionalProperties": STR}
    bill_param = _p("bill", ID["schema"])
    ebill = _op("The e-bill: HTML, or PDF with format=pdf", STR,
                params=[bill_param, _q("format", {"type": "string", "enum": ["html", "pdf"]})],
                errors=(400, 401, 403, 404, 503), tag="collection")
    ebill["responses"]["200"]["content"] = {"text/html": {"schema": STR},
                                            "application/pdf": {"schema": STR}}
    return {
        "/collection/arrears": {"get": _op(
            "Arrears and ageing (0-30, 31-60, 61-90, >90 days overdue) per postpaid account "
            "with its ladder stage and next step; totals, very large and escalated ones",
            _obj({"accounts": _arr(state), "ageing_totals": money_map, "large": _arr(STR),
                  "escalated": _arr(STR)}), tag="collection")},
        "/collection/rates": {"get": _op(
            "Billed, collected, arrears and collection rate per bill month and per compound",
            _obj({"month": _arr(rate_row), "group": _arr(rate_row)}), tag="collection")},
        "/collection/plans": {"get": _op(
            "Hardship instalment plans, newest first", _obj({"plans": _arr(plan)}),
            params=[_q("account", ID_FILTER)], tag="collection")},
        "/accounts/{account}/bills": {"get": _op(
            "A postpaid account's bills, newest first",
            _obj({"account": STR, "bills": _arr(bill)}), params=[_p("account")],
            errors=(400, 401, 403, 404, 503), tag="collection")},
        "/accounts/{account}/collection": {"get": _op(
            "A postpaid account's ladder: stage, next step and date, penalty lines and every "
            "notice with its text and delivery outcome",
            _obj({**state["properties"], "penalties": _arr(penalty),
                  "notices": _arr(notice)}),
            params=[_p("account")], errors=(400, 401, 403, 404, 503), tag="collection")},
        "/accounts/{account}/instalment-plans": {"post": _op(
            "Agree a hardship instalment plan: protected from disconnection while kept",
            plan, params=[_p("account")], status=201, role="operator",
            body=_obj({"instalments": {**_arr(_obj({"due": {"type": "string",
                                                            "format": "date"},
                                                     "amount": AMOUNT})),
                                       "minItems": 1, "maxItems": 36},
                       "reason": _name(500), "waive_penalty": BOOL},
                      optional=("waive_penalty",)),
            errors=(400, 401, 403, 404, 503), tag="collection")},
        "/accounts/{account}/escalation/clear": {"post": _op(
            "Clear the escalation flag (formal demand letter) with a reason; who cleared it "
            "is recorded. Only a bill falling into arrears afterwards sets it again",
            state, params=[_p("account")], role="operator",
            body=_obj({"reason": _name(500)}),
            errors=(400, 401, 403, 404, 409, 503), tag="collection")},
        "/accounts/{account}/settlement-schedules": {
            "get": _op(
                "A postpaid account's high-voltage in-month settlement schedules, newest "
                "month first", _obj({"account": STR, "schedules": _arr(schedule)}),
                params=[_p("account")], errors=(400, 401, 403, 404, 503), tag="collection"),
            "post": _op(
                "Agree a high-voltage account's in-month settlement for a month: instalments "
                "on days of the month, each a share of the expected amount; a missed one "
                "puts the account on the collection ladder",
                schedule, params=[_p("account")], status=201, role="operator",
                body=schedule_body, errors=(400, 401, 403, 404, 409, 503), tag="collection"),
        },
        "/bills/{bill}": {"get": _op(
            "One bill with its lines", _obj({"bill": bill, "lines": _arr(_obj({
                "line_no": INT, "kind": STR, "description": STR, "amount": MONEY}))}),
            params=[bill_param], errors=(400, 401, 403, 404, 503), tag="collection")},
        "/bills/{bill}/ebill": {"get": ebill},
    }


def _audit_op() -> S:
    op = _op("Every action made through the web (logins included): who, when, what and "
             "from where, newest first; format=csv for an export",
             _obj({"entries": _arr(_ref("AuditEntry")), **_page_props()}),
             params=[_q("user", _text()),
                     _q("limit", {"type": "integer", "minimum": 1, "maximum": 100_000}),
                     OFFSET, _q("format", {"type": "string", "enum": ["json", "csv"]})],
             role="auditor", tag="admin")
    op["description"] = "Needs the **auditor** or **admin** role."
    op["responses"]["200"]["content"]["text/csv"] = {"schema": STR}
    return op


def _review_work_paths() -> dict[str, S]:
    """Decisions that change values, the queue's work, and site-visit work orders."""
    comment = _text(2000)
    method = {"type": "string", "enum": ["like_day", "linear"],
              "description": "estimate method (default like_day)"}
    items = {**_arr({"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
             "minItems": 1, "maxItems": 500}
    due = {**TIME, "description": "when it is due (with a time zone)"}
    decided = (400, 401, 403, 404, 409, 503)

    def estimate(what: str) -> S:
        return {"post": _op(what, _ref("ReviewOutcome"), params=[ID],
                            body=_obj({"comment": comment, "method": method},
                                      optional=("comment", "method")),
                            body_required=False, role="engineer", errors=decided,
                            tag="review")}

    return {
        "/review-items/{id}/reject": estimate(
            "The value is invalid: an estimate (like_day or linear) replaces every interval "
            "of the item; billing charges the difference if it was billed"),
        "/review-items/{id}/estimate": estimate(
            "Replace the item's intervals by an estimate of the chosen method"),
        "/review-items/{id}/correct": {"post": _op(
            "The engineer's own kWh for intervals of the item (NEM12 quality F, method 16); "
            "may revise a decided item, and billing posts the adjustment",
            _ref("ReviewOutcome"), params=[ID],
            body=_obj({"reason": _name(2000), "values": {
                **_arr(_obj({"interval_start": TIME, "kwh": KWH})),
                "minItems": 1, "maxItems": 500}}),
            role="engineer", errors=decided, tag="review")},
        "/review/bulk-decisions": {"post": _op(
            "One decision for many items, all or nothing", _obj({
                "decided": _arr(_ref("ReviewOutcome"))}),
            body=_obj({"items": items, "decision": {"type": "string", "enum": [
                "confirmed", "dismissed", "rejected", "estimated"]},
                "comment": comment, "method": method}, optional=("comment", "method")),
            role="engineer", errors=decided, tag="review")},
        "/review/assignments": {"post": _op(
            "Give items to a person or a team, with a due date", _obj({"assigned": INT}),
            body={**_obj({"items": items, "to": _name(), "team": _name(), "due_at": due},
                         optional=("to", "team", "due_at")),
                  "anyOf": [{"required": ["to"]}, {"required": ["team"]}]},
            role="engineer", errors=decided, tag="review")},
        "/review-items/{id}/comments": {"post": _op(
            "Add a comment to the item's history", _obj({"history": _arr(_ref("ReviewStep"))}),
            params=[ID], body=_obj({"text": _name(2000)}), status=201, role="engineer",
            errors=decided, tag="review")},
        "/review-items/{id}/history": {"get": _op(
            "Everything done to the item, oldest first",
            _obj({"history": _arr(_ref("ReviewStep"))}), params=[ID],
            errors=(400, 401, 403, 404, 503), tag="review")},
        "/review-items/{id}/work-orders": {"post": _op(
            "Order a site visit: the answer is in the field", _ref("WorkOrder"), params=[ID],
            body=_obj({"instructions": _name(2000), "assigned_to": _name(), "due_at": due},
                      optional=("assigned_to", "due_at")),
            status=201, role="engineer", errors=decided, tag="review")},
        "/work-orders": {"get": _op(
            "Site-visit work orders, soonest due first",
            _obj({"work_orders": _arr(_ref("WorkOrder"))}),
            params=[_q("status", {"type": "string",
                                  "enum": ["open", "done", "cancelled", "all"]})],
            tag="review")},
        "/work-orders.csv": {"get": _csv_op(
            "Work orders as CSV for the field team's tools",
            [_q("status", {"type": "string", "enum": ["open", "done", "cancelled", "all"]})])},
        "/work-orders/{id}/print": {"get": _html_op("A work order as a printable page", [ID])},
        "/work-orders/{id}/close": {"post": _op(
            "Close a site visit with its findings", _ref("WorkOrder"), params=[ID],
            body=_obj({"findings": _name(2000), "cancelled": BOOL}, optional=("cancelled",)),
            role="engineer", errors=decided, tag="review")},
    }


def _csv_op(summary: str, params: list[S]) -> S:
    op = _op(summary, STR, params=params, tag="review")
    op["responses"]["200"]["content"] = {"text/csv": {"schema": STR}}
    return op


def _html_op(summary: str, params: list[S]) -> S:
    op = _op(summary, STR, params=params, errors=(400, 401, 403, 404, 503), tag="review")
    op["responses"]["200"]["content"] = {"text/html": {"schema": STR}}
    return op


def _refusals(paths: dict[str, S]) -> dict[str, S]:
    """Every request that changes something may be refused as not JSON (415) or, from a
    browser, as cross-site (403)."""
    for ops in paths.values():
        for method, op in ops.items():
            if method in ("post", "put", "patch", "delete"):
                op["responses"].update(_errors(403, 415))
    return paths


def document() -> S:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "meterhub API",
            "version": "1.0.0",
            "description": "Gateways, meters, validation review queue, prepaid accounts and "
                           "relay commands. Log in with `POST /session` (the page does) or "
                           "send `Authorization: Bearer <token>`. Roles: viewer (read) < "
                           "engineer (review items) < operator (top-ups, commands) < admin "
                           "(users, tokens, sessions); the auditor reads what a viewer "
                           "reads and the audit log. Requests that change something "
                           "send `Content-Type: application/json`; from a browser session "
                           "they must also come from this origin. Errors are "
                           "`{\"error\": {\"status\", \"message\"}}`. Money is a decimal "
                           "string in yuan; times are ISO-8601 UTC.",
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "meterhub_session"},
            },
        },
        "security": [{"token": []}, {"session": []}],
        "paths": _refusals({**_paths(), **_review_work_paths(), **_collection_paths()}),
    }


DOCUMENT = document()  # what is served, and what web.validation checks requests against


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
