-- Collector core tables. Plain PostgreSQL: `readings` is range-partitioned by month on ts
-- (partitions are created on demand by collector_ensure_partitions; a DEFAULT partition
-- catches anything else). With TimescaleDB, 0001 created `readings` as a hypertable already.

CREATE TABLE IF NOT EXISTS meters (
    meter_id text PRIMARY KEY,
    gateway text,
    site text,
    protocol text,
    expected_interval_s int,
    first_seen timestamptz,
    last_seen timestamptz,
    relay text,                -- last relay state reported with a reading
    relay_at timestamptz,
    register_modulus_kwh double precision  -- where the energy register rolls over (NULL: default)
);
CREATE INDEX IF NOT EXISTS meters_gateway_idx ON meters (gateway);

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
) PARTITION BY RANGE (ts);

DO $p$
BEGIN
    -- Only for the native-partitioned table (a hypertable has no partitions of this kind).
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass) THEN
        EXECUTE 'CREATE TABLE IF NOT EXISTS readings_default PARTITION OF readings DEFAULT';
    END IF;
END
$p$;

-- Create monthly partitions covering [lo, hi]. Idempotent and safe under concurrency (an
-- advisory lock serialises creators); a no-op on TimescaleDB. Called by the collector in a
-- short transaction of its own before it writes rows for months it has not seen yet.
CREATE OR REPLACE FUNCTION collector_ensure_partitions(lo timestamptz, hi timestamptz)
RETURNS int LANGUAGE plpgsql AS $f$
DECLARE
    m timestamptz := date_trunc('month', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text;
    made int := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(7411001);
    WHILE m <= hi LOOP
        name := 'readings_' || to_char(m AT TIME ZONE 'UTC', 'YYYYMM');
        IF to_regclass(name) IS NULL THEN
            -- Rows already in the DEFAULT partition for this month would block the new
            -- partition: move them over (rare: only data written before the month existed).
            CREATE TEMP TABLE _moved (LIKE readings) ON COMMIT DROP;
            EXECUTE format('WITH d AS (DELETE FROM readings_default WHERE ts >= %L AND ts < %L '
                           'RETURNING *) INSERT INTO _moved SELECT * FROM d',
                           m, m + interval '1 month');
            EXECUTE format('CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                           name, m, m + interval '1 month');
            EXECUTE 'INSERT INTO readings SELECT * FROM _moved';
            EXECUTE 'DROP TABLE _moved';
            made := made + 1;
        END IF;
        m := m + interval '1 month';
    END LOOP;
    RETURN made;
END
$f$;

-- Drop whole months of raw readings older than `keep` (retention); intervals stay.
CREATE OR REPLACE FUNCTION collector_drop_readings_before(cutoff timestamptz)
RETURNS int LANGUAGE plpgsql AS $f$
DECLARE
    r record;
    dropped int := 0;
BEGIN
    FOR r IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
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

-- Gateways: last status (retained `status` topic), health, and sequence bookkeeping.
CREATE TABLE IF NOT EXISTS gateways (
    gateway text PRIMARY KEY,
    site text,
    state text,                 -- online / offline, from the status topic
    health jsonb NOT NULL DEFAULT '{}'::jsonb,
    status_at timestamptz,      -- `at` of the last status message
    last_seen timestamptz,      -- when anything last arrived from it
    max_seq bigint,
    batches bigint NOT NULL DEFAULT 0,
    duplicate_batches bigint NOT NULL DEFAULT 0,
    clock_offset_s double precision  -- received_at - sent_at of the last batch (gateway clock)
);

-- Every readings batch seen, per gateway: duplicates are conflicts here, gaps are holes.
CREATE TABLE IF NOT EXISTS gateway_batches (
    gateway text NOT NULL,
    seq bigint NOT NULL,
    received_at timestamptz NOT NULL,
    readings int NOT NULL,
    PRIMARY KEY (gateway, seq)
);

-- Holes in each gateway's sequence: computed, never stale, even with several collectors
-- committing out of order.
CREATE OR REPLACE VIEW seq_gaps AS
SELECT gateway, seq + 1 AS from_seq, next_seq - 1 AS to_seq, received_at AS noticed_after
FROM (SELECT gateway, seq, received_at,
             lead(seq) OVER (PARTITION BY gateway ORDER BY seq) AS next_seq
      FROM gateway_batches) s
WHERE next_seq > seq + 1;

-- Events: from gateways (`events` topic) and from the collector itself (duplicate batches).
CREATE TABLE IF NOT EXISTS gateway_events (
    id bigserial PRIMARY KEY,
    gateway text NOT NULL,
    site text,
    source text NOT NULL DEFAULT 'gateway',  -- gateway | collector
    kind text NOT NULL,
    meter_id text,
    at timestamptz NOT NULL,
    detail text NOT NULL DEFAULT '',
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_events_gateway_at_idx ON gateway_events (gateway, at);

CREATE TABLE IF NOT EXISTS dead_letters (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    payload bytea NOT NULL,     -- exactly what arrived (for a single bad reading: that reading)
    reason text NOT NULL,
    gateway text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_received_idx ON dead_letters (received_at);

-- Validated intervals: the contract billing consumes (ordered by change_id per meter).
CREATE SEQUENCE IF NOT EXISTS intervals_change_seq;
CREATE TABLE IF NOT EXISTS intervals (
    meter_id text NOT NULL,
    interval_start timestamptz NOT NULL,
    interval_end timestamptz NOT NULL,
    kwh numeric(16,4) NOT NULL,
    quality char(1) NOT NULL CHECK (quality IN ('A', 'E', 'S', 'F')),
    method smallint NULL,
    held boolean NOT NULL DEFAULT false,
    reason text,
    raw_kwh numeric(16,4),
    change_id bigint NOT NULL,
    flags text[] NOT NULL DEFAULT '{}',   -- names of the rules that fired
    validated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, interval_start)
);
CREATE INDEX IF NOT EXISTS intervals_meter_change_idx ON intervals (meter_id, change_id);
CREATE INDEX IF NOT EXISTS intervals_change_idx ON intervals (change_id);

-- change_id on EVERY insert and update, whoever writes: billing resumes by it.
CREATE OR REPLACE FUNCTION intervals_bump_change_id() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    NEW.change_id := nextval('intervals_change_seq');
    RETURN NEW;
END
$f$;
DROP TRIGGER IF EXISTS intervals_change_id ON intervals;
CREATE TRIGGER intervals_change_id BEFORE INSERT OR UPDATE ON intervals
    FOR EACH ROW EXECUTE FUNCTION intervals_bump_change_id();

-- Abnormal work orders: a person confirms or dismisses; either releases the held intervals.
CREATE TABLE IF NOT EXISTS review_items (
    id bigserial PRIMARY KEY,
    meter_id text NOT NULL,
    rule text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    reason text NOT NULL,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'confirmed', 'dismissed')),
    opened_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    decided_by text,           -- who
    comment text
);
CREATE INDEX IF NOT EXISTS review_items_status_idx ON review_items (status, opened_at);
CREATE INDEX IF NOT EXISTS review_items_meter_idx ON review_items (meter_id, period_start);

-- Every rule that fired, with a reason in words; interval rules key on interval_start,
-- reading rules (voltage, clock skew, late arrival) on the reading time.
CREATE TABLE IF NOT EXISTS anomalies (
    id bigserial PRIMARY KEY,
    meter_id text NOT NULL,
    rule text NOT NULL,
    at timestamptz NOT NULL,
    reason text NOT NULL,
    value double precision,
    expected double precision,
    holds boolean NOT NULL DEFAULT false,    -- this rule holds the interval from billing
    review_item_id bigint REFERENCES review_items (id),
    detected_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (meter_id, rule, at)
);
CREATE INDEX IF NOT EXISTS anomalies_review_idx ON anomalies (review_item_id);

-- Where validation has to look again: the earliest reading time that changed per meter.
CREATE TABLE IF NOT EXISTS vee_dirty (
    meter_id text PRIMARY KEY,
    dirty_from timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);

-- Plain views with the same names and columns as the TimescaleDB continuous aggregates, so
-- the same queries answer on both.
DO $v$
DECLARE
    spec record;
BEGIN
    FOR spec IN SELECT * FROM (VALUES ('readings_15min', '15 minutes'),
                                      ('readings_hour', '1 hour'),
                                      ('readings_day', '1 day')) AS s(name, width)
    LOOP
        IF to_regclass(spec.name) IS NULL THEN
            EXECUTE format($q$
                CREATE VIEW %I AS
                SELECT meter_id, quantity,
                       date_bin(interval %L, ts, timestamptz '2000-01-01 00:00:00+00') AS bucket,
                       min(value) AS min_value, max(value) AS max_value, avg(value) AS avg_value,
                       (array_agg(value ORDER BY ts DESC))[1] AS last_value, count(*) AS n
                FROM readings GROUP BY meter_id, quantity, bucket $q$, spec.name, spec.width);
        END IF;
    END LOOP;
END
$v$;
