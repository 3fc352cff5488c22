-- The dimensions as every KPI sees them, defined once: the latest version of each row (FINAL collapses
-- ReplacingMergeTree versions at read time — thousands of rows, so it is cheap), deleted rows left out,
-- and a campaign only while its advertiser is live. Views follow table names, so after a full sync swaps
-- the tables they read the new ones. OR REPLACE: a changed definition reaches existing warehouses.

CREATE OR REPLACE VIEW live_advertiser AS
SELECT id, name
FROM advertiser FINAL
WHERE is_deleted = 0;

CREATE OR REPLACE VIEW live_campaign AS
SELECT id, name, bid, budget, start_date, end_date, advertiser_id
FROM campaign FINAL
WHERE is_deleted = 0
  AND advertiser_id IN (SELECT id FROM live_advertiser);
