-- The ledger is written only under the account's row lock (FOR UPDATE), which already
-- guarantees the account exists; the per-row foreign-key trigger doubled the cost of the
-- hottest insert in billing (bench/billing.py), so it goes.
ALTER TABLE billing_ledger DROP CONSTRAINT IF EXISTS billing_ledger_account_id_fkey;

-- Match the predicate the policy pass actually uses, so the partial index serves it.
DROP INDEX IF EXISTS billing_accounts_attention;
CREATE INDEX billing_accounts_attention ON billing_accounts (account_id)
    WHERE dirty OR phase IN ('warned', 'final');
