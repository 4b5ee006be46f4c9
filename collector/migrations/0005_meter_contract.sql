-- The contract between the collector and billing: what billing may know of a meter, and
-- all it reads of the collector. Billing never reads `meters` itself, so the collector may
-- reshape its own tables as long as this view keeps these columns with these meanings
-- (columns may be added; none renamed, retyped or dropped without billing changing too).
-- A plain view over `meters`, which is a plain table on both storage paths (native
-- partitioning and TimescaleDB only differ for `readings`).
CREATE OR REPLACE VIEW meter_contract AS
SELECT meter_id,
       site,      -- where commands and alerts for the meter are published; NULL: never heard
       gateway,   -- the gateway that last reported the meter; NULL: never heard
       relay,     -- relay state last reported with a reading ('open', 'closed', 'unknown'), or NULL
       relay_at   -- when the meter reported that relay state (meter clock), or NULL
FROM meters;
