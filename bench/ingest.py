"""Collector benchmark: MQTT readings to committed rows, against a raw COPY of the same rows.

Figures (last line with --json, one object):
- ``ingest_readings_per_s``: readings (meter, taken_at pairs: one layout-v2 row each) per
  second from messages waiting at the broker to rows committed and acked by a real Collector
  (parse into columns, binary COPY, bookkeeping, ack), timed from the first message's arrival
  to the last commit; each reading carries 4 quantities, so ``ingest_values_per_s`` is 4x;
  the messages are what gateways send (wire schema 2, readings as columns) unless
  ``--wire-schema 1`` (an object per reading: gateways from before the upgrade);
- ``raw_copy_readings_per_s``: the same rows written by a bare binary COPY (psycopg
  ``write_row``) from this process into the same (migrated, partitioned) table: the physical
  reference;
- ``ratio_ingest_vs_raw_copy``: the first over the second (goal >= 0.5);
- ``latency_p50_ms`` / ``latency_p99_ms``: a live run at a steady publish rate, from the
  gateway's ``sent_at`` (publish time) to the commit of that message's rows;
- ``validation_intervals_per_s``: numpy VEE (derive intervals, baseline, surge/drop) over
  ``--val-meters`` x ``--val-days`` of 15-minute intervals (goal > 1,000,000/s).

Services: METERHUB_DATABASE_URL / METERHUB_MQTT_URL, or the embedded ones when unset. The
bench works in a database of its own, created and dropped here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector import Collector, CollectorConfig, ValidationConfig
from collector.store import Batch
from collector.vee import rules
from launcher.embedded import embedded_postgres, mosquitto_broker
from meterhub import db, wire
from meterhub.settings import DATABASE_URL_ENV, MQTT_URL_ENV, MqttSettings

# A Monday some weeks back, so every reading passes the collector's age and future checks.
_TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
BASE = _TODAY - timedelta(days=_TODAY.weekday() + 21)

QUANTITIES = (("energy_import_total", "kWh"), ("voltage_a", "V"), ("current_a", "A"),
              ("power_active_total", "kW"))


def _scratch(prefix: str) -> tempfile.TemporaryDirectory[str]:
    # pgserver may leave files owned by its own user behind: do not fail on them
    return tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)


@contextlib.contextmanager
def services() -> Iterator[tuple[str, MqttSettings]]:
    with contextlib.ExitStack() as stack:
        url = os.environ.get(DATABASE_URL_ENV)
        if not url:
            pg_dir = stack.enter_context(_scratch("mhb-pg"))
            url = stack.enter_context(embedded_postgres(Path(pg_dir)))
        mqtt_url = os.environ.get(MQTT_URL_ENV)
        if mqtt_url:
            mqtt = MqttSettings.from_url(mqtt_url)
        else:
            mq_dir = stack.enter_context(_scratch("mhb-mq"))
            mqtt = stack.enter_context(mosquitto_broker(Path(mq_dir)))
        yield url, mqtt


@contextlib.contextmanager
def fresh_database(server_url: str, tag: str) -> Iterator[str]:
    name = f"meterhub_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    try:
        db.migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_payloads(site: str, messages: int, meters: int, start: datetime,
                  sent_at: datetime | None = None, schema: int = wire.READINGS_SCHEMA
                  ) -> list[bytes]:
    encode = wire.encode_readings if schema == wire.READINGS_SCHEMA else wire.encode_reading_rows
    out = []
    for seq in range(messages):
        taken = start + timedelta(seconds=60 * seq)
        readings = tuple(
            wire.Reading(f"bm{k:05d}", taken, {
                "energy_import_total": wire.Value(1000.0 + k + seq * 0.01, "kWh"),
                "voltage_a": wire.Value(230.0 + (k % 7) * 0.1, "V"),
                "current_a": wire.Value(3.0 + (k % 5) * 0.1, "A"),
                "power_active_total": wire.Value(0.7 + (k % 3) * 0.01, "kW"),
            })
            for k in range(meters)
        )
        out.append(encode(
            wire.ReadingsBatch("bgw", site, seq, sent_at or datetime.now(UTC), readings)))
    return out


def publish_all(mqtt: MqttSettings, topic: str, payloads: list[bytes]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    infos = [client.publish(topic, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def config(url: str, mqtt: MqttSettings, site: str, client_id: str) -> CollectorConfig:
    return CollectorConfig(database_url=url, mqtt=mqtt, site=site, shared_group=f"b{site}",
                           client_id=client_id, validate_every_s=None,
                           commission_unknown_meters=True)


async def bench_ingest(url: str, mqtt: MqttSettings, messages: int, meters: int,
                       schema: int = wire.READINGS_SCHEMA) -> tuple[float, float, int]:
    """Messages queued at the broker first, then a collector drains them: (s, readings)."""
    site = f"b{uuid.uuid4().hex[:8]}"
    client_id = f"bench-col-{site}"
    cfg = config(url, mqtt, site, client_id)
    # First run: creates the persistent session and shared subscription, then goes away.
    col = Collector(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(col.run(stop))
    await asyncio.wait_for(col.ready.wait(), 15)
    stop.set()
    await task
    payloads = make_payloads(site, messages, meters, BASE, schema=schema)
    await asyncio.to_thread(publish_all, mqtt, wire.topic(site, "bgw", "readings"), payloads)
    col = Collector(cfg)
    loop = asyncio.get_running_loop()
    marks: list[float] = []  # first message's arrival, then each commit

    def on_commit(batch: Batch) -> None:
        if not marks:
            marks.append(min(batch.publish_times))
        marks.append(loop.time())

    col.on_commit = on_commit
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(col.run(stop))
    total = messages * meters
    while col.stats.readings_stored < total:
        await asyncio.sleep(0.005)
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"only {col.stats.readings_stored}/{total} readings stored")
    # from the first message handed over by the broker to the last commit (connecting and
    # resuming the session are not ingest)
    elapsed = marks[-1] - marks[0]
    stop.set()
    await task
    if os.environ.get("BENCH_DEBUG"):
        print(col.stats.batches_committed, col.stats.db_errors, col.stats.dead_letters,
              file=sys.stderr)
    return elapsed, float(col.stats.values_stored), total


def bench_raw_copy(url: str, messages: int, meters: int) -> float:
    """The physical reference: the same readings as layout-v2 rows, already tuples in this
    process, written by a bare binary COPY (psycopg ``set_types`` / ``write_row``) into the
    same `readings` table and committed (no MQTT, no parsing, no checks, no bookkeeping)."""
    start = BASE
    rows = []
    for seq in range(messages):
        taken = start + timedelta(seconds=60 * seq)
        for k in range(meters):
            rows.append((taken, seq + 1, 100_000 + 100 * k + seq, k + 1,
                         230.0 + (k % 7) * 0.1, 3.0 + (k % 5) * 0.1, 0.7 + (k % 3) * 0.01))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO meters (meter_id) SELECT 'bm' || lpad(k::text, 5, '0')"
                     " FROM generate_series(0, %s - 1) k ORDER BY 1", (meters,))
        conn.execute("SELECT collector_ensure_partitions(%s, %s)",
                     (start, start + timedelta(seconds=60 * messages)))
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor().copy(
            "COPY readings (ts, batch, energy_import, meter, voltage_a, current_a, power_active)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["timestamptz", "int8", "int8", "int4", "float4", "float4", "float4"])
            for row in rows:
                copy.write_row(row)
        return time.perf_counter() - t0


async def bench_latency(url: str, mqtt: MqttSettings, rate: float, seconds: float,
                        meters: int) -> list[float]:
    site = f"l{uuid.uuid4().hex[:8]}"
    cfg = config(url, mqtt, site, f"bench-lat-{site}")
    col = Collector(cfg)
    latencies: list[float] = []

    def on_commit(batch: Batch) -> None:
        now = time.time()
        latencies.extend(now - b.sent_at.timestamp() for b in batch.batches)

    col.on_commit = on_commit
    stop = asyncio.Event()
    task = asyncio.create_task(col.run(stop))
    await asyncio.wait_for(col.ready.wait(), 15)
    n = int(rate * seconds)
    topic = wire.topic(site, "bgw", "readings")
    done = threading.Event()

    def publisher() -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-lp-{site}")
        client.connect(mqtt.host, mqtt.port)
        client.loop_start()
        t0 = time.perf_counter()
        start = BASE + timedelta(days=7)
        for seq in range(n):
            delay = t0 + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            payload = make_payloads(site, 1, meters, start + timedelta(minutes=seq))[0]
            obj = json.loads(payload)
            obj["seq"] = seq
            client.publish(topic, json.dumps(obj).encode(), qos=1)
        time.sleep(0.5)
        client.disconnect()
        client.loop_stop()
        done.set()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds + 60
    while (not done.is_set() or col.stats.messages < n) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return latencies


def bench_validation(meters: int, days: int, chunk: int) -> tuple[float, int]:
    """Reads at every 15-minute boundary (a few seconds of jitter), then the numpy VEE."""
    cfg = ValidationConfig()
    rng = np.random.default_rng(7)
    per = days * 96 + 1
    start = BASE.timestamp()
    elapsed = 0.0
    intervals = 0
    for first in range(0, meters, chunk):
        n = min(chunk, meters - first)
        meter = np.repeat(np.arange(n, dtype=np.int64), per)
        t = np.tile(start + np.arange(per) * 900.0, n) + rng.uniform(-5, 5, n * per)
        t[:: per] = start  # first read on the boundary so every interval is covered
        use = rng.gamma(2.0, 0.1, n * per)
        e = np.cumsum(use)
        e -= np.repeat(e[::per], per) - 1000.0
        t0 = time.perf_counter()
        iv, _ = rules.derive(meter, t, e, 900, cfg)
        base = rules.baseline(iv.meter, iv.start, iv.kwh, cfg.tod_buckets)
        rules.surge_drop(iv, base, cfg)
        elapsed += time.perf_counter() - t0
        intervals += len(iv)
    return elapsed, intervals


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=900, help="readings messages (batches)")
    p.add_argument("--meters", type=int, default=200, help="readings per message")
    p.add_argument("--wire-schema", type=int, choices=wire.READINGS_SCHEMAS,
                   default=wire.READINGS_SCHEMA,
                   help="readings as columns (2, what gateways send) or an object per reading "
                        "(1, gateways from before schema 2)")
    p.add_argument("--latency-rate", type=float, default=50.0, help="messages/s, live run")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--latency-meters", type=int, default=50)
    p.add_argument("--val-meters", type=int, default=10_000)
    p.add_argument("--val-days", type=int, default=30)
    p.add_argument("--val-chunk", type=int, default=2_000)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args()

    result: dict[str, object] = {"bench": "ingest", "messages": args.messages,
                                 "readings_per_message": args.meters,
                                 "wire_schema": args.wire_schema}
    with services() as (server, mqtt):
        result["database"] = db.host_label(server)
        result["broker"] = mqtt.url
        with fresh_database(server, "ingest") as url:
            secs, values, readings = asyncio.run(
                bench_ingest(url, mqtt, args.messages, args.meters, args.wire_schema))
        with fresh_database(server, "copy") as url:
            raw = bench_raw_copy(url, args.messages, args.meters)
        with fresh_database(server, "latency") as url:
            lat = asyncio.run(bench_latency(url, mqtt, args.latency_rate, args.latency_seconds,
                                            args.latency_meters))
    val_secs, val_n = bench_validation(args.val_meters, args.val_days, args.val_chunk)
    ingest_rate = readings / secs
    raw_rate = readings / raw
    lat_ms = np.array(lat) * 1000
    result.update({
        "readings": readings,
        "values": int(values),
        "ingest_seconds": round(secs, 3),
        "ingest_readings_per_s": round(ingest_rate),
        "ingest_values_per_s": round(values / secs),
        "raw_copy_seconds": round(raw, 3),
        "raw_copy_readings_per_s": round(raw_rate),
        "ratio_ingest_vs_raw_copy": round(ingest_rate / raw_rate, 3),
        "latency_messages": len(lat),
        "latency_p50_ms": round(float(np.percentile(lat_ms, 50)), 1) if len(lat) else None,
        "latency_p99_ms": round(float(np.percentile(lat_ms, 99)), 1) if len(lat) else None,
        "validation_intervals": val_n,
        "validation_seconds": round(val_secs, 3),
        "validation_intervals_per_s": round(val_n / val_secs),
        "goal_readings_per_s": 100_000,
        "goal_ratio": 0.5,
        "goal_validation_intervals_per_s": 1_000_000,
    })
    if not args.json:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
