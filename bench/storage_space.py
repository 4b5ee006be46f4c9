"""Storage bench: database growth per reading of 4 quantities, live and as a backfill.

A day of ``--meters`` meters read every 15 minutes (96 readings each: energy register,
voltage, current, power) behind ``--gateways`` gateways, one message per gateway and poll
cycle, goes through MQTT to one collector with its defaults, then one validation pass derives
the intervals. Twice, each in a fresh database:

- ``live``: readings arrive as they are taken (lateness threshold above the day's age);
- ``backfill``: the same day arrives at once a day late, with the default lateness threshold
  (every batch is late: recorded per run of batches in ``late_batches``).

Figures (last line with --json, one object), per scenario prefix:
- ``*_bytes_per_reading``: growth of the whole database (``pg_database_size``: readings,
  extras, batches, intervals, anomalies, every index, bookkeeping) per reading;
- ``*_readings_bytes_per_reading``: the ``readings`` partitions with their index alone;
- ``*_intervals_bytes_per_reading`` / ``*_anomalies_bytes_per_reading`` /
  ``*_batches_bytes_per_reading`` (gateway and late batches): those tables (intervals with
  billing's change queue, ``interval_changes``, still full here: no billing runs);
- ``*_ingest_readings_per_s``: readings from the first message handed over by the broker to
  the last commit, published poll cycle by poll cycle across the gateways to a running
  collector, at most 400 messages uncommitted (the independent check's end-to-end figure for
  the backfill; payloads are built beforehand);
goals from issue 14 as ``goal_*``.

Services: METERHUB_DATABASE_URL / METERHUB_MQTT_URL, or the embedded ones when unset.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import config, fresh_database, services

from collector import Collector, ValidationConfig, vee
from collector.store import Batch
from meterhub import db, wire

SLOTS = 96  # one day of 15-minute reads


def payloads(site: str, gateway: int, meters: int, gateways: int, day: datetime) -> list[bytes]:
    """One message per poll cycle for one gateway's meters (meter k belongs to k % gateways)."""
    mine = [k for k in range(meters) if k % gateways == gateway]
    out = []
    for slot in range(SLOTS):
        taken = day + timedelta(minutes=15 * slot)
        readings = tuple(
            wire.Reading(
                f"sm{k:06d}",
                taken,
                {
                    "energy_import_total": wire.Value(
                        round(1000.0 + k + slot * (0.05 + (k % 13) * 0.01), 2), "kWh"
                    ),
                    "voltage_a": wire.Value(round(228.0 + (k * 7 + slot) % 40 * 0.1, 1), "V"),
                    "current_a": wire.Value(round(2.0 + (k + slot) % 30 * 0.1, 1), "A"),
                    "power_active_total": wire.Value(round(0.4 + (k + slot) % 30 * 0.023, 3), "kW"),
                },
            )
            for k in mine
        )
        out.append(
            wire.encode_readings(
                wire.ReadingsBatch(
                    f"sgw{gateway:02d}", site, slot + 1, taken + timedelta(seconds=5), readings
                )
            )
        )
    return out


def publish_paced(
    mqtt: Any,
    site: str,
    messages: list[list[bytes]],
    order: list[tuple[int, int]],
    col: Collector,
    window: int,
) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"space-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(window)
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    infos = []
    for sent, (g, slot) in enumerate(order):
        while sent - col.stats.messages >= window:
            time.sleep(0.001)
        infos.append(
            client.publish(wire.topic(site, f"sgw{g:02d}", "readings"), messages[g][slot], qos=1)
        )
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    def total(table: str) -> int:
        """With indexes (and every partition of a partitioned table)."""
        row = conn.execute(
            "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT sum(pg_total_relation_size(t.relid))"
            " FROM pg_partition_tree(c.oid) t) ELSE pg_total_relation_size(c.oid) END::bigint"
            " FROM pg_class c WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
        return int(row[0] or 0) if row else 0

    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return {
        "database": int(row[0]),
        "readings": total("readings"),
        "intervals": total("intervals") + total("interval_changes"),
        "anomalies": total("anomalies"),
        "batches": total("gateway_batches") + total("late_batches"),
    }


async def scenario(
    url: str, mqtt: Any, meters: int, gateways: int, day: datetime, validation: ValidationConfig
) -> dict[str, float]:
    site = f"s{uuid.uuid4().hex[:8]}"
    cfg = dataclasses.replace(config(url, mqtt, site, f"bench-space-{site}"), validation=validation)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        before = sizes(conn)
    total = meters * SLOTS
    col = Collector(cfg)
    loop = asyncio.get_running_loop()
    marks: list[float] = []

    def on_commit(batch: Batch) -> None:
        if not marks:
            marks.append(min(batch.publish_times))
        marks.append(loop.time())

    col.on_commit = on_commit
    stop = asyncio.Event()
    task = asyncio.create_task(col.run(stop))
    await asyncio.wait_for(col.ready.wait(), 15)
    # published while the collector runs, poll cycle by poll cycle across the gateways, with
    # at most `window` messages not yet committed (a broker drops QoS 1 messages beyond its
    # queue for a client; real gateways would send them again, this publisher does not)
    messages = [payloads(site, g, meters, gateways, day) for g in range(gateways)]
    order = [(g, slot) for slot in range(SLOTS) for g in range(gateways)]
    await asyncio.to_thread(publish_paced, mqtt, site, messages, order, col, window=400)
    started = time.monotonic()
    while col.stats.readings_stored < total:
        await asyncio.sleep(0.01)
        if time.monotonic() - started > 900:
            raise RuntimeError(f"only {col.stats.readings_stored}/{total} readings stored")
    stop.set()
    await task
    seconds = marks[-1] - marks[0]
    written = await asyncio.to_thread(vee.run_pending, url, cfg.interval_s, validation)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        after = sizes(conn)
        late = conn.execute(
            "SELECT count(*), coalesce(sum(readings), 0) FROM late_batches"
        ).fetchone()
    assert late is not None
    grow = {k: after[k] - before[k] for k in after}
    return {
        "readings": total,
        "intervals": written,
        "late_batch_rows": int(late[0]),
        "late_readings": int(late[1]),
        "bytes_per_reading": round(grow["database"] / total, 1),
        "readings_bytes_per_reading": round(grow["readings"] / total, 1),
        "intervals_bytes_per_reading": round(grow["intervals"] / total, 1),
        "anomalies_bytes_per_reading": round(grow["anomalies"] / total, 1),
        "batches_bytes_per_reading": round(grow["batches"] / total, 1),
        "ingest_seconds": round(seconds, 3),
        "ingest_readings_per_s": round(total / seconds),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meters", type=int, default=2000)
    p.add_argument("--gateways", type=int, default=20)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args()
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    result: dict[str, object] = {
        "bench": "storage_space",
        "meters": args.meters,
        "gateways": args.gateways,
        "quantities": 4,
    }
    with services() as (server, mqtt):
        result["database"] = db.host_label(server)
        for name, validation in (
            ("live", ValidationConfig(late_after_s=5 * 86400.0)),
            ("backfill", ValidationConfig()),
        ):
            with fresh_database(server, f"space_{name}") as url:
                got = asyncio.run(scenario(url, mqtt, args.meters, args.gateways, day, validation))
            result.update({f"{name}_{k}": v for k, v in got.items()})
    result.update(
        {
            "goal_bytes_per_reading": 250,
            "goal_readings_bytes_per_reading": 150,
            "goal_backfill_ingest_readings_per_s": 50_000,
        }
    )
    if not args.json:
        for k, v in result.items():
            print(f"{k:40s} {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
