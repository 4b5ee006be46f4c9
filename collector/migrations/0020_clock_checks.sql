-- Meter clocks (issue 17 item 2) and what a meter can do (item 4), in tables of their own:
-- `readings` and `intervals` are not touched.
--
-- A clock check is the meter's own date and time as its gateway read it (`meter_clock`) at
-- gateway time `read_at`; `drift_s` is meter clock minus gateway time (positive: ahead).
-- Only the meter's owning gateway's checks are stored (the insert joins `meters`).
CREATE TABLE IF NOT EXISTS clock_checks (
    meter_id text NOT NULL,
    read_at timestamptz NOT NULL,
    meter_clock timestamptz NOT NULL,
    drift_s double precision NOT NULL,
    gateway text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, read_at)
);

-- Part of the contract with billing (see 0005_meter_contract.sql; billing reads this view,
-- never the tables under it): what a meter can do, as its owning gateway reports it in its
-- status (health.meters.<id>.capabilities, from the meter's model or register map), and its
-- newest clock check. NULL capability: not reported (yet).
CREATE OR REPLACE VIEW meter_field_contract AS
-- The status is the gateway's free-form JSON: anything but a JSON boolean reads as NULL, so
-- a gateway cannot break the view (and billing's queries) with a value that does not cast.
SELECT m.meter_id,
       CASE WHEN jsonb_typeof(caps -> 'relay') = 'boolean' THEN (caps ->> 'relay')::boolean END
           AS relay_capable,      -- the meter has a relay billing can switch
       CASE WHEN jsonb_typeof(caps -> 'time_sync') = 'boolean'
            THEN (caps ->> 'time_sync')::boolean END
           AS time_sync_capable,  -- the gateway can set its clock
       c.drift_s AS clock_drift_s,  -- newest clock check: meter minus gateway time, seconds
       c.read_at AS clock_read_at   -- when that check was made (gateway time)
FROM meters m
LEFT JOIN gateways g ON g.gateway = m.gateway
LEFT JOIN LATERAL (SELECT g.health -> 'meters' -> m.meter_id -> 'capabilities' AS caps) h ON true
LEFT JOIN LATERAL (SELECT drift_s, read_at FROM clock_checks cc WHERE cc.meter_id = m.meter_id
                   ORDER BY read_at DESC LIMIT 1) c ON true;
