"""What other parts (the web) may ask of the collector's tables: gateways, meters, readings,
intervals, anomalies, the review queue and dead letters. One function per question, typed
rows; nobody outside the collector writes SQL against its tables.

Every function takes any psycopg connection (it opens its own dict-row cursor) and answers
the same on plain PostgreSQL and on TimescaleDB: values come from the ``reading_values``
view (layout v2's typed columns and side table as quantity, value, unit), history buckets use
``date_bin`` over a ``ts`` range of one meter, which the readings primary key ``(meter, ts)``
serves on both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, cast

import psycopg
from psycopg.rows import dict_row

from collector.vee.rules import ANOMALY_UNITS


class Gateway(TypedDict):
    gateway: str
    site: str | None
    reported_state: str | None
    status_at: datetime | None
    last_seen: datetime | None
    health: dict[str, Any] | None
    max_seq: int | None
    batches: int
    duplicate_batches: int
    clock_offset_s: float | None
    meters: int  # how many meters it reads
    status: str  # "online" or "offline", by its own word or by silence
    offline_reason: str | None


class SeqGap(TypedDict):
    from_seq: int
    to_seq: int
    noticed_after: int | None


class LateBatches(TypedDict):
    seq_from: int
    seq_to: int
    readings: int
    oldest: datetime
    newest: datetime
    delay_s: int
    received_at: datetime


class GatewayDetail(Gateway):
    gaps: list[SeqGap]  # the newest 20 batch sequence gaps
    late: list[LateBatches]  # the newest 20 runs of late batches (backfills, replays)


class GatewayEvent(TypedDict):
    id: int
    source: str
    kind: str
    meter: str | None
    at: datetime
    detail: str | None
    data: dict[str, Any] | None
    received_at: datetime


class Value(TypedDict):
    value: float
    unit: str
    at: datetime


class LatestValues(TypedDict):
    meter: str
    last_seen: datetime | None
    relay: str | None
    values: dict[str, Value]  # by quantity


class Meter(TypedDict):
    meter: str
    gateway: str
    site: str | None
    protocol: str | None
    expected_interval_s: int | None
    first_seen: datetime | None
    last_seen: datetime | None
    relay: str | None
    relay_at: datetime | None
    relay_capable: bool | None  # the meter has a relay (its gateway says); None: not said
    clock_drift_s: float | None  # newest clock check: meter clock minus gateway time
    clock_read_at: datetime | None
    open_reviews: int
    values: dict[str, Value]  # newest value of each quantity


class Point(TypedDict):
    t: datetime
    value: Decimal
    min: Decimal
    max: Decimal
    last: Decimal


class Interval(TypedDict):
    start: datetime
    end: datetime
    kwh: Decimal | None
    quality: str
    method: str | None
    held: bool
    reason: str | None
    raw_kwh: Decimal | None
    flags: Any


class Anomaly(TypedDict):
    id: int
    meter: str
    rule: str
    at: datetime
    reason: str
    value: Decimal | None
    expected: Decimal | None
    value_unit: str  # "" when the value has none
    expected_unit: str
    holds: bool
    review_item_id: int | None
    detected_at: datetime


class ReviewItem(TypedDict):
    id: int
    meter: str
    rule: str
    period_start: datetime
    period_end: datetime
    reason: str
    status: str
    opened_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    comment: str | None


class ReviewItemDetail(ReviewItem):
    anomalies: list[Anomaly]


class DeadLetter(TypedDict):
    id: int
    topic: str
    reason: str
    gateway: str | None
    received_at: datetime
    size: int
    payload: str  # the first 2000 characters


class PendingMeter(TypedDict):
    meter_id: str
    gateway: str  # the gateway that claims it
    site: str | None
    first_seen: datetime
    last_seen: datetime
    readings: int  # refused (dead-lettered) while it waits
    status: str  # pending | rejected
    decided_by: str | None
    decided_at: datetime | None


def _fetch(conn: psycopg.Connection[Any], query: str,
           params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()  # type: ignore[arg-type]


def _count(conn: psycopg.Connection[Any], query: str, params: Any) -> int:
    rows = _fetch(conn, query, params)
    return int(rows[0]["n"]) if rows else 0


def _where(filters: tuple[tuple[str, Any], ...]) -> tuple[str, list[Any]]:
    """The conditions whose value is given (None or blank: no filter) and their values."""
    given = [(clause, value) for clause, value in filters if value is not None and value != ""]
    return " AND ".join(["true", *(c for c, _ in given)]), [v for _, v in given]


def _like(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# ---------------------------------------------------------------------------- gateways

_GATEWAYS = """
SELECT g.gateway, g.site, g.state AS reported_state, g.status_at, g.last_seen, g.health,
       g.max_seq, g.batches, g.duplicate_batches, g.clock_offset_s,
       (SELECT count(*) FROM meters m WHERE m.gateway = g.gateway) AS meters,
       CASE WHEN g.state = 'offline' THEN 'offline'
            WHEN g.last_seen IS NULL OR g.last_seen < now() - make_interval(secs => %(after)s)
                 THEN 'offline'
            ELSE 'online' END AS status,
       CASE WHEN g.state = 'offline' THEN 'the gateway reported offline (or its last will fired)'
            WHEN g.last_seen IS NULL THEN 'never heard from'
            WHEN g.last_seen < now() - make_interval(secs => %(after)s)
                 THEN format('nothing heard for over %%s s', %(after)s::int)
            ELSE NULL END AS offline_reason
