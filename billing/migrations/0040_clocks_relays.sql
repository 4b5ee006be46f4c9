-- Meter clocks and relay capability (issue 17 items 2 and 4).

-- A time sync is a command of its own purpose; its ack carries the meter's clock read back,
-- whose drift (meter minus gateway time, s) verifies it.
ALTER TABLE billing_commands DROP CONSTRAINT IF EXISTS billing_commands_purpose_check;
ALTER TABLE billing_commands ADD CONSTRAINT billing_commands_purpose_check
    CHECK (purpose IN ('cutoff', 'restore', 'reconcile', 'time_sync'));
ALTER TABLE billing_commands ADD COLUMN IF NOT EXISTS clock_drift_s double precision;

-- no_relay: the meter was put on a prepaid account although it has no relay (the setting
-- said "flag"): a cut-off needs a site visit. reconcile_attempts: repairs queued by
-- reconciliation since the relay last read as wanted; at the bound, reconciliation stops and
-- site_visit_since says since when a person is asked to go.
ALTER TABLE billing_meters ADD COLUMN IF NOT EXISTS no_relay boolean NOT NULL DEFAULT false;
ALTER TABLE billing_meters ADD COLUMN IF NOT EXISTS reconcile_attempts int NOT NULL DEFAULT 0;
ALTER TABLE billing_meters ADD COLUMN IF NOT EXISTS site_visit_since timestamptz;
ALTER TABLE billing_meters ADD COLUMN IF NOT EXISTS site_visit_reason text;
