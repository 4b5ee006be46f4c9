-- Review decisions beyond confirm / dismiss (issue 17): reject (an estimate replaces the value),
-- correct (an engineer's value), estimate (a chosen method); assignment and due dates; a
-- history of everything done to an item; site-visit work orders.

ALTER TABLE review_items DROP CONSTRAINT IF EXISTS review_items_status_check;
ALTER TABLE review_items ADD CONSTRAINT review_items_status_check CHECK (status IN (
    'open', 'confirmed', 'dismissed', 'rejected', 'corrected', 'estimated'));
ALTER TABLE review_items
    ADD COLUMN IF NOT EXISTS assigned_to text,      -- a person
    ADD COLUMN IF NOT EXISTS team text,             -- or a team
    ADD COLUMN IF NOT EXISTS due_at timestamptz;
CREATE INDEX IF NOT EXISTS review_items_assigned_idx ON review_items (assigned_to, status)
    WHERE assigned_to IS NOT NULL;

-- Everything done to an item, in order: assignment, comments, decisions, work orders.
-- Append-only: the history is evidence.
CREATE TABLE IF NOT EXISTS review_history (
    id bigserial PRIMARY KEY,
    item_id bigint NOT NULL REFERENCES review_items (id),
    at timestamptz NOT NULL DEFAULT now(),
    by text NOT NULL,
    action text NOT NULL CHECK (action IN ('assigned', 'comment', 'decided', 'work_order',
                                            'work_order_closed')),
    detail jsonb NOT NULL DEFAULT '{}',
    comment text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS review_history_item_idx ON review_history (item_id, id);

CREATE OR REPLACE FUNCTION review_history_append_only() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION 'review_history is append-only' USING ERRCODE = 'P0001';
END
$f$;
DROP TRIGGER IF EXISTS review_history_append_only ON review_history;
CREATE TRIGGER review_history_append_only BEFORE UPDATE OR DELETE ON review_history
    FOR EACH ROW EXECUTE FUNCTION review_history_append_only();

-- A value a person decided for an interval. Validation passes never overwrite it (they skip
-- intervals that have one), so a re-run keeps the decision; billing sees the interval's new
-- change id and charges the difference.
CREATE TABLE IF NOT EXISTS interval_overrides (
    meter integer NOT NULL,
    interval_start timestamptz NOT NULL,
    kwh numeric(16,4) NOT NULL CHECK (kwh >= 0),
    quality "char" NOT NULL CHECK (quality IN ('E', 'S', 'F')),
    method smallint NOT NULL,
    item_id bigint NOT NULL REFERENCES review_items (id),
    decided_by text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    previous_kwh numeric(16,4),
    PRIMARY KEY (meter, interval_start)
);

-- The answer is in the field: a site visit.
CREATE TABLE IF NOT EXISTS work_orders (
    id bigserial PRIMARY KEY,
    item_id bigint NOT NULL REFERENCES review_items (id),
    meter_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    assigned_to text,
    due_at timestamptz,
    instructions text NOT NULL,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'cancelled')),
    closed_at timestamptz,
    closed_by text,
    findings text
);
CREATE INDEX IF NOT EXISTS work_orders_open_idx ON work_orders (status, due_at);
