-- Prepaid billing: accounts, ledger, charges, policy state, commands, alerts.
-- Money is integer fen (bigint); the exact remainder rounding left out is kept in `carry`.

CREATE TABLE billing_accounts (
    account_id      text PRIMARY KEY,
    name            text NOT NULL DEFAULT '',
    tariff_id       text NOT NULL,
    group_key       text,                    -- building / transformer, for mass cut-off limits
    restore_mode    text NOT NULL DEFAULT 'close'
                    CHECK (restore_mode IN ('close', 'close_permitted')),
    credit          jsonb NOT NULL DEFAULT '{}',   -- billing.policy.CreditSettings
    windows         jsonb,                   -- billing.policy.ProtectedWindows; NULL: none
    balance_fen     bigint NOT NULL DEFAULT 0,     -- cache of sum(ledger), same transaction
    carry           numeric(24, 12) NOT NULL DEFAULT 0,  -- exact charge not yet posted
    arrears_fen     bigint NOT NULL DEFAULT 0,     -- old debt recovered from top-ups
    arrears_share   numeric(5, 4) NOT NULL DEFAULT 0 CHECK (arrears_share BETWEEN 0 AND 1),
    phase           text NOT NULL DEFAULT 'normal'
                    CHECK (phase IN ('normal', 'warned', 'final', 'cut')),
    phase_since     timestamptz NOT NULL DEFAULT now(),
    hold_reason     text,                    -- why a due cut-off is not happening
    awaiting_approval boolean NOT NULL DEFAULT false,
    alerted         numeric[] NOT NULL DEFAULT '{}',  -- thresholds alerted, re-armed above
    dirty           boolean NOT NULL DEFAULT true,    -- balance moved: evaluate policy
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_accounts_attention ON billing_accounts (account_id)
    WHERE dirty OR phase <> 'normal';

CREATE TABLE billing_meters (
    meter_id        text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    charge_from     timestamptz NOT NULL,    -- consumption before this is not the account's
    cursor          bigint NOT NULL DEFAULT 0,  -- last intervals.change_id consumed
    relay_wanted    text NOT NULL DEFAULT 'closed' CHECK (relay_wanted IN ('open', 'closed')),
    relay_reported  text NOT NULL DEFAULT 'unknown',
    relay_reported_at timestamptz,
    customer_action_needed boolean NOT NULL DEFAULT false  -- close-permitted: press the button
);
CREATE INDEX billing_meters_account ON billing_meters (account_id);

CREATE TABLE billing_tier_usage (
    account_id      text NOT NULL REFERENCES billing_accounts,
    tier_year       date NOT NULL,           -- local first day of the tier year
    kwh             numeric(18, 6) NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, tier_year)
);

-- Append-only: corrections are new entries, never edits (trigger below).
CREATE TABLE billing_ledger (
    entry_id        bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    kind            text NOT NULL
                    CHECK (kind IN ('charge', 'topup', 'adjustment', 'refund', 'arrears_recovery')),
    amount_fen      bigint NOT NULL,         -- signed: credit > 0, debit < 0
    balance_after_fen bigint NOT NULL,
    idempotency_key text NOT NULL UNIQUE,    -- topup:<ref>, charge:<meter>:<start>, ...
    created_at      timestamptz NOT NULL DEFAULT now(),
    meter_id        text,
    interval_start  timestamptz,
    channel         text,
    reference       text,
    actor           text,
    detail          jsonb
);
CREATE INDEX billing_ledger_account ON billing_ledger (account_id, entry_id);

CREATE FUNCTION billing_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing_ledger is append-only: post a correcting entry instead';
END $$;
CREATE TRIGGER billing_ledger_append_only BEFORE UPDATE OR DELETE ON billing_ledger
    FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only();

-- What has been charged per interval: the idempotency record and the base of adjustments.
CREATE TABLE billing_charges (
    meter_id        text NOT NULL,
    interval_start  timestamptz NOT NULL,
    interval_end    timestamptz NOT NULL,
    account_id      text NOT NULL,
    kwh             numeric(16, 4) NOT NULL,
    exact           numeric(24, 12) NOT NULL,  -- exact money charged so far (yuan)
    change_id       bigint NOT NULL,           -- intervals.change_id last charged
    PRIMARY KEY (meter_id, interval_start)
);

-- A payment started but not yet settled (e.g. a bank transfer on its way): no cut-off meanwhile.
CREATE TABLE billing_topup_intents (
    channel         text NOT NULL,
    reference       text NOT NULL,           -- payment reference, same as the later top-up
    account_id      text NOT NULL REFERENCES billing_accounts,
    amount_fen      bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    settled_at      timestamptz,
    PRIMARY KEY (channel, reference)
);
CREATE INDEX billing_topup_intents_open ON billing_topup_intents (account_id)
    WHERE settled_at IS NULL;

CREATE TABLE billing_cutoff_approvals (
    group_key       text PRIMARY KEY,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    households      int NOT NULL,
    approved_at     timestamptz,
    approved_by     text,
    valid_until     timestamptz
);

CREATE TABLE billing_commands (
    command_id      text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    meter_id        text NOT NULL,
    action          text NOT NULL,           -- meterhub.wire action
    purpose         text NOT NULL CHECK (purpose IN ('cutoff', 'restore', 'reconcile')),
    state           text NOT NULL CHECK (state IN ('queued', 'sent', 'accepted', 'confirmed',
                        'verified', 'rejected', 'timed_out', 'expired', 'cancelled', 'failed')),
    attempt         int NOT NULL DEFAULT 0,
    max_attempts    int NOT NULL,
    site            text,
    gateway         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    relay_reported  text,
    reason          text
);
-- One command in flight per meter: two engines can never both send one.
CREATE UNIQUE INDEX billing_commands_one_active ON billing_commands (meter_id)
    WHERE state IN ('queued', 'sent', 'accepted', 'timed_out');
CREATE INDEX billing_commands_due ON billing_commands (next_attempt_at)
    WHERE state IN ('queued', 'sent', 'accepted', 'timed_out');
CREATE INDEX billing_commands_account ON billing_commands (account_id, created_at);

CREATE TABLE billing_command_audit (
    audit_id        bigserial PRIMARY KEY,
    command_id      text NOT NULL REFERENCES billing_commands,
    at              timestamptz NOT NULL DEFAULT now(),
    from_state      text,
    to_state        text NOT NULL,
    actor           text NOT NULL,           -- engine id, gateway id or operator
    detail          text NOT NULL DEFAULT ''
);
CREATE INDEX billing_command_audit_cmd ON billing_command_audit (command_id, audit_id);

CREATE TABLE billing_alerts (
    alert_id        bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    kind            text NOT NULL,           -- low_balance, warning, final_warning, cutoff, ...
    threshold_fen   bigint,
    balance_fen     bigint NOT NULL,
    message         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX billing_alerts_account ON billing_alerts (account_id, alert_id);
CREATE INDEX billing_alerts_unpublished ON billing_alerts (alert_id) WHERE published_at IS NULL;
