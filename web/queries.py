"""Read-only queries over the collector's tables (meters, readings, intervals, review queue).

Plain SQL that answers the same on plain PostgreSQL and on TimescaleDB: history buckets use
``date_bin`` over a ``ts`` range of one meter and quantity, which the readings primary key
``(meter_id, quantity, ts)`` serves on both. Each function takes a connection with dict rows
and returns plain dicts for the JSON layer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

from web import accounts, database

Row = dict[str, Any]

# History resolution picked from the requested range: a chart wants a few hundred points.
RESOLUTIONS: dict[str, timedelta | None] = {
    "raw": None,
    "1min": timedelta(minutes=1),
    "15min": timedelta(minutes=15),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
MAX_RAW_POINTS = 5000


def pick_resolution(span: timedelta) -> str:
    if span <= timedelta(hours=2):
        return "raw"
    if span <= timedelta(hours=12):
        return "1min"
    if span <= timedelta(days=3):
        return "15min"
    if span <= timedelta(days=60):
        return "hour"
    return "day"


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


def gateways(conn: psycopg.Connection[Any], offline_after_s: float) -> list[Row]:
    rows = conn.execute(_GATEWAYS + " ORDER BY g.gateway", {"after": offline_after_s})
    return [dict(r) for r in rows.fetchall()]


def gateway(conn: psycopg.Connection[Any], name: str, offline_after_s: float) -> Row | None:
    row = conn.execute(_GATEWAYS + " WHERE g.gateway = %(name)s",
                       {"after": offline_after_s, "name": name}).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["gaps"] = [dict(r) for r in conn.execute(
        "SELECT from_seq, to_seq, noticed_after FROM seq_gaps WHERE gateway = %s"
        " ORDER BY from_seq DESC LIMIT 20", (name,)).fetchall()]
    return out


def gateway_events(conn: psycopg.Connection[Any], name: str, limit: int) -> list[Row]:
    return [dict(r) for r in conn.execute(
        "SELECT id, source, kind, meter_id AS meter, at, detail, data, received_at"
        " FROM gateway_events WHERE gateway = %s ORDER BY at DESC, id DESC LIMIT %s",
        (name, limit)).fetchall()]


# ---------------------------------------------------------------------------- meters

_METER_COLUMNS = """
m.meter_id AS meter, m.gateway, m.site, m.protocol, m.expected_interval_s, m.first_seen,
m.last_seen, m.relay, m.relay_at,
(SELECT count(*) FROM review_items ri WHERE ri.meter_id = m.meter_id AND ri.status = 'open')
    AS open_reviews
