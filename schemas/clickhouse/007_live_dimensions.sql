-- The dimensions as every reader sees them, defined once.
-- current_*: the live-row rule — the latest version of each row (FINAL collapses ReplacingMergeTree versions at
--   read time; thousands of rows, so it is cheap), deleted rows left out. One row per id, as in the source now:
--   what `status` and `reconcile` count (pipeline.catalog.live_rows).
-- live_*: what the KPIs join — the current rows, and a campaign only while its advertiser is live.
-- Views follow table names, so after a full sync swaps the tables they read the new ones. OR REPLACE: a changed
-- definition reaches existing warehouses.

CREATE OR REPLACE VIEW current_advertiser AS
SELECT id, name, updated_at, created_at
FROM advertiser FINAL
WHERE is_deleted = 0;

CREATE OR REPLACE VIEW current_campaign AS
SELECT id, name, bid, budget, start_date, end_date, advertiser_id, updated_at, created_at
FROM campaign FINAL
WHERE is_deleted = 0;

CREATE OR REPLACE VIEW live_advertiser AS
SELECT id, name
FROM current_advertiser;

CREATE OR REPLACE VIEW live_campaign AS
SELECT id, name, bid, budget, start_date, end_date, advertiser_id
FROM current_campaign
WHERE advertiser_id IN (SELECT id FROM live_advertiser);
