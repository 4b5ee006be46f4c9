-- An alert about one meter (a tamper alert: its relay moved without a command) names it, so
-- the published event and the page point at that meter rather than the account's first.
ALTER TABLE billing_alerts ADD COLUMN IF NOT EXISTS meter_id text;
