"""Review decisions that change what billing charges, and the work around them.

:mod:`collector.vee.review` releases held intervals as measured (confirm, dismiss). Here an
engineer says the measured value is wrong: *reject* (an estimate replaces it, like-day by
default), *estimate* (the same with a chosen method) or *correct* (the engineer's own value
with a reason). The new value is an :data:`interval_overrides` row and the interval itself,
with NEM12 quality S (substitute) or F (final substitute, a person's value) and the method
code; validation passes skip overridden intervals, so a re-run never undoes a decision. An
interval already charged goes on billing's change queue again, and billing posts the
difference as an adjustment (billing/charging.py), so a revision after billing corrects the
ledger too.

Corrections and estimates may revise a decided item (a site visit found the truth after the
item was confirmed); confirm and dismiss only close open items. Every step is a history row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import numpy as np
import psycopg

from collector.config import ValidationConfig
from collector.vee import estimate, rules
from collector.vee.review import VEE_LOCK, ReviewError, release_held

Method = Literal["like_day", "linear"]
METHODS: tuple[Method, ...] = ("like_day", "linear")
# NEM12 method 16: "agreed" - the value a person determined (a correction)
METHOD_AGREED = 16
MAX_INTERVAL_KWH = Decimal("1000000")
MAX_TEXT = 2000
# an interval's kWh as numeric(16,4) from its exact counts of 0.0001 kWh
_KWH = "kwh_e4 * 0.0001 AS kwh"


@dataclass(frozen=True, slots=True)
class Changed:
    interval_start: datetime
    previous_kwh: Decimal
    kwh: Decimal


@dataclass(frozen=True, slots=True)
class Outcome:
    item_id: int
    status: str
    released: int  # intervals released as measured
    changed: tuple[Changed, ...]  # intervals given a new value


@dataclass(frozen=True, slots=True)
class _Item:
    item_id: int
    meter_id: str
    meter: int
    status: str
    start: datetime
    end: datetime


def _text(value: str, what: str, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise ReviewError(f"{what} is required")
    if len(value) > MAX_TEXT:
        raise ReviewError(f"{what} is longer than {MAX_TEXT} characters")
    return value


def _lock_item(conn: psycopg.Connection[Any], item_id: int) -> _Item:
    row = conn.execute(
        "SELECT r.id, r.meter_id, m.meter_key, r.status, r.period_start, r.period_end"
        " FROM review_items r JOIN meters m USING (meter_id) WHERE r.id = %s FOR UPDATE OF r",
        (item_id,)).fetchone()
    if row is None:
        raise ReviewError(f"review item {item_id} does not exist")
    return _Item(*row)


def _history(conn: psycopg.Connection[Any], item_id: int, by: str, action: str,
             detail: dict[str, Any], comment: str = "") -> None:
    conn.execute("INSERT INTO review_history (item_id, by, action, detail, comment)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (item_id, by, action, json.dumps(detail, default=str), comment))


def parse_kwh(value: object, what: str) -> Decimal:
    """An interval's kWh from a person: a decimal of at most 4 places, 0..1,000,000."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ReviewError(f"{what} must be a decimal number as text, e.g. \"1.25\"")
    try:
        kwh = Decimal(str(value).strip())
    except InvalidOperation:
        raise ReviewError(f"{what}: {str(value)[:40]!r} is not a number") from None
    if not kwh.is_finite() or kwh < 0 or kwh > MAX_INTERVAL_KWH:
        raise ReviewError(f"{what} must be within 0..{MAX_INTERVAL_KWH} kWh")
    if kwh != kwh.quantize(Decimal("0.0001")):
        raise ReviewError(f"{what} has more than 4 decimal places")
    return kwh


# ---------------------------------------------------------------------------- decisions


def correct(conn: psycopg.Connection[Any], item_id: int, who: str, reason: str,
            values: dict[datetime, Decimal]) -> Outcome:
    """The engineer's own kWh for some of the item's intervals (the rest stand as measured)."""
    who = _text(who, "who decides", required=True)
    reason = _text(reason, "a correction's reason", required=True)
    if not values:
        raise ReviewError("a correction needs at least one interval and its kWh")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (VEE_LOCK,))
        item = _lock_item(conn, item_id)
        starts = _item_intervals(conn, item)
        unknown = sorted(set(values) - set(starts))
        if unknown:
            raise ReviewError(f"{unknown[0].isoformat()} is not an interval of review item "
                              f"{item_id} ({item.start.isoformat()} .. {item.end.isoformat()})")
        changed = _override(conn, item, who, values, quality="F", method=METHOD_AGREED)
        return _close(conn, item, who, "corrected", reason, changed,
                      {"values": {k.isoformat(): str(v) for k, v in values.items()}})


