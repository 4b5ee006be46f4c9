-- Intervals v3 (issue 14: the whole database within 250 bytes per reading). An interval row
-- was ~84 bytes of heap and two ~31-byte indexes; now ~68 and one index:
--
-- * Billing finds what changed in a change queue (`interval_changes`, one row per meter with
--   the span of interval starts written since billing last took it) instead of a change id
--   on every row: the (meter, change_id) index, the change_id column, its trigger and
--   sequence go. The queue is filled by statement triggers on `intervals`, so every writer
--   (validation passes, review decisions, releases of held intervals, tools) enqueues what
--   it wrote in its own transaction, the way the change id trigger did.
-- * kWh as exact integers: kwh_e4 / raw_kwh_e4 are counts of 0.0001 kWh (numeric(16,4)
--   before: the same values, 8 bytes instead of a 5-13 byte varlena).
-- * No NULL in a hot row: method 0 means "none" (an actual interval; NULL before, which gave
--   every actual row a null bitmap and a 32-byte header instead of 24). raw_kwh_e4 stays
--   NULL only on forward estimates (no reads at all).
-- * Columns in alignment order: 8-byte columns first, no padding (40 bytes of data).
--
-- Existing rows are kept: the table is rebuilt in (meter, interval_start) order in this
-- transaction (a rebuild, not ALTER TABLE: dropped columns would stay as NULLs in every
-- rewritten row). What billing had not consumed yet (change_id past its meter's cursor, or
-- every interval of a meter billing does not know yet) is put on the queue first, so billing
-- charges it once, exactly as before. On TimescaleDB `intervals` is a plain table too
-- (validation and review decisions update rows; a compressed chunk would be decompressed
-- for each of them), so this file is the same on both.

-- One row per meter: the span [lo, hi] of interval starts written since billing last took
-- the row. Billing locks its meters' rows (FOR UPDATE SKIP LOCKED: it never waits for a
-- writer), charges the intervals in the span, and deletes the row (or moves lo past what it
-- charged) in the same transaction; a writer meanwhile waits for that commit and then
-- inserts or widens the row, so no write is ever lost between the two.
CREATE TABLE IF NOT EXISTS interval_changes (
    meter integer PRIMARY KEY,      -- meters.meter_key
    lo timestamptz NOT NULL,
    hi timestamptz NOT NULL
);

CREATE OR REPLACE FUNCTION intervals_enqueue_changes() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO interval_changes AS q (meter, lo, hi)
    SELECT meter, min(interval_start), max(interval_start) FROM changed
    GROUP BY meter ORDER BY meter  -- meter order: writers never deadlock each other
    ON CONFLICT (meter) DO UPDATE SET lo = least(q.lo, excluded.lo),
                                      hi = greatest(q.hi, excluded.hi);
    RETURN NULL;
END
$f$;

DO $v3$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'intervals'::regclass
                   AND attname = 'change_id' AND NOT attisdropped) THEN
        RETURN;  -- already v3
    END IF;
    -- what billing has not consumed yet
    IF to_regclass('billing_meters') IS NOT NULL THEN
        INSERT INTO interval_changes (meter, lo, hi)
        SELECT i.meter, min(i.interval_start), max(i.interval_start)
        FROM intervals i JOIN meters m ON m.meter_key = i.meter
        LEFT JOIN billing_meters b ON b.meter_id = m.meter_id
        WHERE i.change_id > coalesce(b.cursor, 0)
        GROUP BY i.meter
        ON CONFLICT (meter) DO NOTHING;
    ELSE
        INSERT INTO interval_changes (meter, lo, hi)
        SELECT meter, min(interval_start), max(interval_start) FROM intervals GROUP BY meter
        ON CONFLICT (meter) DO NOTHING;
    END IF;

    CREATE TABLE intervals_v3 (
        interval_start timestamptz NOT NULL,
        kwh_e4 bigint NOT NULL,         -- consumption, counts of 0.0001 kWh
        raw_kwh_e4 bigint,              -- the register difference before substitution, same
                                        -- unit; NULL only without reads (forward estimate)
        meter integer NOT NULL,         -- meters.meter_key
        seconds integer NOT NULL,       -- interval_end = interval_start + seconds
        flags integer NOT NULL DEFAULT 0,   -- vee_rules bits
        method smallint NOT NULL DEFAULT 0, -- NEM12 method of a substitute; 0: none
        quality "char" NOT NULL CHECK (quality IN ('A', 'E', 'S', 'F')),
        held boolean NOT NULL DEFAULT false,
        CONSTRAINT intervals_v3_pkey PRIMARY KEY (meter, interval_start)
    );
    INSERT INTO intervals_v3 (interval_start, kwh_e4, raw_kwh_e4, meter, seconds, flags,
                              method, quality, held)
    SELECT interval_start, (kwh * 10000)::bigint, (raw_kwh * 10000)::bigint, meter, seconds,
           flags, coalesce(method, 0), quality, held
    FROM intervals ORDER BY meter, interval_start;
    DROP TABLE intervals;  -- with its trigger and its (meter, change_id) index
    ALTER TABLE intervals_v3 RENAME TO intervals;
    ALTER TABLE intervals RENAME CONSTRAINT intervals_v3_pkey TO intervals_pkey;
    DROP FUNCTION IF EXISTS intervals_bump_change_id();
    DROP SEQUENCE IF EXISTS intervals_change_seq;
END
$v3$;

DROP TRIGGER IF EXISTS intervals_enqueue_inserted ON intervals;
CREATE TRIGGER intervals_enqueue_inserted AFTER INSERT ON intervals
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION intervals_enqueue_changes();
DROP TRIGGER IF EXISTS intervals_enqueue_updated ON intervals;
CREATE TRIGGER intervals_enqueue_updated AFTER UPDATE ON intervals
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION intervals_enqueue_changes();
