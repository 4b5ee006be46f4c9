-- Tier usage rows are written only by charging, under the account's row lock (FOR UPDATE),
-- which already guarantees the account exists (the same reasoning as 0002 for the ledger);
-- the per-row foreign-key check was half the cost of the tier upsert in bench/billing.py.
ALTER TABLE billing_tier_usage DROP CONSTRAINT IF EXISTS billing_tier_usage_account_id_fkey;
