"""Move rows of the v1 layout into layout v2 (``meterhub collector migrate``).

Migration 0008 renames non-empty v1 tables to ``readings_v1``, ``intervals_v1`` and
``anomalies_v1``; this moves their rows in chunks of meters (each chunk one transaction,
with progress), then drops them. It is safe to run again after an interruption: readings are
merged by (meter, ts), intervals and anomalies skip rows already there. Downtime: the
collector and billing stay stopped from the SQL migration until this returns (readers of the
new tables would not see the rows not yet moved); README "Storage layout v2" gives measured
rates.

What changes on the way: one row per (meter, ts) instead of one per quantity; energy as
integer counts of the meter's resolution; a reading's gateway, seq and arrival become its
batch (``gateway_batches``, when the collector recorded it); interval flags become rule bits
and their repeated reason text goes (the words stay in ``anomalies``); interval kWh become
counts of 0.0001 kWh (layout v3, migration 0060) and every moved interval goes on billing's
change queue (billing reads them all once more and charges only what it has not charged:
``billing_charges`` keeps what it did); v1 ``late_arrival`` anomalies are not carried over
(lateness is recorded per batch in ``late_batches`` from now on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

Progress = Callable[[str], None]

_READINGS = """
SELECT collector_put_values(array_agg(v.meter_id), array_agg(v.quantity), array_agg(v.ts),
                            array_agg(v.value), array_agg(b.batch_id))
FROM readings_v1 v
LEFT JOIN gateway_batches b ON b.gateway = v.gateway AND b.seq = v.seq
WHERE v.meter_id = ANY(%s) AND v.quantity IN (SELECT name FROM quantity_codes UNION ALL
    SELECT unnest(ARRAY['energy_import_total', 'energy_export_total', 'voltage_a',
                        'voltage_b', 'voltage_c', 'current_a', 'current_b', 'current_c',
                        'power_active_total', 'power_factor_total', 'frequency']))
"""

# v1 kept a meter's clock skew as a reading quantity; v2 keeps clock checks in their own table
_CLOCKS = """
INSERT INTO clock_checks (meter_id, read_at, meter_clock, drift_s, gateway)
SELECT meter_id, ts, ts + make_interval(secs => value), value, coalesce(gateway, '')
FROM readings_v1 WHERE meter_id = ANY(%s) AND quantity = 'clock_skew_s'
ON CONFLICT DO NOTHING
"""

_INTERVALS = """
INSERT INTO intervals (interval_start, kwh_e4, raw_kwh_e4, meter, seconds, flags, method,
                       quality, held)
SELECT i.interval_start, (i.kwh * 10000)::bigint, (i.raw_kwh * 10000)::bigint, m.meter_key,
       extract(epoch FROM i.interval_end - i.interval_start)::int,
       (SELECT coalesce(sum(1 << r.code), 0) FROM vee_rules r WHERE r.name = ANY(i.flags))::int,
       coalesce(i.method, 0), i.quality, i.held
FROM intervals_v1 i JOIN meters m ON m.meter_id = i.meter_id
WHERE i.meter_id = ANY(%s)
ON CONFLICT DO NOTHING
"""

_ANOMALIES = """
INSERT INTO anomalies (at, meter, rule, holds, value, expected, review_item_id, detected_at,
                       reason)
SELECT a.at, m.meter_key, r.code, a.holds, a.value, a.expected, a.review_item_id,
       a.detected_at, a.reason
FROM anomalies_v1 a JOIN meters m ON m.meter_id = a.meter_id JOIN vee_rules r ON r.name = a.rule
WHERE a.meter_id = ANY(%s)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Moved:
    readings: int  # v2 rows written (one per meter and time)
    intervals: int
    anomalies: int
    seconds: float


def pending(conn: psycopg.Connection[Any]) -> list[str]:
    """The v1 tables still holding rows to move."""
    return [
        t
        for t in ("readings_v1", "intervals_v1", "anomalies_v1")
        if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone() != (None,)
    ]


def move(conninfo: str, progress: Progress | None = None, chunk_meters: int = 500) -> Moved:
    """Move every v1 row into v2 and drop the v1 tables; `progress` gets a line per chunk."""
    say = progress or (lambda _line: None)
    started = time.monotonic()
    counts = {"readings_v1": 0, "intervals_v1": 0, "anomalies_v1": 0}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = pending(conn)
        for table in tables:
            sql = {
                "readings_v1": _READINGS,
                "intervals_v1": _INTERVALS,
                "anomalies_v1": _ANOMALIES,
            }[table]
            if table == "readings_v1":
                span = conn.execute("SELECT min(ts), max(ts) FROM readings_v1").fetchone()
                if span and span[0] is not None:
                    conn.execute("SELECT collector_ensure_partitions(%s, %s)", span)
            meters = [
                m for (m,) in conn.execute(f"SELECT DISTINCT meter_id FROM {table} ORDER BY 1")
            ]
            for i in range(0, len(meters), chunk_meters):
                part = meters[i : i + chunk_meters]
                counts[table] += _chunk(conn, table, sql, part)
                done = min(i + chunk_meters, len(meters))
                say(
                    f"{table}: {done}/{len(meters)} meters ({100 * done // len(meters)}%), "
                    f"{counts[table]} rows, {time.monotonic() - started:.1f} s"
                )
            conn.execute(f"DROP TABLE {table} CASCADE")
            say(f"{table}: moved and dropped")
    return Moved(
        counts["readings_v1"],
        counts["intervals_v1"],
        counts["anomalies_v1"],
        time.monotonic() - started,
    )


def _chunk(conn: psycopg.Connection[Any], table: str, sql: str, meters: list[str]) -> int:
    """One chunk in one transaction."""
    with conn.transaction():
        if table == "readings_v1":
            row = conn.execute(sql, (meters,)).fetchone()
            conn.execute(_CLOCKS, (meters,))
            return int(row[0] or 0) if row else 0
        conn.execute(
            "INSERT INTO meters (meter_id) SELECT unnest(%s::text[]) ORDER BY 1"
            " ON CONFLICT (meter_id) DO NOTHING",
            (meters,),
        )
        return conn.execute(sql, (meters,)).rowcount
