-- Postpaid terms (issue 15, second part): the good-payer discount as a ledger entry of its
-- own kind, staff clearing the escalation flag (audited), and high-voltage accounts'
-- in-month settlement schedules.

ALTER TABLE billing_ledger DROP CONSTRAINT billing_ledger_kind_check;
ALTER TABLE billing_ledger ADD CONSTRAINT billing_ledger_kind_check CHECK (kind IN (
    'charge', 'topup', 'adjustment', 'refund', 'arrears_recovery', 'penalty', 'discount'));

-- The escalation flag (billing_accounts.escalated_at) is set by the ladder and cleared by
-- staff; every change is a row here. After a clearing the flag is set again only by a bill
-- that falls into arrears after it (billing.collection._flags).
ALTER TABLE billing_accounts
    ADD COLUMN escalation_cleared_at timestamptz,
    ADD COLUMN escalation_cleared_by text,
    ADD COLUMN escalation_cleared_reason text;

CREATE TABLE billing_escalation_audit (
    audit_id        bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    at              timestamptz NOT NULL,
    action          text NOT NULL CHECK (action IN ('set', 'cleared')),
    by_whom         text NOT NULL,
    reason          text NOT NULL
);
CREATE INDEX billing_escalation_audit_account ON billing_escalation_audit (account_id, audit_id);

CREATE FUNCTION billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER billing_escalation_audit_append_only BEFORE UPDATE OR DELETE
    ON billing_escalation_audit FOR EACH ROW EXECUTE FUNCTION billing_append_only();

-- A high-voltage account's in-month settlement schedule for one local month: instalments
-- on days of the month, each a share of the expected monthly amount; the rest is settled by
-- the month's bill. Payments are ordinary credits of the one ledger.
CREATE TABLE billing_settlement_schedules (
    schedule_id     bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    month           date NOT NULL CHECK (extract(day FROM month) = 1),
    expected_fen    bigint NOT NULL CHECK (expected_fen > 0),
    created_at      timestamptz NOT NULL,
    created_by      text NOT NULL,
    reason          text NOT NULL,
    state           text NOT NULL DEFAULT 'kept'
                    CHECK (state IN ('kept', 'missed', 'settled', 'cancelled')),
    ended_at        timestamptz,
    missed_due      date,
    missed_fen      bigint,                    -- short at the missed instalment
    UNIQUE (account_id, month)
);

CREATE TABLE billing_settlement_instalments (
    schedule_id     bigint NOT NULL REFERENCES billing_settlement_schedules,
    seq             int NOT NULL,
    due_date        date NOT NULL,
    share           numeric(7, 6) NOT NULL CHECK (share > 0 AND share < 1),
    amount_fen      bigint NOT NULL CHECK (amount_fen >= 0),
    PRIMARY KEY (schedule_id, seq)
);

-- the ladder driven by a missed in-month instalment rather than a bill
ALTER TABLE billing_collection
    ADD COLUMN schedule_id bigint REFERENCES billing_settlement_schedules;
