"""The TimescaleDB path of the collector's storage, against PGlite with TimescaleDB 2.23.

TimescaleDB cannot be installed natively here, so `pglite_server.mjs` serves PGlite (WASM
PostgreSQL 17.5 with TimescaleDB) over the Postgres wire protocol, one client at a time, and
every test gets a fresh in-memory server migrated by `meterhub.db.migrate`, exactly as
`meterhub collector migrate` does. PGlite has no COPY FROM STDIN and runs no background jobs,
so rows go in with INSERT ... unnest and policies and refreshes are called by hand.

Needs node and `npm ci` in this folder (.ci/run does both). Without them the tests skip with
the reason, except under METERHUB_REQUIRE_TIMESCALE=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from collector import store
from collector.vee import drop_old_readings
from meterhub import db

HERE = Path(__file__).resolve().parent
SERVER = HERE / "pglite_server.mjs"
PINNED = json.loads((HERE / "package.json").read_text())["dependencies"]
REQUIRED = os.environ.get("METERHUB_REQUIRE_TIMESCALE") == "1"
STARTUP_S = 60  # about 2 s here; WASM compilation on a slow machine takes longer
AGGREGATES = {"readings_15min": 900, "readings_hour": 3600, "readings_day": 86400}


def _missing() -> str | None:
    """Why the PGlite server cannot run here, or None."""
    if shutil.which("node") is None:
        return f"needs node and npm (apt-get install -y nodejs npm), then `npm ci` in {HERE}"
    for name, spec in PINNED.items():
        manifest = HERE / "node_modules" / name / "package.json"
        if not manifest.exists():
            return f"needs {name}: run `npm ci` in {HERE} (.ci/run does)"
        installed = json.loads(manifest.read_text())["version"]
        if not spec.endswith(installed):
            return f"{name} {installed} installed, but {spec} pinned: run `npm ci` in {HERE}"
    return None


MISSING = _missing()
# A laptop with only Python skips; CI (METERHUB_REQUIRE_TIMESCALE=1) fails in the fixture.
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")


@pytest.fixture
def pglite() -> Iterator[str]:
    """A fresh PGlite+TimescaleDB server on a free port; yields its conninfo."""
    if MISSING is not None:
        pytest.fail(f"METERHUB_REQUIRE_TIMESCALE=1 but {MISSING}")
    # stderr is left to pytest's capture: shown with the failure if the server complains
    proc = subprocess.Popen(["node", str(SERVER), "0"], cwd=HERE, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        started, _, _ = select.select([proc.stdout], [], [], STARTUP_S)
        line = proc.stdout.readline() if started else ""  # "ready HOST:PORT"; "" if it died
        if not line.startswith("ready "):
            pytest.fail(f"pglite_server.mjs did not start within {STARTUP_S} s: {line!r}")
        host, port = line.split()[1].rsplit(":", 1)
        yield (f"host={host} port={port} user=postgres password=postgres dbname=postgres "
               "sslmode=disable connect_timeout=10")
    finally:
        proc.stdin.close()  # the server stops when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.fixture
def ts_url(pglite: str) -> str:
    """The PGlite server with every migration applied, the way `collector migrate` does."""
    applied = db.migrate(pglite)
    assert applied[:4] == ["collector/0001_timescale", "collector/0002_core",
                           "collector/0003_vee_marks", "collector/0004_retention_hook"]
    return pglite


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


Row = tuple[str, str, datetime, float]


def _insert(conn: psycopg.Connection, rows: list[Row]) -> None:
    """``collector_put_values``: the same statement on both servers (PGlite has no COPY FROM
    STDIN), (meter, quantity, ts, value) rows into layout v2."""
    conn.execute("SELECT collector_put_values(%s, %s, %s, %s)",
                 [list(col) for col in zip(*rows, strict=True)])


def _series(start: datetime, hours: int, skip: range = range(0)) -> list[Row]:
    """Two meters, a cumulative register and a voltage, every 5 minutes. Values are multiples
    of 1/4, so every register count and voltage is exact on both servers."""
    rows: list[Row] = []
    for m, meter in enumerate(("ts-m1", "ts-m2")):
        for i in range(hours * 12):
            if meter == "ts-m2" and i in skip:
                continue  # a gap in one meter's reads
            ts = start + timedelta(minutes=5 * i)
            rows.append((meter, "energy_import_total", ts, 1000 * m + 0.25 * i))
            rows.append((meter, "voltage_a", ts, 230 + 0.5 * ((7 * i + m) % 9 - 4)))
    return rows


def _expected(rows: list[Row], width_s: int) -> list[tuple]:
    """What each aggregate must answer, computed here (bucket edges at UTC multiples): last
    register count (0.01 kWh), voltage min and max, readings."""
    groups: dict[tuple, dict[datetime, dict[str, float]]] = defaultdict(dict)
    for meter, quantity, ts, value in rows:
        epoch = int(ts.timestamp())
        bucket = datetime.fromtimestamp(epoch - epoch % width_s, UTC)
        groups[meter, bucket].setdefault(ts, {})[quantity] = value
    out = []
    for key in sorted(groups):
        reads = [groups[key][t] for t in sorted(groups[key])]
        volts = [r["voltage_a"] for r in reads]
        out.append((*key, round(reads[-1]["energy_import_total"] * 100), min(volts), max(volts),
                    len(reads)))
    return out


# The one query both storages must answer alike.
QUERY = ("SELECT m.meter_id, v.bucket, v.energy_import_last, v.voltage_a_min, v.voltage_a_max,"
         " v.n FROM {} v JOIN meters m ON m.meter_key = v.meter"
         " WHERE m.meter_id LIKE 'ts-%' ORDER BY 1, 2")


def _answers(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    # A zone with DST and an offset: buckets are UTC on both, whatever the session's zone.
    conn.execute("SET TimeZone = 'America/Toronto'")
    return {view: [tuple(r) for r in conn.execute(sql.SQL(QUERY).format(sql.Identifier(view)))]
            for view in AGGREGATES}


def test_migrations_make_readings_a_compressed_hypertable_with_aggregates(ts_url: str) -> None:
    assert db.migrate(ts_url) == []  # applied once, recorded, nothing left to do
    with _connect(ts_url) as conn:
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone() is not None
        assert conn.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            " ORDER BY 1"
        ).fetchall() == [("reading_extras", True), ("readings", True)]
        assert conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_name = 'readings'"
        ).fetchall() == [("ts", timedelta(days=7))]  # 0062: week-long chunks
        assert conn.execute(
            "SELECT attname, segmentby_column_index, orderby_column_index "
            "FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'readings' ORDER BY attname"
        ).fetchall() == [("meter", 1, None), ("ts", None, 1)]  # segment by meter, by time
        jobs = {
            (r[0], r[1]): r[2] for r in conn.execute(
                "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs "
                "WHERE proc_name IN ('policy_compression', 'policy_refresh_continuous_aggregate')")
        }
        caggs = [r[0] for r in conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE hypertable_name = 'readings' ORDER BY view_name")]
        assert caggs == sorted(AGGREGATES)
        assert jobs[("policy_compression", "readings")]["compress_after"] == "7 days"
        # a refresh policy's job names the continuous aggregate it refreshes
        refresh = {name: jobs[("policy_refresh_continuous_aggregate", name)]
                   for name in AGGREGATES}
        assert {n: (c["start_offset"], c["end_offset"]) for n, c in refresh.items()} == {
            "readings_15min": ("2 days", "00:15:00"),
            "readings_hour": ("7 days", "01:00:00"),
            "readings_day": ("60 days", "1 day"),
        }
        # No real-time aggregation would mean the newest readings are missing from the
        # aggregates until a policy run, unlike the plain views.
        assert conn.execute(
            "SELECT bool_and(NOT materialized_only) "
            "FROM timescaledb_information.continuous_aggregates"
        ).fetchone() == (True,)
        # The plain-PostgreSQL partition maker is a no-op on a hypertable.
        now = datetime.now(UTC)
        assert conn.execute("SELECT collector_ensure_partitions(%s, %s)",
                            (now - timedelta(days=90), now)).fetchone() == (0,)


def test_continuous_aggregates_answer_as_the_plain_postgresql_views(
    ts_url: str, db_url: str
) -> None:
    """Same rows into PGlite+TimescaleDB and into the plain PostgreSQL the other tests use:
    the same query over readings_15min / _hour / _day answers the same, and what it answers
    is computed here independently."""
    old = _series(datetime(2020, 2, 29, 21, 0, tzinfo=UTC), hours=30, skip=range(40, 70))
    now = datetime.now(UTC)
    fresh_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    fresh = _series(fresh_start, hours=1)

    with _connect(ts_url) as ts, _connect(db_url) as plain:
        for conn in (ts, plain):
            _insert(conn, old)
        for view in AGGREGATES:
            ts.execute(sql.SQL("CALL refresh_continuous_aggregate({}, NULL, NULL)").format(
                sql.Literal(view)))
            # really materialized, not only answered from the raw rows
            mat = ts.execute(
                "SELECT format('%%I.%%I', materialization_hypertable_schema, "
                "materialization_hypertable_name) "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
                (view,)).fetchone()
            assert mat is not None
            stored = ts.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.SQL(mat[0]))).fetchone()
            assert stored == (len(_expected(old, AGGREGATES[view])),), view

        expected = {view: _expected(old, width) for view, width in AGGREGATES.items()}
        assert len(expected["readings_day"]) == 6  # 2 meters x 3 days
        assert _answers(ts) == expected
        assert _answers(plain) == expected

        # Readings newer than the last refresh (the policy runs every 15 min / 1 h / 1 day)
        # are in the answer too, on both.
        for conn in (ts, plain):
            _insert(conn, fresh)
        expected = {view: _expected(old + fresh, width) for view, width in AGGREGATES.items()}
        assert _answers(ts) == expected
        assert _answers(plain) == expected


def test_compression_policy_run_by_hand_and_late_readings_still_stored(ts_url: str) -> None:
    """The compression policy compresses week-long chunks once they are a week old
    (segmented by meter, ordered by time: the figure printed is compressed bytes per reading,
    goal <= 30); a gateway's late backlog into a compressed chunk still goes through the
    collector's own conflict path."""
    now = datetime.now(UTC).replace(microsecond=0)
    old_day = (now - timedelta(days=24)).replace(hour=0, minute=0, second=0)
    days = 7
    rows: list[Row] = []
    for k in range(40):  # 40 meters x 7 days x 96 readings of 4 quantities
        for i in range(96 * days):
            ts = old_day + timedelta(minutes=15 * i)
            rows += [(f"ts-c{k:02d}", "energy_import_total", ts, 1000 + k + 0.07 * i),
                     (f"ts-c{k:02d}", "voltage_a", ts, 228 + (k * 7 + i) % 40 * 0.1),
                     (f"ts-c{k:02d}", "current_a", ts, 2 + (k + i) % 30 * 0.1),
                     (f"ts-c{k:02d}", "power_active_total", ts, 0.4 + (k + i) % 30 * 0.023)]
    rows.append(("ts-c00", "energy_import_total", now - timedelta(hours=1), 2000.0))
    readings = 40 * 96 * days
    with _connect(ts_url) as conn:
        _insert(conn, rows)
        job = conn.execute("SELECT job_id FROM timescaledb_information.jobs "
                           "WHERE proc_name = 'policy_compression' "
                           "AND hypertable_name = 'readings'").fetchone()
        assert job is not None
        conn.execute(sql.SQL("CALL run_job({})").format(sql.Literal(job[0])))
        chunks = conn.execute(
            "SELECT range_end <= now() - interval '7 days', is_compressed "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'readings' "
            "ORDER BY range_start").fetchall()
        assert chunks and all(old == compressed for old, compressed in chunks), chunks
        assert any(compressed for _, compressed in chunks)
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (readings + 1,)
        stats = conn.execute(
            "SELECT before_compression_total_bytes, after_compression_total_bytes "
            "FROM chunk_compression_stats('readings') WHERE compression_status = 'Compressed'"
        ).fetchall()
        compressed = sum(after for _, after in stats)
        per_reading = compressed / readings
        print(f"TimescaleDB compressed readings: {per_reading:.1f} bytes per reading of 4 "
              f"quantities ({compressed} bytes for {readings}; uncompressed "
              f"{sum(before for before, _ in stats) / readings:.1f})")
        assert per_reading <= 30  # issue 14's goal: the bytes are deterministic, not timed

        # Redelivered and late readings for the compressed day, as the collector stores them
        # when COPY hits a duplicate: staging table, then its INSERT ... ON CONFLICT DO NOTHING.
        conn.execute(store._STAGE)
        late = old_day + timedelta(minutes=5)
        key = conn.execute("SELECT meter_key FROM meters WHERE meter_id = 'ts-c00'").fetchone()
        assert key is not None
        with conn.transaction():
            conn.execute(
                "INSERT INTO _stage (ts, energy_import, meter) SELECT * FROM unnest("
                "%s::timestamptz[], %s::int8[], %s::int4[])",
                ([old_day, late], [99, 500], [key[0], key[0]]))
            assert conn.execute(store._INSERT).fetchone() == (1, 1)
        stored = conn.execute("SELECT ts, energy_import FROM readings WHERE meter = %s"
                              " AND ts IN (%s, %s) ORDER BY ts",
                              (key[0], old_day, late)).fetchall()
        assert stored == [(old_day, 100000), (late, 500)]  # first one kept, late one added
        assert conn.execute("SELECT m.meter_id FROM vee_dirty d JOIN meters m"
                            " ON m.meter_key = d.meter").fetchall() == [("ts-c00",)]


