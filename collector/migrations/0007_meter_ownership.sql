-- Meter ownership (issue 11): a meter belongs to one gateway. Ingest never re-homes it; it is
-- registered to the sending gateway only while that gateway is commissioning (or when the
-- collector is configured to commission unknown meters), else it waits in `pending_meters`
-- for an operator. Every assignment and move is written to `meter_ownership_audit`.
ALTER TABLE gateways ADD COLUMN IF NOT EXISTS commissioning_until timestamptz;

-- One row per (meter, claiming gateway): two gateways claiming one unknown meter are both
-- shown to the operator, who approves one.
CREATE TABLE IF NOT EXISTS pending_meters (
    meter_id text NOT NULL,
    gateway text NOT NULL,
    site text,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    readings bigint NOT NULL DEFAULT 0,          -- refused (dead-lettered) while pending
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'rejected')),
    decided_by text,
    decided_at timestamptz,
    PRIMARY KEY (meter_id, gateway)
);

CREATE TABLE IF NOT EXISTS meter_ownership_audit (
    id bigserial PRIMARY KEY,
    meter_id text NOT NULL,
    action text NOT NULL,             -- commissioned | approved | rejected | moved
    from_gateway text,
    to_gateway text,
    by text NOT NULL,                 -- an operator's name, or 'collector' for commissioning
    comment text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS meter_ownership_audit_meter_idx ON meter_ownership_audit (meter_id, at);
