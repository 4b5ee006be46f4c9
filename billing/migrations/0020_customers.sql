-- Customers (issue 16): who an account belongs to and how to reach them. Contacts are
-- checked by billing.customers before they get here; the CHECKs are the last line.
CREATE TABLE billing_customers (
    customer_id     text PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    phones          text[] NOT NULL DEFAULT '{}',          -- E.164 ("+8613800138000")
    email           text,
    wechat_openid   text,
    preferred_channel text NOT NULL DEFAULT 'sms'
                    CHECK (preferred_channel IN ('sms', 'email', 'wechat')),
    language        text NOT NULL DEFAULT 'zh-CN' CHECK (language IN ('zh-CN', 'en')),
    address         text NOT NULL DEFAULT '',
    compound        text,                                  -- residential community
    contact_verified boolean NOT NULL DEFAULT false,
    contact_verified_at timestamptz,
    contact_verified_by text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (contact_verified = (contact_verified_at IS NOT NULL))
);
CREATE INDEX billing_customers_compound ON billing_customers (compound);

ALTER TABLE billing_accounts ADD COLUMN customer_id text REFERENCES billing_customers;
CREATE INDEX billing_accounts_customer ON billing_accounts (customer_id);

-- Contacts a delivery found dead (a bounced address, an unknown number, an unfollowed
-- WeChat account): staff re-verify them. One open row per contact; verifying the
-- customer's contacts (or changing the contact) resolves it.
CREATE TABLE billing_undeliverable_contacts (
    undeliverable_id bigserial PRIMARY KEY,
    customer_id     text NOT NULL REFERENCES billing_customers,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email', 'wechat')),
    contact         text NOT NULL,
    reason          text NOT NULL,
    failures        int NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolved_by     text
);
CREATE UNIQUE INDEX billing_undeliverable_open
    ON billing_undeliverable_contacts (customer_id, channel, contact) WHERE resolved_at IS NULL;
