-- Notices to customers (issue 15/16): billing records what must be said, with the legal text
-- as issued; the notify part delivers it and appends evidence of each attempt.
-- A notice is never edited or deleted: only `closed_at` (finally delivered or posted) and
-- `withdrawn_at` (moot before delivery, e.g. paid before a reminder went out) are set, once.

CREATE TABLE billing_notices (
    notice_id       bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES billing_accounts,
    kind            text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,39}$'),  -- billing.notices.KINDS
    required        boolean NOT NULL,        -- legally required: quiet hours do not apply
    not_before      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    params          jsonb NOT NULL CHECK (jsonb_typeof(params) = 'object'),
    texts           jsonb NOT NULL CHECK (jsonb_typeof(texts) = 'object'),
    dedupe_key      text UNIQUE,
    closed_at       timestamptz,             -- delivered or posted: nothing more to do
    withdrawn_at    timestamptz              -- no longer to be sent (only before closed_at)
);
CREATE INDEX billing_notices_open ON billing_notices (not_before, notice_id)
    WHERE closed_at IS NULL AND withdrawn_at IS NULL;
CREATE INDEX billing_notices_account ON billing_notices (account_id, notice_id);

CREATE FUNCTION billing_notices_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'billing_notices is evidence: notices are never deleted';
    END IF;
    IF (NEW.notice_id, NEW.account_id, NEW.kind, NEW.required, NEW.not_before, NEW.created_at,
        NEW.params, NEW.texts, NEW.dedupe_key)
       IS DISTINCT FROM
       (OLD.notice_id, OLD.account_id, OLD.kind, OLD.required, OLD.not_before, OLD.created_at,
        OLD.params, OLD.texts, OLD.dedupe_key)
       OR (OLD.closed_at IS NOT NULL AND NEW.closed_at IS DISTINCT FROM OLD.closed_at)
       OR (OLD.withdrawn_at IS NOT NULL AND NEW.withdrawn_at IS DISTINCT FROM OLD.withdrawn_at)
    THEN
        RAISE EXCEPTION 'billing_notices is evidence: only closed_at/withdrawn_at are set, once';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER billing_notices_guard BEFORE UPDATE OR DELETE ON billing_notices
    FOR EACH ROW EXECUTE FUNCTION billing_notices_guard();

CREATE TABLE billing_notice_evidence (
    evidence_id     bigserial PRIMARY KEY,
    notice_id       bigint NOT NULL REFERENCES billing_notices,
    at              timestamptz NOT NULL,
    channel         text NOT NULL,           -- sms, wechat, email, letter, posted, ...
    outcome         text NOT NULL
                    CHECK (outcome IN ('sent', 'delivered', 'refused', 'failed', 'posted')),
    provider_ref    text,
    detail          text
);
CREATE INDEX billing_notice_evidence_notice ON billing_notice_evidence (notice_id, evidence_id);

CREATE FUNCTION billing_notice_evidence_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing_notice_evidence is append-only';
END $$;
CREATE TRIGGER billing_notice_evidence_append_only BEFORE UPDATE OR DELETE
    ON billing_notice_evidence FOR EACH ROW EXECUTE FUNCTION billing_notice_evidence_append_only();
