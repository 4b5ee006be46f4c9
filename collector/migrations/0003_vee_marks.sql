-- Validation work queue marks: a number that only grows, so a validation pass deletes a
-- meter's mark only if no ingest marked it again meanwhile (timestamps cannot promise that).
CREATE SEQUENCE IF NOT EXISTS vee_mark_seq;
ALTER TABLE vee_dirty ADD COLUMN IF NOT EXISTS mark bigint NOT NULL DEFAULT nextval('vee_mark_seq');