def estimate_item(conn: psycopg.Connection[Any], item_id: int, who: str, comment: str = "", *,
                  method: Method = "like_day", status: Literal["rejected", "estimated"] =
                  "estimated", cfg: ValidationConfig | None = None) -> Outcome:
    """Replace every interval of the item by an estimate (reject: the values are invalid)."""
    who = _text(who, "who decides", required=True)
    comment = _text(comment, "comment", required=False)
    if method not in METHODS:
        raise ReviewError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (VEE_LOCK,))
        item = _lock_item(conn, item_id)
        starts = _item_intervals(conn, item)
        if not starts:
            raise ReviewError(f"review item {item_id} covers no stored interval")
        if method == "linear":
            values, code = _linear(conn, item, starts), rules.METHOD_LINEAR
        else:
            values, code = _like_day(conn, item, starts, cfg or ValidationConfig())
        changed = _override(conn, item, who, values, quality="S", method=code)
        return _close(conn, item, who, status, comment, changed, {"method": method})


def _item_intervals(conn: psycopg.Connection[Any], item: _Item) -> dict[datetime, Decimal]:
    rows = conn.execute(
        f"SELECT interval_start, {_KWH} FROM intervals WHERE meter = %s"
        " AND interval_start >= %s AND interval_start < %s ORDER BY interval_start",
        (item.meter, item.start, item.end)).fetchall()
    return {start: kwh for start, kwh in rows}


def _linear(conn: psycopg.Connection[Any], item: _Item,
            starts: dict[datetime, Decimal]) -> dict[datetime, Decimal]:
    """Interval consumption interpolated between the nearest trusted intervals either side."""
    before = conn.execute(
        f"SELECT interval_start, {_KWH} FROM intervals WHERE meter = %s AND interval_start < %s"
        " AND NOT held AND quality = 'A' ORDER BY interval_start DESC LIMIT 1",
        (item.meter, item.start)).fetchone()
    after = conn.execute(
        f"SELECT interval_start, {_KWH} FROM intervals WHERE meter = %s AND interval_start >= %s"
        " AND NOT held AND quality = 'A' ORDER BY interval_start LIMIT 1",
        (item.meter, item.end)).fetchone()
    if before is None and after is None:
        raise ReviewError("no trusted interval on either side to interpolate from; "
                          "estimate like_day or correct by hand")
    (t0, k0), (t1, k1) = before or after, after or before  # type: ignore[misc]
    span = (t1 - t0).total_seconds()
    out = {}
    for start in starts:
        share = Decimal(0) if span == 0 else Decimal((start - t0).total_seconds() / span)
        out[start] = (k0 + (k1 - k0) * share).quantize(Decimal("0.0001"))
    return out


def _like_day(conn: psycopg.Connection[Any], item: _Item, starts: dict[datetime, Decimal],
              cfg: ValidationConfig) -> tuple[dict[datetime, Decimal], int]:
    """The mean of the same slot on previous days of the same kind (holidays as Sundays)."""
    first = min(starts)
    rows = conn.execute(
        "SELECT extract(epoch FROM interval_start)::float8, kwh_e4 / 10000::float8 FROM intervals"
        " WHERE meter = %s AND interval_start >= %s AND interval_start < %s"
        " AND quality = 'A' AND flags & %s = 0 AND NOT held",
        (item.meter, first - timedelta(weeks=2 * cfg.like_day_weeks), first,
         rules.HOLDS)).fetchall()
    hist = np.array(rows, dtype=np.float64).reshape(-1, 2)
    s = np.array([t.timestamp() for t in starts], dtype=np.float64)
    m = np.zeros(len(s), dtype=np.int64)
    size = int((item.end - item.start).total_seconds() / max(len(starts), 1)) or 900
    profile, n_have = estimate.like_day_profile(
        m, s, np.zeros(len(hist), dtype=np.int64), hist[:, 0], hist[:, 1], cfg, size)
    if np.isnan(profile).any():
        missing = int(np.isnan(profile).sum())
        raise ReviewError(f"no like-day history for {missing} of {len(s)} intervals; "
                          "estimate linear or correct by hand")
    method = rules.METHOD_LIKE_DAY if int(n_have.min()) == 1 else rules.METHOD_AVG_LIKE_DAY
    return ({start: Decimal(repr(float(v))).quantize(Decimal("0.0001"))
             for start, v in zip(starts, profile, strict=True)}, method)


