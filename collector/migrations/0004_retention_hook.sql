-- Retention works on both storages: month partitions are dropped on plain PostgreSQL; on
-- TimescaleDB the chunk-dropping function from 0001 (the only Timescale-specific file) is used.
CREATE OR REPLACE FUNCTION collector_drop_readings_before(cutoff timestamptz)
RETURNS int LANGUAGE plpgsql AS $f$
DECLARE
    r record;
    dropped int := 0;
BEGIN
    IF to_regprocedure('collector_ts_drop_before(timestamptz)') IS NOT NULL THEN
        EXECUTE 'SELECT collector_ts_drop_before($1)' INTO dropped USING cutoff;
        RETURN dropped;
    END IF;
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_[0-9]{6}$'
    LOOP
        IF to_timestamp(substr(r.relname, 10), 'YYYYMM') AT TIME ZONE 'UTC'
           + interval '1 month' <= cutoff THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$f$;
