-- TimescaleDB, only when the extension is installed on the server (it cannot be here: there is
-- no Debian or PyPI package, so every test runs the plain-PostgreSQL path of 0002).
-- This is the ONLY file with Timescale-specific SQL. When the extension is available it creates
-- `readings` as a hypertable with compression and continuous aggregates; 0002 then sees the
-- table already there (CREATE ... IF NOT EXISTS) and only adds what both paths share.
-- Enabling it on an existing database: install timescaledb, then on a fresh database run
-- `meterhub collector migrate` (an existing native-partitioned `readings` is not converted).
DO $ts$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb not available: readings use native range partitioning';
        RETURN;
    END IF;
    CREATE EXTENSION IF NOT EXISTS timescaledb;
    CREATE TABLE IF NOT EXISTS readings (
        meter_id text NOT NULL,
        quantity text NOT NULL,
        ts timestamptz NOT NULL,
        value double precision NOT NULL,
        unit text NOT NULL,
        gateway text,
        seq bigint,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (meter_id, quantity, ts)
    );
    PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day',
                              if_not_exists => true);
    ALTER TABLE readings SET (timescaledb.compress,
                              timescaledb.compress_segmentby = 'meter_id, quantity');
    PERFORM add_compression_policy('readings', interval '7 days', if_not_exists => true);
    -- Continuous aggregates of the energy register: last value per bucket, for charts.
    -- Real-time (materialized_only = false; TimescaleDB 2.13+ defaults to true): buckets past
    -- the last refresh are computed from raw readings, so the newest readings answer at once,
    -- as with the plain views, not only after the next policy run.
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_15min
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter_id, quantity, time_bucket(interval '15 minutes', ts) AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               last(value, ts) AS last_value, count(*) AS n
        FROM readings GROUP BY meter_id, quantity, bucket WITH NO DATA $v$;
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_hour
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter_id, quantity, time_bucket(interval '1 hour', ts) AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               last(value, ts) AS last_value, count(*) AS n
        FROM readings GROUP BY meter_id, quantity, bucket WITH NO DATA $v$;
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_day
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter_id, quantity, time_bucket(interval '1 day', ts) AS bucket,
               min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
               last(value, ts) AS last_value, count(*) AS n
        FROM readings GROUP BY meter_id, quantity, bucket WITH NO DATA $v$;
    PERFORM add_continuous_aggregate_policy('readings_15min', interval '2 days',
                                            interval '15 minutes', interval '15 minutes',
                                            if_not_exists => true);
    PERFORM add_continuous_aggregate_policy('readings_hour', interval '7 days',
                                            interval '1 hour', interval '1 hour',
                                            if_not_exists => true);
    PERFORM add_continuous_aggregate_policy('readings_day', interval '60 days',
                                            interval '1 day', interval '1 day',
                                            if_not_exists => true);
    -- Retention on a hypertable drops chunks; collector_drop_readings_before (0002/0004)
    -- calls this when it exists.
    EXECUTE $f$
        CREATE OR REPLACE FUNCTION collector_ts_drop_before(cutoff timestamptz)
        RETURNS int LANGUAGE sql AS
        'SELECT count(*)::int FROM drop_chunks(''readings'', older_than => cutoff)' $f$;
END
$ts$;
