"""Test helpers: publish real wire payloads, run a real Collector, wait for rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collector import Collector, CollectorConfig
from meterhub import db, wire
from meterhub.settings import MqttSettings


def _monday_weeks_ago(weeks: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=today.weekday() + 7 * weeks)


# A Monday a few weeks back: old enough to be history, young enough to pass the age check.
T0 = _monday_weeks_ago(4)


def reading(meter: str, taken_at: datetime, kwh: float, **extra: float) -> wire.Reading:
    values = {"energy_import_total": wire.Value(kwh, "kWh")}
    units = {"voltage_a": "V", "current_a": "A", "power_active_total": "kW"}
    for name, v in extra.items():
        values[name] = wire.Value(v, units[name])
    return wire.Reading(meter, taken_at, values)


def batch_payload(site: str, gateway: str, seq: int, readings: Iterable[wire.Reading]) -> bytes:
    return wire.encode_readings(
        wire.ReadingsBatch(gateway, site, seq, datetime.now(UTC), tuple(readings))
    )


def rows_payload(site: str, gateway: str, seq: int, readings: Iterable[wire.Reading]) -> bytes:
    """Schema 1 (an object per reading): what a test edits reading by reading."""
    return wire.encode_reading_rows(
        wire.ReadingsBatch(gateway, site, seq, datetime.now(UTC), tuple(readings))
    )


class Publisher:
    """A plain paho publisher that waits for every PUBACK (QoS 1)."""

    def __init__(self, mqtt: MqttSettings) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
        self.client.connect(mqtt.host, mqtt.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.asynccontextmanager
async def running(config: CollectorConfig, setup: Callable[[Collector], None] | None = None,
                  ) -> AsyncIterator[Collector]:
    collector = Collector(config)
    if setup:
        setup(collector)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        yield collector
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def config(db_url: str, mqtt: MqttSettings, site: str, **kw: object) -> CollectorConfig:
    """A collector config scoped to this test's site and a share group of its own."""
    kw.setdefault("site", site)
    kw.setdefault("shared_group", f"g{site}")
    kw.setdefault("leave_on_stop", True)  # a test's collector is gone for good when it stops
    kw.setdefault("client_id", f"col-{uuid.uuid4().hex[:8]}")
    kw.setdefault("validate_every_s", None)
    kw.setdefault("batch_max_delay_s", 0.05)
    # tests publish meters nobody registered: the sending gateway owns them (as in the demo)
    kw.setdefault("commission_unknown_meters", True)
    return CollectorConfig(database_url=db_url, mqtt=mqtt, **kw)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def scalar(db_url: str, sql: str, *params: object) -> object:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


async def subscribed(collector: Collector) -> None:
    """Wait for the broker's SUBACK, so what we publish next is routed to the collector."""
    await asyncio.wait_for(collector.ready.wait(), 15)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def put_values(conn: psycopg.Connection, rows: Iterable[tuple[str, str, datetime, float]],
               dirty_from: datetime | None = None) -> None:
    """Store (meter, quantity, ts, value) rows as layout-v2 readings, as a tool would
    (``collector_put_values``), and optionally mark their meters for validation."""
    rows = list(rows)
    lo, hi = min(r[2] for r in rows), max(r[2] for r in rows)
    conn.execute("SELECT collector_ensure_partitions(%s, %s)", (lo, hi))
    conn.execute("SELECT collector_put_values(%s, %s, %s, %s)",
                 [[r[i] for r in rows] for i in range(4)])
    conn.execute("UPDATE meters SET first_seen = least(first_seen, %s),"
                 " last_seen = greatest(last_seen, %s) WHERE meter_id = ANY(%s)",
                 (lo, hi, sorted({r[0] for r in rows})))
    if dirty_from is not None:
        conn.execute(
            "INSERT INTO vee_dirty (meter, dirty_from) SELECT meter_key, %s FROM meters"
            " WHERE meter_id = ANY(%s) ON CONFLICT (meter) DO UPDATE SET dirty_from ="
            " excluded.dirty_from, mark = nextval('vee_mark_seq')",
            (dirty_from, sorted({r[0] for r in rows})))


def billing_took_all(db_url: str) -> None:
    """Empty billing's change queue, as a billing pass does once it charged everything."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM interval_changes")


def intervals_of(conn: psycopg.Connection, meter: str) -> list[tuple[Any, ...]]:
    """(start, kwh, quality, method (None: none), held, queued for billing (in the meter's
    ``interval_changes`` span), rule names, reasons) per interval."""
    return conn.execute(
        """SELECT i.interval_start, i.kwh_e4 / 10000::float8, i.quality::text,
                  nullif(i.method, 0), i.held,
                  EXISTS (SELECT 1 FROM interval_changes q WHERE q.meter = i.meter
                          AND i.interval_start BETWEEN q.lo AND q.hi),
                  ARRAY(SELECT v.name FROM vee_rules v WHERE i.flags & (1 << v.code) <> 0
                        ORDER BY v.code),
                  (SELECT string_agg(v.name || ': ' || a.reason, '; ' ORDER BY a.rule)
                   FROM anomalies a JOIN vee_rules v ON v.code = a.rule
                   WHERE a.meter = i.meter AND a.at = i.interval_start)
           FROM intervals i JOIN meters m ON m.meter_key = i.meter
           WHERE m.meter_id = %s ORDER BY i.interval_start""", (meter,)).fetchall()


def actual_intervals(meter, start, kwh, flags=None):
    """Intervals of quality A (measured), as the rules see them, from plain lists/arrays."""
    import numpy as np

    from collector.vee import rules

    n = len(start)
    z = np.zeros(n)
    return rules.Intervals(
        meter=np.asarray(meter, dtype=np.int64), start=np.asarray(start, dtype=np.float64),
        kwh=np.asarray(kwh, dtype=np.float64), raw_kwh=np.asarray(kwh, dtype=np.float64),
        quality=np.full(n, "A"), method=np.zeros(n, dtype=np.int64),
        flags=np.zeros(n, dtype=np.int64) if flags is None else np.asarray(flags, dtype=np.int64),
        gap=z, gap_from=z.copy(), gap_to=z.copy(),
    )


@contextlib.contextmanager
def database_before(server_url: str, keep: Callable[[db.Migration], bool],
                    tag: str) -> Iterator[str]:
    """A fresh database with only the migrations ``keep`` takes, recorded as applied (a
    database as an older release left it: what an in-place migration starts from)."""
    name = f"meterhub_{tag}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(server_url), "dbname": name})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE meterhub_migrations (component text NOT NULL, version int"
            " NOT NULL, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT"
            " now(), PRIMARY KEY (component, version))")
        for m in filter(keep, db.discover()):
            conn.execute(m.sql.encode())
            conn.execute("INSERT INTO meterhub_migrations VALUES (%s, %s, %s)",
                         (m.component, m.version, m.name))
    try:
        yield url
    finally:
        with (psycopg.connect(server_url, autocommit=True) as conn,
              contextlib.suppress(psycopg.Error)):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
