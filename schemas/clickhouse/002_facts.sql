-- Facts: append-only event tables, the large ones.
--
-- * Monthly partitions: old months can be dropped or moved whole, and a date range only
--   opens the partitions it covers.
-- * ORDER BY (campaign_id, created_at, id): a campaign's events are contiguous and in time
--   order, so per-campaign and per-campaign-per-day reads touch few granules; `id` last makes
--   the order total. Reads by day across all campaigns are served by the aggregates instead.
-- * DateTime64(6, 'UTC'): the source's microseconds, with the time zone stated (the source
--   timestamps are WITHOUT TIME ZONE and hold UTC).
-- * Codecs: created_at is sorted within a campaign, so Delta turns it into small numbers that
--   ZSTD packs tightly; ids are near-sequential within a campaign, so Delta pays there too.
-- * `id` is the source primary key, kept for audits, reconciliation and incremental sync.
-- * Block number and offset columns: a fact updated or deleted in the source is deleted here by a lightweight
--   delete written as a small patch part (lightweight_delete_mode = 'lightweight_update', pipeline/sync/load.py),
--   instead of rewriting the row mask of every part it touches.

CREATE TABLE IF NOT EXISTS impressions
(
    id          UInt64 CODEC(Delta, ZSTD(1)),
    campaign_id UInt32,
    created_at  DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (campaign_id, created_at, id)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0, enable_block_number_column = 1, enable_block_offset_column = 1;

CREATE TABLE IF NOT EXISTS clicks
(
    id          UInt64 CODEC(Delta, ZSTD(1)),
    campaign_id UInt32,
    created_at  DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (campaign_id, created_at, id)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0, enable_block_number_column = 1, enable_block_offset_column = 1;
