-- Pre-aggregated impressions and clicks per campaign, by UTC day and by UTC hour.
--
-- Materialized views fill these tables at insert time, so KPI queries read one row per
-- campaign and day (or hour) instead of every event. SummingMergeTree adds the rows of a key
-- together as parts merge; queries still sum() with GROUP BY, because merging is eventual.
-- Impressions and clicks land in the same table (one view each), so a CTR is one scan.
-- Inserts set deduplicate_blocks_in_dependent_materialized_views = 1: a retried part whose
-- block the base table drops as a duplicate is dropped here too, instead of counted twice.
-- The counts are signed: the retraction views of 008_fact_retractions.sql subtract the old version of every fact
-- updated or deleted in the source, so the sums stay exact without FINAL over the facts.

CREATE TABLE IF NOT EXISTS campaign_daily
(
    campaign_id UInt32,
    day         Date,
    impressions Int64,
    clicks      Int64
)
ENGINE = SummingMergeTree((impressions, clicks))
PARTITION BY toYYYYMM(day)
ORDER BY (campaign_id, day)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;

CREATE TABLE IF NOT EXISTS campaign_hourly
(
    campaign_id UInt32,
    hour        DateTime('UTC'),
    impressions Int64,
    clicks      Int64
)
ENGINE = SummingMergeTree((impressions, clicks))
PARTITION BY toYYYYMM(hour)
ORDER BY (campaign_id, hour)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS impressions_daily_mv TO campaign_daily AS
SELECT campaign_id, toDate(created_at) AS day, count() AS impressions, toUInt64(0) AS clicks
FROM impressions
GROUP BY campaign_id, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_daily_mv TO campaign_daily AS
SELECT campaign_id, toDate(created_at) AS day, toUInt64(0) AS impressions, count() AS clicks
FROM clicks
GROUP BY campaign_id, day;

CREATE MATERIALIZED VIEW IF NOT EXISTS impressions_hourly_mv TO campaign_hourly AS
SELECT campaign_id, toStartOfHour(created_at) AS hour, count() AS impressions, toUInt64(0) AS clicks
FROM impressions
GROUP BY campaign_id, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS clicks_hourly_mv TO campaign_hourly AS
SELECT campaign_id, toStartOfHour(created_at) AS hour, toUInt64(0) AS impressions, count() AS clicks
FROM clicks
GROUP BY campaign_id, hour;
