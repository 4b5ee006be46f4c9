-- Dead letters are bounded (issue 12): a payload is kept whole only up to a cap (then it can
-- be replayed), otherwise its first bytes; length and sha256 always say what it was. `code`
-- is the short reason (counted in status), `whole_message` tells a refused message from a
-- single refused reading, `replayed_at` marks one fed through ingest again.
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS code text NOT NULL DEFAULT 'refused',
    ADD COLUMN IF NOT EXISTS payload_length int,
    ADD COLUMN IF NOT EXISTS payload_sha256 bytea,
    ADD COLUMN IF NOT EXISTS complete boolean NOT NULL DEFAULT true,
    ADD COLUMN IF NOT EXISTS whole_message boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS replayed_at timestamptz;
UPDATE dead_letters SET payload_length = length(payload), payload_sha256 = sha256(payload)
WHERE payload_length IS NULL;
CREATE INDEX IF NOT EXISTS dead_letters_code_idx ON dead_letters (code);
