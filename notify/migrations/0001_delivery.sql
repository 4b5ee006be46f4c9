-- Delivery of billing's notices (issue 16). One job per notice and target: the customer
-- (walking their channels, preferred first) or one of the site's webhook subscribers.
-- Every attempt is a row in notify_attempts and, through billing.record_evidence, evidence
-- on the notice itself.
CREATE TABLE notify_jobs (
    notice_id       bigint NOT NULL,         -- billing_notices.notice_id
    target          text NOT NULL,           -- 'customer' or 'webhook:<name>'
    required        boolean NOT NULL,        -- quiet hours and the per-contact limit skip it
    notice          jsonb NOT NULL,          -- the notice as planned: account, kind, texts
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'done', 'given_up')),
    channel_index   int NOT NULL DEFAULT 0,  -- which of the customer's channels is being tried
    attempts        int NOT NULL DEFAULT 0,  -- on the current channel
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,             -- a deliverer is sending it (crash: retried)
    channel         text,                    -- the channel that delivered it
    provider_id     text,                    -- the provider's message id
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    PRIMARY KEY (notice_id, target)
);
CREATE INDEX notify_jobs_due ON notify_jobs (next_attempt_at) WHERE state = 'pending';

CREATE TABLE notify_attempts (
    attempt_id      bigserial PRIMARY KEY,
    notice_id       bigint NOT NULL,
    target          text NOT NULL,
    channel         text NOT NULL,
    contact         text NOT NULL,           -- phone, address, openid or webhook name
    at              timestamptz NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('ok', 'retry', 'dead_contact', 'failed')),
    provider_id     text,
    detail          text
);
CREATE INDEX notify_attempts_contact ON notify_attempts (contact, at) WHERE outcome = 'ok';
CREATE INDEX notify_attempts_notice ON notify_attempts (notice_id, attempt_id);