"""


def meter_last_seen(conn: psycopg.Connection[Any],
                    since: datetime | None = None) -> dict[str, datetime]:
    """Meters and their newest reading time, only those at or after ``since`` when given:
    a live poll transfers the meters that reported, not the whole fleet."""
    rows = conn.execute(
        "SELECT meter_id, last_seen FROM meters WHERE last_seen IS NOT NULL"
        " AND (%(since)s::timestamptz IS NULL OR last_seen >= %(since)s)", {"since": since})
    return {r["meter_id"]: r["last_seen"] for r in rows.fetchall()}


def latest_values(conn: psycopg.Connection[Any], meters: list[str]) -> list[Row]:
    """Newest value of every quantity of each meter (from its last poll window)."""
    rows = conn.execute(
        """SELECT m.meter_id, m.last_seen, m.relay, r.quantity, r.value, r.unit, r.ts
           FROM meters m
           LEFT JOIN LATERAL (
               SELECT DISTINCT ON (quantity) quantity, value, unit, ts FROM readings r
               WHERE r.meter_id = m.meter_id AND r.ts > m.last_seen - interval '1 hour'
                 AND r.ts <= m.last_seen
               ORDER BY quantity, ts DESC) r ON true
           WHERE m.meter_id = ANY(%s)""",
        (meters,),
    ).fetchall()
    out: dict[str, Row] = {}
    for r in rows:
        item = out.setdefault(r["meter_id"], {
            "meter": r["meter_id"], "last_seen": r["last_seen"], "relay": r["relay"],
            "values": {},
        })
        if r["quantity"] is not None:
            item["values"][r["quantity"]] = {"value": r["value"], "unit": r["unit"], "at": r["ts"]}
    return [out[m] for m in meters if m in out]


def meters(conn: psycopg.Connection[Any], gateway: str | None, search: str | None,
           limit: int, offset: int) -> tuple[list[Row], int]:
    where, params = ["true"], []
    if gateway:
        where.append("m.gateway = %s")
        params.append(gateway)
    if search:
        where.append("m.meter_id ILIKE %s")
        params.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                      + "%")
    sql_where = " AND ".join(where)
    total_row = conn.execute(f"SELECT count(*) AS n FROM meters m WHERE {sql_where}",
                             params).fetchone()
    rows = [dict(r) for r in conn.execute(
        f"SELECT {_METER_COLUMNS} FROM meters m WHERE {sql_where}"
        " ORDER BY m.meter_id LIMIT %s OFFSET %s", [*params, limit, offset]).fetchall()]
    _attach_values(conn, rows)
    return rows, int(total_row["n"]) if total_row else 0


def meter(conn: psycopg.Connection[Any], meter_id: str) -> Row | None:
    row = conn.execute(f"SELECT {_METER_COLUMNS} FROM meters m WHERE m.meter_id = %s",
                       (meter_id,)).fetchone()
    if row is None:
        return None
    out = [dict(row)]
    _attach_values(conn, out)
    return out[0]


def meter_detail(conn: psycopg.Connection[Any], meter_id: str) -> Row | None:
    """A meter with, when billing knows it, its account and billing's relay view (the relay
    state read back after commands, which readings may not carry)."""
    out = meter(conn, meter_id)
    if out is None:
        return None
    billing = None
    if database.table_exists(conn, "billing_meters"):
        billing = conn.execute(
            "SELECT account_id AS account, relay_wanted, relay_reported, customer_action_needed"
            " FROM billing_meters WHERE meter_id = %s", (meter_id,)).fetchone()
    out["billing"] = dict(billing) if billing else None
    if out["billing"] is not None:
        holds = accounts.manual_holds(conn, meters=[meter_id])
        out["billing"]["hold"] = holds[0] if holds else None
    return out


def _attach_values(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
    latest = {v["meter"]: v["values"] for v in latest_values(conn, [r["meter"] for r in rows])}
    for r in rows:
        r["values"] = latest.get(r["meter"], {})


def history(conn: psycopg.Connection[Any], meter_id: str, quantity: str, start: datetime,
            end: datetime, resolution: str) -> list[Row]:
    """Points of one quantity; raw readings or buckets with min/avg/max/last."""
    width = RESOLUTIONS[resolution]
    if width is None:
        rows = conn.execute(
            """SELECT ts AS t, value, value AS min, value AS max, value AS last FROM (
                   SELECT ts, value FROM readings
                   WHERE meter_id = %s AND quantity = %s AND ts >= %s AND ts < %s
                   ORDER BY ts DESC LIMIT %s) newest ORDER BY ts""",
            (meter_id, quantity, start, end, MAX_RAW_POINTS),
        ).fetchall()
    else:
        rows = conn.execute(
            """SELECT date_bin(%s, ts, timestamptz '2000-01-01 00:00:00+00') AS t,
                      avg(value) AS value, min(value) AS min, max(value) AS max,
                      (array_agg(value ORDER BY ts DESC))[1] AS last
               FROM readings
               WHERE meter_id = %s AND quantity = %s AND ts >= %s AND ts < %s
               GROUP BY 1 ORDER BY 1""",
            (width, meter_id, quantity, start, end),
        ).fetchall()
    return [dict(r) for r in rows]


def quantities(conn: psycopg.Connection[Any], meter_id: str, since: datetime) -> list[Row]:
    return [dict(r) for r in conn.execute(
        "SELECT DISTINCT ON (quantity) quantity, unit FROM readings"
        " WHERE meter_id = %s AND ts >= %s ORDER BY quantity, ts DESC",
        (meter_id, since)).fetchall()]


def intervals(conn: psycopg.Connection[Any], meter_id: str, start: datetime,
              end: datetime, limit: int) -> list[Row]:
    return [dict(r) for r in conn.execute(
        """SELECT interval_start AS start, interval_end AS "end", kwh, quality, method, held,
                  reason, raw_kwh, flags
           FROM intervals WHERE meter_id = %s AND interval_start >= %s AND interval_start < %s
           ORDER BY interval_start DESC LIMIT %s""",
        (meter_id, start, end, limit)).fetchall()][::-1]


# ---------------------------------------------------------------------------- anomalies, review

_ANOMALY_COLUMNS = """a.id, a.meter_id AS meter, a.rule, a.at, a.reason, a.value, a.expected,
a.holds, a.review_item_id, a.detected_at"""


def anomalies(conn: psycopg.Connection[Any], meter_id: str | None, rule: str | None,
              start: datetime | None, end: datetime | None, limit: int,
              offset: int) -> list[Row]:
    where, params = ["true"], []
    for clause, value in (("a.meter_id = %s", meter_id), ("a.rule = %s", rule),
                          ("a.at >= %s", start), ("a.at < %s", end)):
        if value is not None:
            where.append(clause)
            params.append(value)
    return [dict(r) for r in conn.execute(
        f"SELECT {_ANOMALY_COLUMNS} FROM anomalies a WHERE {' AND '.join(where)}"
        " ORDER BY a.at DESC, a.id DESC LIMIT %s OFFSET %s", [*params, limit, offset]).fetchall()]


_REVIEW_COLUMNS = """r.id, r.meter_id AS meter, r.rule, r.period_start, r.period_end, r.reason,
r.status, r.opened_at, r.decided_at, r.decided_by, r.comment"""


def review_items(conn: psycopg.Connection[Any], status: str | None, meter_id: str | None,
                 limit: int, offset: int) -> tuple[list[Row], int]:
    where, params = ["true"], []
    if status:
        where.append("r.status = %s")
        params.append(status)
    if meter_id:
        where.append("r.meter_id = %s")
        params.append(meter_id)
    sql_where = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM review_items r WHERE {sql_where}",
                         params).fetchone()
    rows = [dict(r) for r in conn.execute(
        f"SELECT {_REVIEW_COLUMNS} FROM review_items r WHERE {sql_where}"
        " ORDER BY (r.status = 'open') DESC, r.opened_at DESC, r.id DESC LIMIT %s OFFSET %s",
        [*params, limit, offset]).fetchall()]
    return rows, int(total["n"]) if total else 0


def review_item(conn: psycopg.Connection[Any], item_id: int) -> Row | None:
    row = conn.execute(f"SELECT {_REVIEW_COLUMNS} FROM review_items r WHERE r.id = %s",
                       (item_id,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["anomalies"] = [dict(r) for r in conn.execute(
        f"SELECT {_ANOMALY_COLUMNS} FROM anomalies a WHERE a.review_item_id = %s ORDER BY a.at",
        (item_id,)).fetchall()]
    return out


def review_version(conn: psycopg.Connection[Any]) -> tuple[int, Any]:
    """(open items, newest item id): a new item moves the id, a decision the count; both
    answer from indexes."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM review_items WHERE status = 'open') AS open,"
        " (SELECT max(id) FROM review_items) AS newest").fetchone()
    return (int(row["open"]), row["newest"]) if row else (0, None)


# ---------------------------------------------------------------------------- dead letters


def dead_letters(conn: psycopg.Connection[Any], gateway: str | None, limit: int,
                 offset: int) -> tuple[list[Row], int]:
    where, params = "true", []
    if gateway:
        where, params = "gateway = %s", [gateway]
    total = conn.execute(f"SELECT count(*) AS n FROM dead_letters WHERE {where}",
                         params).fetchone()
    rows = conn.execute(
        f"SELECT id, topic, reason, gateway, received_at, length(payload) AS size,"
        f" substring(payload from 1 for 2000) AS payload FROM dead_letters WHERE {where}"
        " ORDER BY received_at DESC, id DESC LIMIT %s OFFSET %s", [*params, limit, offset],
    ).fetchall()
    return [dict(r) for r in rows], int(total["n"]) if total else 0


# ---------------------------------------------------------------------------- snapshot


def fleet_snapshot(conn: psycopg.Connection[Any], offline_after_s: float) -> Row:
    """What a fresh live subscriber needs before the changes start."""
    return {
        "gateways": gateways(conn, offline_after_s),
        "open_reviews": review_version(conn)[0],
    }
