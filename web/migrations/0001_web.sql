-- Web part: people and machines that use the API, and what they changed.
-- Passwords are scrypt hashes; API tokens are stored as the sha256 of a random token (the
-- token itself is shown once), so a database dump gives nobody a working login.

CREATE TABLE IF NOT EXISTS web_users (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('viewer', 'engineer', 'operator', 'admin')),
    password_hash text,               -- scrypt$n$r$p$salt$hash (hex); NULL: token-only user
    disabled boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text
);

CREATE TABLE IF NOT EXISTS web_tokens (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES web_users (id),
    label text NOT NULL DEFAULT '',
    token_sha256 text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS web_tokens_user_idx ON web_tokens (user_id);

-- The key that signs session cookies: in the database so every web process shares it and a
-- restart does not log everybody out. Rotating it (DELETE) ends every session.
CREATE TABLE IF NOT EXISTS web_secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every write made through the web API, with who made it and whether it worked.
CREATE TABLE IF NOT EXISTS web_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    user_name text NOT NULL,
    role text NOT NULL,
    action text NOT NULL,             -- e.g. review.dismiss, account.topup, command.cutoff
    target text NOT NULL DEFAULT '',
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS web_audit_at_idx ON web_audit (at);
