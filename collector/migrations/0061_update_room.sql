-- Room on each page for the rows ingest updates every batch (issue 14, whole-database
-- growth): `meters` (last_seen, per batch) and `vee_dirty` (a mark per batch). With full
-- pages every update put its new row version on another page, and a day of 2,000 meters grew
-- them by ~23 bytes per reading (bench/storage_space.py: meters 14.6, vee_dirty 8.5); with
-- half of each page free the updates stay on their page (HOT) and prune the old versions
-- there (2.2 and 1.5). Applies to pages written from now on; no rewrite, no downtime.
ALTER TABLE meters SET (fillfactor = 50);
ALTER TABLE vee_dirty SET (fillfactor = 50);
