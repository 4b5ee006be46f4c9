-- Billing takes changed intervals from the collector's change queue (`interval_changes`,
-- collector/migrations/0060_intervals_v3.sql) instead of reading past a change id cursor:
-- the collector put whatever was past each meter's cursor on the queue before this runs.
ALTER TABLE billing_meters DROP COLUMN IF EXISTS cursor;
-- The charge's revision: raised by each adjustment, part of its ledger key
-- (adj:<meter>:<epoch>:<revision>). It starts from the last change id charged, which is at
-- least every earlier adjustment's key number, so no key is ever used twice.
ALTER TABLE billing_charges RENAME COLUMN change_id TO revision;
ALTER TABLE billing_unbilled DROP COLUMN IF EXISTS change_id;