FROM gateways g
"""


def gateways(conn: psycopg.Connection[Any], offline_after_s: float) -> list[Gateway]:
    """Every gateway heard from, online unless it said offline or was silent too long."""
    return cast("list[Gateway]", _fetch(conn, _GATEWAYS + " ORDER BY g.gateway",
                                        {"after": offline_after_s}))


def gateway(conn: psycopg.Connection[Any], name: str,
            offline_after_s: float) -> GatewayDetail | None:
    """One gateway with its newest sequence gaps; None when never heard from."""
    rows = _fetch(conn, _GATEWAYS + " WHERE g.gateway = %(name)s",
                  {"after": offline_after_s, "name": name})
    if not rows:
        return None
    out = cast(GatewayDetail, rows[0])
    out["gaps"] = cast("list[SeqGap]", _fetch(
        conn, "SELECT from_seq, to_seq, noticed_after FROM seq_gaps WHERE gateway = %s"
        " ORDER BY from_seq DESC LIMIT 20", (name,)))
    out["late"] = cast("list[LateBatches]", _fetch(
        conn, "SELECT seq_from, seq_to, readings, oldest_ts AS oldest, newest_ts AS newest,"
        " delay_s, received_at FROM late_batches WHERE gateway = %s"
        " ORDER BY seq_from DESC LIMIT 20", (name,)))
    return out


def gateway_events(conn: psycopg.Connection[Any], name: str, limit: int) -> list[GatewayEvent]:
    """A gateway's newest events (its own and the collector's), newest first."""
    return cast("list[GatewayEvent]", _fetch(
        conn, "SELECT id, source, kind, meter_id AS meter, at, detail, data, received_at"
        " FROM gateway_events WHERE gateway = %s ORDER BY at DESC, id DESC LIMIT %s",
        (name, limit)))


def gateway_meter_ids(conn: psycopg.Connection[Any], name: str) -> list[str]:
    """The meters a gateway reads, by id."""
    return [r["meter_id"] for r in _fetch(
        conn, "SELECT meter_id FROM meters WHERE gateway = %s ORDER BY meter_id", (name,))]


# ---------------------------------------------------------------------------- meters

_METER_COLUMNS = """
m.meter_id AS meter, m.gateway, m.site, m.protocol, m.expected_interval_s, m.first_seen,
m.last_seen, m.relay, m.relay_at, f.relay_capable, f.clock_drift_s, f.clock_read_at,
(SELECT count(*) FROM review_items ri WHERE ri.meter_id = m.meter_id AND ri.status = 'open')
    AS open_reviews
