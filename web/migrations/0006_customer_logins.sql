-- Customer self-service (issue 16): a login with the role 'customer' sees only the
-- accounts of the one billing customer it is linked to.
ALTER TABLE web_users DROP CONSTRAINT IF EXISTS web_users_role_check;
ALTER TABLE web_users ADD CONSTRAINT web_users_role_check
    CHECK (role IN ('viewer', 'auditor', 'engineer', 'operator', 'admin', 'customer'));

CREATE TABLE web_customer_logins (
    user_id         bigint PRIMARY KEY REFERENCES web_users (id),
    customer_id     text NOT NULL REFERENCES billing_customers,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX web_customer_logins_customer ON web_customer_logins (customer_id);
