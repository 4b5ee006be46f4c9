-- TimescaleDB part of storage layout v2 (runs only when the extension is installed; 0001 is
-- the v1 part). `readings` and `reading_extras` (created plain by 0008) become hypertables of
-- 1-day chunks, compressed after 7 days segmented by meter and ordered by time; the three
-- `readings_*` relations are real-time continuous aggregates with the columns of 0008's plain
-- views. Retention drops chunks of both hypertables (collector_ts_drop_before).
DO $ts$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day',
                              if_not_exists => true);
    PERFORM create_hypertable('reading_extras', 'ts', chunk_time_interval => interval '1 day',
                              if_not_exists => true);
    ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = 'meter',
                              timescaledb.compress_orderby = 'ts');
    ALTER TABLE reading_extras SET (timescaledb.compress,
                                    timescaledb.compress_segmentby = 'meter',
                                    timescaledb.compress_orderby = 'ts, quantity');
    PERFORM add_compression_policy('readings', interval '7 days', if_not_exists => true);
    PERFORM add_compression_policy('reading_extras', interval '7 days', if_not_exists => true);
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_15min
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter, time_bucket(interval '15 minutes', ts) AS bucket,
               last(energy_import, ts) AS energy_import_last,
               min(voltage_a) AS voltage_a_min, max(voltage_a) AS voltage_a_max,
               max(current_a) AS current_a_max, avg(power_active) AS power_active_avg,
               count(*) AS n
        FROM readings GROUP BY meter, bucket WITH NO DATA $v$;
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_hour
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter, time_bucket(interval '1 hour', ts) AS bucket,
               last(energy_import, ts) AS energy_import_last,
               min(voltage_a) AS voltage_a_min, max(voltage_a) AS voltage_a_max,
               max(current_a) AS current_a_max, avg(power_active) AS power_active_avg,
               count(*) AS n
        FROM readings GROUP BY meter, bucket WITH NO DATA $v$;
    EXECUTE $v$
        CREATE MATERIALIZED VIEW IF NOT EXISTS readings_day
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT meter, time_bucket(interval '1 day', ts) AS bucket,
               last(energy_import, ts) AS energy_import_last,
               min(voltage_a) AS voltage_a_min, max(voltage_a) AS voltage_a_max,
               max(current_a) AS current_a_max, avg(power_active) AS power_active_avg,
               count(*) AS n
        FROM readings GROUP BY meter, bucket WITH NO DATA $v$;
    PERFORM add_continuous_aggregate_policy('readings_15min', interval '2 days',
                                            interval '15 minutes', interval '15 minutes',
                                            if_not_exists => true);
    PERFORM add_continuous_aggregate_policy('readings_hour', interval '7 days',
                                            interval '1 hour', interval '1 hour',
                                            if_not_exists => true);
    PERFORM add_continuous_aggregate_policy('readings_day', interval '60 days',
                                            interval '1 day', interval '1 day',
                                            if_not_exists => true);
    EXECUTE $f$
        CREATE OR REPLACE FUNCTION collector_ts_drop_before(cutoff timestamptz)
        RETURNS int LANGUAGE sql AS
        'SELECT (SELECT count(*)::int FROM drop_chunks(''readings'', older_than => cutoff))
                + 0 * (SELECT count(*)::int FROM drop_chunks(''reading_extras'',
                                                             older_than => cutoff))' $f$;
END
$ts$;