"""


# what the meter can do and its newest clock check (collector/migrations/0020)
_FIELD = "LEFT JOIN meter_field_contract f ON f.meter_id = m.meter_id"


def meter_last_seen(conn: psycopg.Connection[Any],
                    since: datetime | None = None) -> dict[str, datetime]:
    """Meters and their newest reading time, only those at or after ``since`` when given:
    a live poll transfers the meters that reported, not the whole fleet."""
    rows = _fetch(
        conn, "SELECT meter_id, last_seen FROM meters WHERE last_seen IS NOT NULL"
        " AND (%(since)s::timestamptz IS NULL OR last_seen >= %(since)s)", {"since": since})
    return {r["meter_id"]: r["last_seen"] for r in rows}


def latest_values(conn: psycopg.Connection[Any], meters: list[str]) -> list[LatestValues]:
    """Newest value of every quantity of each meter (from its last poll window), in the
    order asked; unknown meters are left out."""
    rows = _fetch(
        conn,
        """SELECT m.meter_id, m.last_seen, m.relay, r.quantity, r.value, r.unit, r.ts
           FROM meters m
           LEFT JOIN LATERAL (
               SELECT DISTINCT ON (quantity) quantity, value, unit, ts FROM reading_values r
               WHERE r.meter = m.meter_key AND r.ts > m.last_seen - interval '1 hour'
                 AND r.ts <= m.last_seen
               ORDER BY quantity, ts DESC) r ON true
           WHERE m.meter_id = ANY(%s)""",
        (meters,),
    )
    out: dict[str, LatestValues] = {}
    for r in rows:
        item = out.setdefault(r["meter_id"], {
            "meter": r["meter_id"], "last_seen": r["last_seen"], "relay": r["relay"],
            "values": {},
        })
        if r["quantity"] is not None:
            item["values"][r["quantity"]] = {"value": r["value"], "unit": r["unit"], "at": r["ts"]}
    return [out[m] for m in meters if m in out]


def meters(conn: psycopg.Connection[Any], gateway: str | None, search: str | None,
           limit: int, offset: int) -> tuple[list[Meter], int]:
    """A page of meters (of one gateway, ids containing ``search``) and the total count."""
    sql_where, params = _where((("m.gateway = %s", gateway),
                                ("m.meter_id ILIKE %s", search and _like(search))))
    total = _count(conn, f"SELECT count(*) AS n FROM meters m WHERE {sql_where}", params)
    rows = _fetch(conn, f"SELECT {_METER_COLUMNS} FROM meters m {_FIELD} WHERE {sql_where}"
                  " ORDER BY m.meter_id LIMIT %s OFFSET %s", [*params, limit, offset])
    return _with_values(conn, rows), total


def meter(conn: psycopg.Connection[Any], meter_id: str) -> Meter | None:
    """One meter with its newest values; None when the collector never heard of it."""
    rows = _fetch(conn, f"SELECT {_METER_COLUMNS} FROM meters m {_FIELD} "
                  "WHERE m.meter_id = %s", (meter_id,))
    return _with_values(conn, rows)[0] if rows else None


def _with_values(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> list[Meter]:
    latest = {v["meter"]: v["values"] for v in latest_values(conn, [r["meter"] for r in rows])}
    for r in rows:
        r["values"] = latest.get(r["meter"], {})
    return cast("list[Meter]", rows)


def history(conn: psycopg.Connection[Any], meter_id: str, quantity: str, start: datetime,
            end: datetime, bucket: timedelta | None, max_raw_points: int) -> list[Point]:
    """Points of one quantity in ``[start, end)``: the newest ``max_raw_points`` raw readings
    when ``bucket`` is None, else buckets of that width with min/avg/max/last."""
    if bucket is None:
        rows = _fetch(
            conn,
            """SELECT ts AS t, value, value AS min, value AS max, value AS last FROM (
                   SELECT ts, value FROM reading_values
                   WHERE meter_id = %s AND quantity = %s AND ts >= %s AND ts < %s
                   ORDER BY ts DESC LIMIT %s) newest ORDER BY ts""",
            (meter_id, quantity, start, end, max_raw_points),
        )
    else:
        rows = _fetch(
            conn,
            """SELECT date_bin(%s, ts, timestamptz '2000-01-01 00:00:00+00') AS t,
                      avg(value) AS value, min(value) AS min, max(value) AS max,
                      (array_agg(value ORDER BY ts DESC))[1] AS last
               FROM reading_values
               WHERE meter_id = %s AND quantity = %s AND ts >= %s AND ts < %s
               GROUP BY 1 ORDER BY 1""",
            (bucket, meter_id, quantity, start, end),
        )
    return cast("list[Point]", rows)


def intervals(conn: psycopg.Connection[Any], meter_id: str, start: datetime,
              end: datetime, limit: int) -> list[Interval]:
    """Validated interval consumption starting in ``[start, end)``: the newest ``limit``,
    oldest first."""
    return cast("list[Interval]", _fetch(
        conn,
        """SELECT i.interval_start AS start,
                  i.interval_start + make_interval(secs => i.seconds) AS "end",
                  i.kwh_e4 * 0.0001 AS kwh, i.quality::text AS quality,
                  nullif(i.method, 0) AS method, i.held,
                  (SELECT string_agg(v.name || ': ' || a.reason, '; ' ORDER BY a.rule)
                   FROM anomalies a JOIN vee_rules v ON v.code = a.rule
                   WHERE a.meter = i.meter AND a.at = i.interval_start) AS reason,
                  i.raw_kwh_e4 * 0.0001 AS raw_kwh,
                  ARRAY(SELECT v.name FROM vee_rules v WHERE i.flags & (1 << v.code) <> 0
                        ORDER BY v.code) AS flags
           FROM intervals i JOIN meters m ON m.meter_key = i.meter
           WHERE m.meter_id = %s AND i.interval_start >= %s AND i.interval_start < %s
           ORDER BY i.interval_start DESC LIMIT %s""",
        (meter_id, start, end, limit))[::-1])


# ---------------------------------------------------------------------------- anomalies, review

_ANOMALY_COLUMNS = """a.id, m.meter_id AS meter, v.name AS rule, a.at, a.reason, a.value,
a.expected, a.holds, a.review_item_id, a.detected_at"""
_ANOMALIES = """anomalies a JOIN meters m ON m.meter_key = a.meter
JOIN vee_rules v ON v.code = a.rule"""


def anomalies(conn: psycopg.Connection[Any], meter_id: str | None, rule: str | None,
              start: datetime | None, end: datetime | None, limit: int,
              offset: int) -> list[Anomaly]:
    """Anomalies the validation found, newest first; each filter applies when given."""
    sql_where, params = _where((("m.meter_id = %s", meter_id), ("v.name = %s", rule),
                                ("a.at >= %s", start), ("a.at < %s", end)))
    return _with_units(_fetch(
        conn, f"SELECT {_ANOMALY_COLUMNS} FROM {_ANOMALIES} WHERE {sql_where}"
        " ORDER BY a.at DESC, a.id DESC LIMIT %s OFFSET %s", [*params, limit, offset]))


def _with_units(rows: list[dict[str, Any]]) -> list[Anomaly]:
    """Each anomaly with the units of its value and expected value (by its rule)."""
    for row in rows:
        row["value_unit"], row["expected_unit"] = ANOMALY_UNITS.get(row["rule"], ("", ""))
    return cast("list[Anomaly]", rows)


_REVIEW_COLUMNS = """r.id, r.meter_id AS meter, r.rule, r.period_start, r.period_end, r.reason,
r.status, r.opened_at, r.decided_at, r.decided_by, r.comment"""


def review_items(conn: psycopg.Connection[Any], status: str | None, meter_id: str | None,
                 limit: int, offset: int) -> tuple[list[ReviewItem], int]:
    """A page of the review queue (open items first, newest first) and the total count."""
    sql_where, params = _where((("r.status = %s", status), ("r.meter_id = %s", meter_id)))
    total = _count(conn, f"SELECT count(*) AS n FROM review_items r WHERE {sql_where}", params)
    rows = _fetch(
        conn, f"SELECT {_REVIEW_COLUMNS} FROM review_items r WHERE {sql_where}"
        " ORDER BY (r.status = 'open') DESC, r.opened_at DESC, r.id DESC LIMIT %s OFFSET %s",
        [*params, limit, offset])
    return cast("list[ReviewItem]", rows), total


def review_item(conn: psycopg.Connection[Any], item_id: int) -> ReviewItemDetail | None:
    """One review item with the anomalies it gathers; None when there is no such item."""
    rows = _fetch(conn, f"SELECT {_REVIEW_COLUMNS} FROM review_items r WHERE r.id = %s",
                  (item_id,))
    if not rows:
        return None
    out = cast(ReviewItemDetail, rows[0])
    out["anomalies"] = _with_units(_fetch(
        conn, f"SELECT {_ANOMALY_COLUMNS} FROM {_ANOMALIES} WHERE a.review_item_id = %s"
        " ORDER BY a.at", (item_id,)))
    return out


def review_version(conn: psycopg.Connection[Any]) -> tuple[int, int | None]:
    """(open items, newest item id): a new item moves the id, a decision the count; both
    answer from indexes, so a poller may ask often."""
    rows = _fetch(conn, "SELECT (SELECT count(*) FROM review_items WHERE status = 'open') AS open,"
                  " (SELECT max(id) FROM review_items) AS newest")
    return (int(rows[0]["open"]), rows[0]["newest"]) if rows else (0, None)


# ---------------------------------------------------------------------------- dead letters


def dead_letter_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Stored dead letters per reason code (``bad_json``, ``not_owner``, ...)."""
    rows = _fetch(conn, "SELECT code, count(*) AS n FROM dead_letters GROUP BY code ORDER BY code")
    return {row["code"]: int(row["n"]) for row in rows}


