-- Intervals billing could not price (no tariff version in force then, tariff not loaded):
-- kept here with the reason instead of blocking the meter's other intervals. Touching the
-- interval again (a new change_id) after fixing the tariff charges it.
CREATE TABLE billing_unbilled (
    meter_id        text NOT NULL,
    interval_start  timestamptz NOT NULL,
    change_id       bigint NOT NULL,
    account_id      text NOT NULL,
    reason          text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, interval_start)
);
