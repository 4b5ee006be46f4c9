-- Payments from providers (issue 16): each notification is one row, idempotent by the
-- provider's transaction id; the money itself moves only through the ledger (top-up /
-- refund entries whose idempotency key names the same transaction).
CREATE TABLE billing_payments (
    provider        text NOT NULL CHECK (provider ~ '^[a-z][a-z0-9_-]{0,31}$'),
    provider_txn    text NOT NULL CHECK (length(provider_txn) BETWEEN 1 AND 64),
    kind            text NOT NULL CHECK (kind IN ('payment', 'refund')),
    account_id      text,                    -- as notified (a refund: its payment's)
    amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
    currency        text NOT NULL,
    occurred_at     timestamptz NOT NULL,    -- the provider's time of the transaction
    original_txn    text,                    -- a refund: the payment it returns
    state           text NOT NULL CHECK (state IN ('applied', 'waiting', 'refused')),
    reason          text,                    -- waiting / refused: why
    ledger_key      text,                    -- billing_ledger.idempotency_key once applied
    fingerprint     text NOT NULL,           -- what was notified: a replay must match it
    received_at     timestamptz NOT NULL DEFAULT now(),
    applied_at      timestamptz,
    PRIMARY KEY (provider, provider_txn),
    CHECK ((kind = 'refund') = (original_txn IS NOT NULL))
);
CREATE INDEX billing_payments_day ON billing_payments (provider, occurred_at);
CREATE INDEX billing_payments_waiting ON billing_payments (provider, original_txn)
    WHERE state = 'waiting';

-- Daily reconciliation of a provider's statement against the ledger: one run per statement
-- file, one row per difference for staff to resolve.
CREATE TABLE billing_reconciliations (
    run_id          bigserial PRIMARY KEY,
    provider        text NOT NULL,
    statement_date  date NOT NULL,           -- the provider's business day (site local)
    file_sha256     text NOT NULL,
    statement_rows  int NOT NULL,
    matched         int NOT NULL,
    differences     int NOT NULL,
    run_at          timestamptz NOT NULL DEFAULT now(),
    run_by          text NOT NULL,
    UNIQUE (provider, statement_date, file_sha256)
);

CREATE TABLE billing_reconciliation_differences (
    difference_id   bigserial PRIMARY KEY,
    run_id          bigint NOT NULL REFERENCES billing_reconciliations,
    provider_txn    text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('missing_in_ledger', 'missing_in_statement',
                        'amount_mismatch', 'kind_mismatch', 'currency_mismatch',
                        'not_applied', 'ledger_entry_missing')),
    statement_fen   bigint,
    ledger_fen      bigint,
    detail          text NOT NULL,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution      text
);
CREATE INDEX billing_reconciliation_open ON billing_reconciliation_differences (run_id)
    WHERE resolved_at IS NULL;
