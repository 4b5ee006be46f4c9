-- An operator's manual cut-off or restore of one meter, held against the disconnect policy
-- and reconciliation until it expires (manual_hold_until) or an operator releases it.
-- relay_wanted stays the single truth the command machinery compares against; while a hold
-- is active it equals manual_hold, and when the hold ends it goes back to what the policy
-- wants (open while the account's phase is 'cut', closed otherwise).
ALTER TABLE billing_meters
    ADD COLUMN manual_hold text CHECK (manual_hold IN ('open', 'closed')),
    ADD COLUMN manual_hold_until timestamptz,  -- NULL: until an operator releases it
    ADD COLUMN manual_hold_by text,
    ADD COLUMN manual_hold_reason text,
    ADD COLUMN manual_hold_since timestamptz,
    ADD COLUMN manual_hold_command text;       -- the command that carried it out
CREATE INDEX billing_meters_manual_hold_until ON billing_meters (manual_hold_until)
    WHERE manual_hold IS NOT NULL AND manual_hold_until IS NOT NULL;

-- Every hold set, replaced, released or expired, and by whom (append-only like the ledger).
CREATE TABLE billing_manual_hold_audit (
    audit_id        bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    meter_id        text NOT NULL,
    account_id      text NOT NULL,
    event           text NOT NULL CHECK (event IN ('set', 'released', 'expired')),
    wanted          text CHECK (wanted IN ('open', 'closed')),
    hold_until      timestamptz,
    actor           text NOT NULL,           -- the operator, or the engine for an expiry
    reason          text NOT NULL DEFAULT '',
    command_id      text
);
CREATE INDEX billing_manual_hold_audit_meter ON billing_manual_hold_audit (meter_id, audit_id);

CREATE FUNCTION billing_manual_hold_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing_manual_hold_audit is append-only';
END $$;
CREATE TRIGGER billing_manual_hold_audit_append_only
    BEFORE UPDATE OR DELETE ON billing_manual_hold_audit
    FOR EACH ROW EXECUTE FUNCTION billing_manual_hold_audit_append_only();
