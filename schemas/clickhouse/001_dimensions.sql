-- Dimensions: small, mutable tables mirrored from Postgres.
--
-- ReplacingMergeTree(version, is_deleted): every change in Postgres is written as a new row
-- with a higher `version`; a delete is a row with is_deleted = 1. Queries read the latest
-- version with FINAL (cheap: these tables hold thousands of rows, not billions), so updates
-- and deletes converge without ALTER ... UPDATE mutations.
-- `row_hash` is the hash of the source columns: incremental syncs compare it with the
-- current version to detect updates that leave `updated_at` alone.
-- `non_replicated_deduplication_window` turns on block deduplication, so a part retried with
-- the same insert_deduplication_token is not written twice.

CREATE TABLE IF NOT EXISTS advertiser
(
    id         UInt32,
    name       String,
    updated_at Nullable(DateTime64(6, 'UTC')),
    created_at Nullable(DateTime64(6, 'UTC')),
    row_hash   UInt64,
    version    UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY id
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;

-- Money as Decimal(10,2), exactly the source's NUMERIC(10,2): no float rounding in spend.
-- Campaign names are nearly unique per row, so LowCardinality would not pay here.
CREATE TABLE IF NOT EXISTS campaign
(
    id            UInt32,
    name          String,
    bid           Decimal(10, 2),
    budget        Decimal(10, 2),
    start_date    Nullable(Date),
    end_date      Nullable(Date),
    advertiser_id UInt32,
    updated_at    Nullable(DateTime64(6, 'UTC')),
    created_at    Nullable(DateTime64(6, 'UTC')),
    row_hash      UInt64,
    version       UInt64,
    is_deleted    UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY id
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;
