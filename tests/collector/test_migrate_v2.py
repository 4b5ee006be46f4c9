"""`meterhub collector migrate` on a database of the v1 layout: every row moved into layout
v2 (readings, intervals queued for billing, anomalies, the validation queue), v1 tables
dropped, progress printed; a second run finds nothing to do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from collector_helpers import T0, database_before

from launcher import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def v1_url(pg_server_url: str) -> Iterator[str]:
    """A database migrated only up to the v1 layout (collector 0001-0007)."""
    with database_before(pg_server_url,
                         lambda m: m.component == "collector" and m.version <= 7, "v1") as url:
        yield url


def _seed_v1(conn: psycopg.Connection) -> None:
    conn.execute("SELECT collector_ensure_partitions(%s, %s)", (T0, T0))
    conn.execute("INSERT INTO meters (meter_id, gateway, site) VALUES ('a', 'gw1', 's')")
    conn.execute("INSERT INTO gateway_batches VALUES ('gw1', 7, %s, 2)", (T0,))
    rows = []
    for k in range(3):
        ts = T0 + timedelta(minutes=15 * k)
        rows += [
            ("a", "energy_import_total", ts, 100.25 + k, "kWh", "gw1", 7),
            ("a", "voltage_a", ts, 230.5, "V", "gw1", 7),
            ("a", "energy_import_t1", ts, 40.5 + k, "kWh", "gw1", 7),
            ("b", "energy_import_total", ts, 5.0 + k / 4, "kWh", None, None),
        ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (meter_id, quantity, ts, value, unit, gateway,"
            " seq) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    conn.execute(
        """INSERT INTO intervals (meter_id, interval_start, interval_end, kwh, quality,
                        method, held, reason, change_id, flags) VALUES
                        ('a', %(t)s, %(t)s + interval '15 min', 1.0, 'A', NULL, true,
                         'surge: big', 0, '{surge}'),
                        ('a', %(t)s + interval '15 min', %(t)s + interval '30 min', 0.5, 'S', 17,
                         false, 'missing_reads: gap', 0, '{missing_reads,late_arrival}')""",
        {"t": T0},
    )
    conn.execute(
        "INSERT INTO anomalies (meter_id, rule, at, reason, value, expected, holds)"
        " VALUES ('a', 'surge', %(t)s, 'big', 1.0, 0.25, true),"
        " ('a', 'late_arrival', %(t)s, 'late', 3600, NULL, false)",
        {"t": T0},
    )
    conn.execute("INSERT INTO vee_dirty (meter_id, dirty_from) VALUES ('a', %s)", (T0,))


def test_migrate_moves_v1_rows_into_layout_v2(v1_url, capsys):
    with psycopg.connect(v1_url, autocommit=True) as conn:
        _seed_v1(conn)
    assert cli.main(["collector", "migrate", "--database-url", v1_url]) == 0
    out = capsys.readouterr().out
    assert "applied collector/0008_storage_v2" in out
    assert "readings_v1: 2/2 meters (100%)" in out and "intervals_v1: moved and dropped" in out
    assert "moved 6 readings, 2 intervals, 1 anomalies" in out
    with psycopg.connect(v1_url) as conn:
        assert conn.execute(
            "SELECT to_regclass('readings_v1'), to_regclass('intervals_v1'),"
            " to_regclass('anomalies_v1')"
        ).fetchone() == (None, None, None)
        values = conn.execute(
            "SELECT meter_id, quantity, value FROM reading_values WHERE ts = %s ORDER BY 1, 2",
            (T0 + timedelta(minutes=30),),
        ).fetchall()
        assert values == [
            ("a", "energy_import_t1", 42.5),
            ("a", "energy_import_total", 102.25),
            ("a", "voltage_a", 230.5),
            ("b", "energy_import_total", 5.5),
        ]
        # one row per (meter, ts); the batch links gateway and seq, a tool's rows have none
        assert conn.execute(
            "SELECT m.meter_id, count(*), count(b.seq), min(b.seq)"
            " FROM readings r JOIN meters m ON m.meter_key = r.meter"
            " LEFT JOIN gateway_batches b ON b.batch_id = r.batch"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall() == [("a", 3, 3, 7), ("b", 3, 0, None)]
        ivs = conn.execute(
            "SELECT kwh_e4, flags, quality::text, method, held, seconds"
            " FROM intervals ORDER BY interval_start"
        ).fetchall()
        assert ivs == [(10_000, 2, "A", 0, True, 900), (5_000, 1, "S", 17, False, 900)]
        # every moved interval is on billing's change queue (layout v3)
        assert conn.execute("SELECT m.meter_id, q.lo, q.hi FROM interval_changes q"
                            " JOIN meters m ON m.meter_key = q.meter").fetchall() == [
            ("a", T0, T0 + timedelta(minutes=15))]
        assert conn.execute(
            "SELECT v.name, a.reason FROM anomalies a JOIN vee_rules v ON v.code = a.rule"
        ).fetchall() == [("surge", "big")]
        assert conn.execute(
            "SELECT m.meter_id FROM vee_dirty d JOIN meters m ON m.meter_key = d.meter"
        ).fetchall() == [("a",)]
    assert cli.main(["collector", "migrate", "--database-url", v1_url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_put_values_refuses_an_unknown_quantity_by_name(db_url):
    with (
        psycopg.connect(db_url) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown quantity bogus"),
    ):
        conn.execute("SELECT collector_put_values(%s, %s, %s, %s)", (["m"], ["bogus"], [T0], [1.0]))