def _override(conn: psycopg.Connection[Any], item: _Item, who: str,
              values: dict[datetime, Decimal], *, quality: str, method: int) -> list[Changed]:
    changed = []
    for start, kwh in sorted(values.items()):
        row = conn.execute(
            f"SELECT i.{_KWH}, o.previous_kwh FROM intervals i LEFT JOIN interval_overrides o"
            " USING (meter, interval_start) WHERE i.meter = %s AND i.interval_start = %s"
            " FOR UPDATE OF i", (item.meter, start)).fetchone()
        assert row is not None
        conn.execute("UPDATE intervals SET kwh_e4 = %s, quality = %s, method = %s, held = false"
                     " WHERE meter = %s AND interval_start = %s",
                     (int(kwh.scaleb(4)), quality, method, item.meter, start))
        conn.execute(
            """INSERT INTO interval_overrides AS o (meter, interval_start, kwh, quality, method,
                   item_id, decided_by, previous_kwh)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (meter, interval_start) DO UPDATE SET kwh = excluded.kwh,
                   quality = excluded.quality, method = excluded.method,
                   item_id = excluded.item_id, decided_by = excluded.decided_by,
                   decided_at = now()""",
            # previous_kwh: what the meter said, kept through later revisions
            (item.meter, start, kwh, quality, method, item.item_id, who,
             row[1] if row[1] is not None else row[0]))
        changed.append(Changed(start, Decimal(row[0]), kwh))
    return changed


def _close(conn: psycopg.Connection[Any], item: _Item, who: str, status: str, comment: str,
           changed: list[Changed], detail: dict[str, Any]) -> Outcome:
    conn.execute("UPDATE review_items SET status = %s, decided_at = now(), decided_by = %s,"
                 " comment = %s WHERE id = %s", (status, who, comment, item.item_id))
    released = release_held(conn, item.item_id)
    _history(conn, item.item_id, who, "decided",
             {"decision": status, "previous_status": item.status, **detail,
              "changed": [{"interval_start": c.interval_start.isoformat(),
                           "previous_kwh": str(c.previous_kwh), "kwh": str(c.kwh)}
                          for c in changed]}, comment)
    return Outcome(item.item_id, status, released, tuple(changed))


# ---------------------------------------------------------------------------- the queue's work


def assign(conn: psycopg.Connection[Any], item_ids: list[int], who: str, *,
           to: str | None, team: str | None, due_at: datetime | None) -> int:
    """Give items to a person or team with a due date (all of them, or none)."""
    who = _text(who, "who assigns", required=True)
    to = _text(to, "assignee", required=False) or None if to is not None else None
    team = _text(team, "team", required=False) or None if team is not None else None
    if due_at is not None and due_at.tzinfo is None:
        raise ReviewError("due date needs a time zone")
    with conn.transaction():
        for item_id in item_ids:
            item = _lock_item(conn, item_id)
            conn.execute("UPDATE review_items SET assigned_to = %s, team = %s, due_at = %s"
                         " WHERE id = %s", (to, team, due_at, item.item_id))
            _history(conn, item.item_id, who, "assigned",
                     {"to": to, "team": team, "due_at": due_at})
    return len(item_ids)


def comment(conn: psycopg.Connection[Any], item_id: int, who: str, text: str) -> None:
    who = _text(who, "who comments", required=True)
    text = _text(text, "comment", required=True)
    with conn.transaction():
        _lock_item(conn, item_id)
        _history(conn, item_id, who, "comment", {}, text)


def bulk_decide(conn: psycopg.Connection[Any], item_ids: list[int], decision: str, who: str,
                comment_text: str = "", *, method: Method = "like_day",
                cfg: ValidationConfig | None = None) -> list[Outcome]:
    """One decision for many items, all or nothing: the first refusal names its item."""
    if not item_ids:
        raise ReviewError("no review items given")
    if len(set(item_ids)) != len(item_ids):
        raise ReviewError("an item is listed twice")
    from collector.vee.review import decide_in

    out: list[Outcome] = []
    with conn.transaction():
        for item_id in item_ids:
            try:
                if decision in ("confirmed", "dismissed"):
                    done = decide_in(conn, item_id, decision, who, comment_text)  # type: ignore[arg-type]
                    out.append(Outcome(item_id, decision, done.released, ()))
                elif decision in ("rejected", "estimated"):
                    out.append(estimate_item(conn, item_id, who, comment_text, method=method,
                                             status=decision, cfg=cfg))  # type: ignore[arg-type]
                else:
                    raise ReviewError(f"{decision!r} cannot be taken in bulk (confirmed, "
                                      "dismissed, rejected, estimated)")
            except ReviewError as exc:
                raise ReviewError(f"item {item_id}: {exc}; nothing was decided") from None
    return out


