-- Postpaid accounts beside prepaid ones (issue 15): one ledger, monthly bills, penalties,
-- the collection ladder's state and hardship instalment plans.

ALTER TABLE billing_accounts
    ADD COLUMN billing_mode text NOT NULL DEFAULT 'prepaid'
        CHECK (billing_mode IN ('prepaid', 'postpaid')),
    ADD COLUMN customer_class text NOT NULL DEFAULT 'residential'
        CHECK (customer_class IN ('residential', 'low_voltage', 'high_voltage')),
    ADD COLUMN escalated_at timestamptz,        -- staff: formal demand letter
    ADD COLUMN escalation_reason text,
    ADD COLUMN good_payer_since timestamptz;    -- clean record: restore priority, discounts

-- penalties are ledger entries of their own kind
ALTER TABLE billing_ledger DROP CONSTRAINT billing_ledger_kind_check;
ALTER TABLE billing_ledger ADD CONSTRAINT billing_ledger_kind_check CHECK (kind IN (
    'charge', 'topup', 'adjustment', 'refund', 'arrears_recovery', 'penalty'));
CREATE INDEX billing_ledger_credits ON billing_ledger (account_id, created_at)
    WHERE amount_fen > 0;

-- An issued bill is immutable: it covers the account's ledger entries after the previous
-- bill's last entry up to last_entry_id; a correction is a later entry, so a later bill.
CREATE TABLE billing_bills (
    bill_id         bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    period_start    date NOT NULL,               -- local dates, inclusive
    period_end      date NOT NULL,
    issued_at       timestamptz NOT NULL,
    due_date        date NOT NULL,               -- last local day to pay without penalty
    customer_class  text NOT NULL,
    tariff_id       text NOT NULL,
    first_entry_id  bigint NOT NULL,             -- exclusive: the previous bill's last
    last_entry_id   bigint NOT NULL,
    opening_fen     bigint NOT NULL,             -- signed balance before (credit > 0)
    charges_fen     bigint NOT NULL,             -- energy charges (>= 0 owed)
    corrections_fen bigint NOT NULL,             -- charge corrections of earlier periods
    adjustments_fen bigint NOT NULL,             -- signed manual adjustments, refunds
    penalties_fen   bigint NOT NULL,
    payments_fen    bigint NOT NULL,
    closing_fen     bigint NOT NULL,             -- signed balance after
    amount_due_fen  bigint NOT NULL,
    kwh             numeric(18, 4) NOT NULL,
    breakdown       jsonb NOT NULL,              -- per meter / band / tier: kWh and money
    CHECK (period_end >= period_start),
    CHECK (closing_fen = opening_fen - charges_fen - corrections_fen + adjustments_fen
                         - penalties_fen + payments_fen),
    CHECK (amount_due_fen = greatest(0, -closing_fen)),
    UNIQUE (account_id, period_start)
);
CREATE INDEX billing_bills_account ON billing_bills (account_id, bill_id);

CREATE TABLE billing_bill_lines (
    bill_id         bigint NOT NULL REFERENCES billing_bills,
    line_no         int NOT NULL,
    kind            text NOT NULL,     -- charge, correction, adjustment, penalty, payment, ...
    description     text NOT NULL,
    amount_fen      bigint NOT NULL,   -- signed as in the ledger
    entry_id        bigint,
    PRIMARY KEY (bill_id, line_no)
);

-- Penalty posted per bill: cumulative exact accrual and the whole fen posted for it.
CREATE TABLE billing_penalties (
    bill_id         bigint NOT NULL REFERENCES billing_bills,
    through         date NOT NULL,               -- days accrued up to (inclusive)
    exact           numeric(24, 12) NOT NULL,    -- yuan, cumulative
    total_fen       bigint NOT NULL,             -- cumulative, after the 1-yuan minimum
    posted_fen      bigint NOT NULL,             -- this posting
    entry_id        bigint,
    PRIMARY KEY (bill_id, through)
);

CREATE FUNCTION billing_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: corrections go on the next bill', TG_TABLE_NAME;
END $$;
CREATE TRIGGER billing_bills_immutable BEFORE UPDATE OR DELETE ON billing_bills
    FOR EACH ROW EXECUTE FUNCTION billing_immutable();
CREATE TRIGGER billing_bill_lines_immutable BEFORE UPDATE OR DELETE ON billing_bill_lines
    FOR EACH ROW EXECUTE FUNCTION billing_immutable();
CREATE TRIGGER billing_penalties_immutable BEFORE UPDATE OR DELETE ON billing_penalties
    FOR EACH ROW EXECUTE FUNCTION billing_immutable();

-- The ladder's state per postpaid account (the notices themselves are billing_notices).
CREATE TABLE billing_collection (
    account_id      text PRIMARY KEY REFERENCES billing_accounts,
    bill_id         bigint REFERENCES billing_bills,   -- oldest unpaid bill; NULL: none
    stage           text NOT NULL DEFAULT 'clear',
    next_step       text,
    next_at         timestamptz,
    cut_at          timestamptz,                       -- planned cut (after notice evidence)
    hold            text,                              -- why nothing happens now
    unpaid_fen      bigint NOT NULL DEFAULT 0,
    overdue_fen     bigint NOT NULL DEFAULT 0,
    recheck         boolean NOT NULL DEFAULT true,     -- money or evidence came in
    wake_at         timestamptz,                       -- next time something is due
    updated_at      timestamptz NOT NULL
);
CREATE INDEX billing_collection_due ON billing_collection (wake_at) WHERE NOT recheck;

CREATE TABLE billing_instalment_plans (
    plan_id         bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    created_at      timestamptz NOT NULL,
    created_by      text NOT NULL,
    reason          text NOT NULL,
    waive_penalty   boolean NOT NULL,
    covered_fen     bigint NOT NULL CHECK (covered_fen > 0),
    state           text NOT NULL DEFAULT 'kept'
                    CHECK (state IN ('kept', 'missed', 'completed', 'cancelled')),
    ended_at        timestamptz,
    missed_due      date
);
CREATE UNIQUE INDEX billing_instalment_plans_one_live ON billing_instalment_plans (account_id)
    WHERE state = 'kept';

CREATE TABLE billing_instalments (
    plan_id         bigint NOT NULL REFERENCES billing_instalment_plans,
    seq             int NOT NULL,
    due_date        date NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
    PRIMARY KEY (plan_id, seq)
);
