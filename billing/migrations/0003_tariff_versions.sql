-- Tariff versions as first seen by an engine: a version that has taken effect may not be
-- edited afterwards, and a new version may not start in the past (no retroactive change).
CREATE TABLE billing_tariff_versions (
    tariff_id       text NOT NULL,
    effective       date NOT NULL,
    digest          text NOT NULL,           -- sha256 of the version's canonical content
    first_seen      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tariff_id, effective)
);
