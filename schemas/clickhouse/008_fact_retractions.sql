-- Retractions: the old versions of facts that were updated or deleted in the source (change capture,
-- docs/change-capture.md).
--
-- A run that finds a fact changed stages the version the warehouse holds as a retraction and the source's
-- version (if the row is still there and valid) as an ordinary fact row. Loading the retraction:
-- * its materialized views feed the aggregates with the opposite sign, so campaign_daily and campaign_hourly
--   stay exact, and a row moved to another day, month or campaign leaves nothing behind at the old place;
-- * the load then deletes the same versions from the fact table (pipeline/sync/load.py: `delete_retracted`),
--   matched on every column, so a retried load never deletes the new version of the row.
-- `run_id` names the run that retracted the version: the delete reads only its own run's rows, and the table is
-- the audit trail of every change. Monthly partitions like the facts: old months go together.

CREATE TABLE IF NOT EXISTS impressions_retracted
(
    id          UInt64,
    campaign_id UInt32,
    created_at  DateTime64(6, 'UTC'),
    run_id      LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (run_id, campaign_id, created_at, id)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;

CREATE TABLE IF NOT EXISTS clicks_retracted
(
    id          UInt64,
    campaign_id UInt32,
    created_at  DateTime64(6, 'UTC'),
    run_id      LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (run_id, campaign_id, created_at, id)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS impressions_retracted_daily_mv TO campaign_daily AS
SELECT campaign_id, toDate(created_at) AS day, -toInt64(count()) AS impressions, toInt64(0) AS clicks
FROM impressions_retracted
GROUP BY campaign_id, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_retracted_daily_mv TO campaign_daily AS
SELECT campaign_id, toDate(created_at) AS day, toInt64(0) AS impressions, -toInt64(count()) AS clicks
FROM clicks_retracted
GROUP BY campaign_id, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS impressions_retracted_hourly_mv TO campaign_hourly AS
SELECT campaign_id, toStartOfHour(created_at) AS hour, -toInt64(count()) AS impressions, toInt64(0) AS clicks
FROM impressions_retracted
GROUP BY campaign_id, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_retracted_hourly_mv TO campaign_hourly AS
SELECT campaign_id, toStartOfHour(created_at) AS hour, toInt64(0) AS impressions, -toInt64(count()) AS clicks
FROM clicks_retracted
GROUP BY campaign_id, hour;
