"""Downtime of `meterhub collector migrate` from the v1 layout: rows moved per second.

A database migrated only to the v1 layout (collector 0001-0007) gets ``--meters`` meters x 96
readings x 4 quantities (one v1 row per value), then the remaining SQL migrations run and
``collector.migrate_v2.move`` moves the rows. Figures (last line with --json, one object):
``sql_migrations_s``, ``move_s``, ``move_readings_per_s`` (v2 rows, one per reading).

Services: METERHUB_DATABASE_URL (a server where databases may be created and dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector import migrate_v2
from meterhub import db
from meterhub.settings import DATABASE_URL_ENV

QUANTITIES = (
    ("energy_import_total", "kWh"),
    ("voltage_a", "V"),
    ("current_a", "A"),
    ("power_active_total", "kW"),
)


def seed_v1(url: str, meters: int, day: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE meterhub_migrations (component text NOT NULL, version int"
            " NOT NULL, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT"
            " now(), PRIMARY KEY (component, version))"
        )
        for m in db.discover(("collector",)):
            if m.version <= 7:
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO meterhub_migrations VALUES (%s, %s, %s)",
                    (m.component, m.version, m.name),
                )
        conn.execute("SELECT collector_ensure_partitions(%s, %s)", (day, day))
        with conn.cursor().copy(
            "COPY readings (meter_id, quantity, ts, value, unit, gateway, seq) FROM STDIN"
        ) as cp:
            for k in range(meters):
                for slot in range(96):
                    ts = day + timedelta(minutes=15 * slot)
                    values = (1000 + k + slot * 0.05, 230.1, 3.2, 0.71)
                    for (q, unit), v in zip(QUANTITIES, values, strict=True):
                        cp.write_row((f"mv{k:06d}", q, ts, v, unit, "gw", slot))
        conn.execute("INSERT INTO meters (meter_id) SELECT DISTINCT meter_id FROM readings")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args()
    server = os.environ.get(DATABASE_URL_ENV)
    if not server:
        print(f"set {DATABASE_URL_ENV}", file=sys.stderr)
        return 2
    name = f"meterhub_bench_mv_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(server), "dbname": name})  # type: ignore[arg-type]
    try:
        seed_v1(url, args.meters, datetime(2026, 11, 2, tzinfo=UTC))
        t0 = time.perf_counter()
        db.migrate(url)
        t1 = time.perf_counter()
        moved = migrate_v2.move(url)
        t2 = time.perf_counter()
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result = {
        "bench": "migrate_v2",
        "meters": args.meters,
        "v1_values": args.meters * 96 * 4,
        "readings": moved.readings,
        "sql_migrations_s": round(t1 - t0, 2),
        "move_s": round(t2 - t1, 2),
        "move_readings_per_s": round(moved.readings / (t2 - t1)),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:24s} {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