def dead_letters(conn: psycopg.Connection[Any], gateway: str | None, limit: int,
                 offset: int) -> tuple[list[DeadLetter], int]:
    """A page of messages the collector could not take (newest first) and the total."""
    where, params = _where((("gateway = %s", gateway),))
    total = _count(conn, f"SELECT count(*) AS n FROM dead_letters WHERE {where}", params)
    rows = _fetch(
        conn, f"SELECT id, topic, reason, gateway, received_at,"
        " coalesce(payload_length, length(payload)) AS size,"
        f" substring(payload from 1 for 2000) AS payload FROM dead_letters WHERE {where}"
        " ORDER BY received_at DESC, id DESC LIMIT %s OFFSET %s", [*params, limit, offset])
    return cast("list[DeadLetter]", rows), total


# ---------------------------------------------------------------------------- ownership


def pending_meters(conn: psycopg.Connection[Any], status: str | None = None
                   ) -> list[PendingMeter]:
    """Unknown meters a gateway sent while not commissioning: they wait for an operator to
    approve (register to that gateway) or reject them; newest claim first."""
    where, params = _where((("status = %s", status),))
    rows = _fetch(conn, "SELECT meter_id, gateway, site, first_seen, last_seen, readings, status,"
                  f" decided_by, decided_at FROM pending_meters WHERE {where}"
                  " ORDER BY last_seen DESC, meter_id, gateway", params)
    return cast("list[PendingMeter]", rows)