def test_retention_drops_old_chunks_and_keeps_recent_readings_and_intervals(
    ts_url: str,
) -> None:
    """README: retention drops raw readings older than retention_days (whole chunks here,
    by drop_chunks: a chunk goes when all of it is past the limit, so with week-long chunks
    up to a week more is kept) and keeps validated intervals."""
    now = datetime.now(UTC).replace(microsecond=0)
    ages = (timedelta(days=60), timedelta(days=45), timedelta(days=20), timedelta(hours=1))
    rows = [("ts-m1", "energy_import_total", now - age, float(i)) for i, age in enumerate(ages)]
    rows += [("ts-m1", "energy_import_t1", now - age, float(i)) for i, age in enumerate(ages)]
    with _connect(ts_url) as conn:
        _insert(conn, rows)
        conn.execute("INSERT INTO intervals (meter, interval_start, seconds, kwh_e4, quality)"
                     " SELECT meter_key, %s, 900, 15000, 'A' FROM meters"
                     " WHERE meter_id = 'ts-m1'", (now - ages[0],))
        job = conn.execute("SELECT job_id FROM timescaledb_information.jobs "
                           "WHERE proc_name = 'policy_compression' "
                           "AND hypertable_name = 'readings'").fetchone()
        assert job is not None
        conn.execute(sql.SQL("CALL run_job({})").format(sql.Literal(job[0])))  # as in life
        assert conn.execute("SELECT count(*) FROM timescaledb_information.chunks "
                            "WHERE hypertable_name = 'readings' AND is_compressed"
                            ).fetchone() == (3,)

    # The collector's own retention call (CollectorConfig.retention_days = 30).
    assert drop_old_readings(ts_url, 30) == 2

    with _connect(ts_url) as conn:
        left = [r[0] for r in conn.execute("SELECT ts FROM readings ORDER BY ts")]
        assert left == [now - ages[2], now - ages[3]]
        assert conn.execute("SELECT count(*) FROM intervals").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM timescaledb_information.chunks "
                            "WHERE hypertable_name = 'readings'").fetchone() == (2,)
        # the side table's old chunks went with them
        assert conn.execute("SELECT count(*) FROM reading_extras").fetchone() == (2,)
    assert drop_old_readings(ts_url, 30) == 0  # nothing more to drop