# ---------------------------------------------------------------------------- work orders


@dataclass(frozen=True, slots=True)
class WorkOrder:
    id: int
    item_id: int
    meter_id: str
    created_at: datetime
    created_by: str
    assigned_to: str | None
    due_at: datetime | None
    instructions: str
    status: str
    closed_at: datetime | None
    closed_by: str | None
    findings: str | None


_WO = ("id, item_id, meter_id, created_at, created_by, assigned_to, due_at, instructions,"
       " status, closed_at, closed_by, findings")


def open_work_order(conn: psycopg.Connection[Any], item_id: int, who: str, instructions: str, *,
                    assigned_to: str | None = None, due_at: datetime | None = None) -> WorkOrder:
    """A site visit: the answer to the item is in the field."""
    who = _text(who, "who orders the visit", required=True)
    instructions = _text(instructions, "instructions", required=True)
    with conn.transaction():
        item = _lock_item(conn, item_id)
        row = conn.execute(
            f"INSERT INTO work_orders (item_id, meter_id, created_by, assigned_to, due_at,"
            f" instructions) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_WO}",
            (item.item_id, item.meter_id, who, assigned_to, due_at, instructions)).fetchone()
        assert row is not None
        order = WorkOrder(*row)
        _history(conn, item_id, who, "work_order", {"work_order": order.id}, instructions)
    return order


def close_work_order(conn: psycopg.Connection[Any], order_id: int, who: str, findings: str, *,
                     cancelled: bool = False) -> WorkOrder:
    who = _text(who, "who closes the visit", required=True)
    findings = _text(findings, "findings", required=True)
    with conn.transaction():
        row = conn.execute(
            f"UPDATE work_orders SET status = %s, closed_at = now(), closed_by = %s,"
            f" findings = %s WHERE id = %s AND status = 'open' RETURNING {_WO}",
            ("cancelled" if cancelled else "done", who, findings, order_id)).fetchone()
        if row is None:
            was = conn.execute("SELECT status FROM work_orders WHERE id = %s",
                               (order_id,)).fetchone()
            raise ReviewError(f"work order {order_id} does not exist" if was is None
                              else f"work order {order_id} is already closed ({was[0]})")
        order = WorkOrder(*row)
        _history(conn, order.item_id, who, "work_order_closed",
                 {"work_order": order.id, "status": order.status}, findings)
    return order


def work_orders(conn: psycopg.Connection[Any], status: str | None = "open",
                order_id: int | None = None) -> list[WorkOrder]:
    rows = conn.execute(
        f"SELECT {_WO} FROM work_orders WHERE (%s::text IS NULL OR status = %s)"
        " AND (%s::bigint IS NULL OR id = %s) ORDER BY due_at NULLS LAST, id",
        (status, status, order_id, order_id)).fetchall()
    return [WorkOrder(*r) for r in rows]


def work_orders_csv(orders: list[WorkOrder]) -> str:
    """For the field team's own tools (spreadsheet, dispatch)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["work_order", "review_item", "meter", "created_at", "created_by",
                     "assigned_to", "due_at", "status", "instructions", "findings"])
    for o in orders:
        writer.writerow([o.id, o.item_id, o.meter_id, o.created_at.isoformat(), o.created_by,
                         o.assigned_to or "", o.due_at.isoformat() if o.due_at else "",
                         o.status, _no_formula(o.instructions), _no_formula(o.findings or "")])
    return out.getvalue()


def _no_formula(text: str) -> str:
    """A cell a spreadsheet would run as a formula is quoted (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def history(conn: psycopg.Connection[Any], item_id: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT at, by, action, detail, comment FROM review_history"
                        " WHERE item_id = %s ORDER BY id", (item_id,)).fetchall()
    return [{"at": at, "by": by, "action": action, "detail": detail, "comment": text}
            for at, by, action, detail, text in rows]
