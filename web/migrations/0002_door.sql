-- The operators' door (issue 13): login throttling, server-side sessions, the auditor role,
-- where each audited action came from. The session signing key leaves the database.

-- Login throttling: one row per source address ('addr') and per account name ('name').
-- Each attempt claims its slot with one INSERT ... ON CONFLICT DO UPDATE ... RETURNING, so
-- parallel attempts serialise on the row and cannot slip past the count.
CREATE TABLE IF NOT EXISTS web_login_throttle (
    scope text NOT NULL CHECK (scope IN ('addr', 'name')),
    key text NOT NULL,
    failures integer NOT NULL DEFAULT 0,   -- attempts not (yet) followed by a success
    next_at timestamptz NOT NULL,          -- no attempt before this time
    touched_at timestamptz NOT NULL,       -- last attempt; quiet long enough: counting restarts
    granted boolean NOT NULL DEFAULT true, -- whether the latest claim was let through
    PRIMARY KEY (scope, key)
);

-- Sessions of the page: the cookie carries a random token (HMAC-signed); only its sha256 is
-- stored, so a dump of this table logs nobody in. Idle and absolute expiry, revocable.
CREATE TABLE IF NOT EXISTS web_sessions (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES web_users (id),
    token_sha256 text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,       -- absolute end, whatever the activity
    revoked_at timestamptz,
    revoked_by text,
    source text NOT NULL DEFAULT '',       -- address it was opened from
    user_agent text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS web_sessions_user_idx ON web_sessions (user_id) WHERE revoked_at IS NULL;

ALTER TABLE web_users DROP CONSTRAINT IF EXISTS web_users_role_check;
ALTER TABLE web_users ADD CONSTRAINT web_users_role_check
    CHECK (role IN ('viewer', 'auditor', 'engineer', 'operator', 'admin'));

ALTER TABLE web_audit ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT '';

-- The session key now comes from a 0600 file or the environment (web.keys), never from here.
DELETE FROM web_secrets WHERE name = 'session';
