-- TimescaleDB only: week-long chunks for `readings` and `reading_extras` (were 1 day).
-- Compression keeps one segment per meter and chunk; a segment of a week (672 readings at
-- 15 minutes) spreads its per-column headers over seven times the readings of a day's 96:
-- about 15-17 compressed bytes per reading of 4 quantities against 30-32 (issue 14, goal
-- <= 30; tests/collector/timescale prints the figure). A chunk is compressed once it is a
-- week old, so readings stay uncompressed 7 to 14 days. Applies to chunks created from now
-- on. A fleet of more than ~100,000 meters should go back to 1-day chunks (a chunk's
-- indexes should fit in memory while it takes writes):
--     SELECT set_chunk_time_interval('readings', interval '1 day');
DO $ts$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    PERFORM set_chunk_time_interval('readings', interval '7 days');
    PERFORM set_chunk_time_interval('reading_extras', interval '7 days');
END
$ts$;
