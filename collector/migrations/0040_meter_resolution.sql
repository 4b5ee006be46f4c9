-- What a meter's energy register can resolve (issue 17 item 3): validation judges consumption
-- against one register step = register_resolution_kwh x ct_ratio (collector/vee/resolution.py).
-- NULL: not declared; the step is then inferred from the meter's reads, else the default
-- (ValidationConfig.register_step_kwh, 0.01 kWh).
ALTER TABLE meters ADD COLUMN IF NOT EXISTS register_resolution_kwh double precision
    CHECK (register_resolution_kwh > 0);
ALTER TABLE meters ADD COLUMN IF NOT EXISTS ct_ratio double precision CHECK (ct_ratio >= 1);
