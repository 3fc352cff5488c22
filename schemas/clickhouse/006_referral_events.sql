-- Cleaned referral events (no email or ip), mirrored from the staged day partitions.
--
-- * PARTITION BY day: a load replaces each day it touched with the staged day (DROP PARTITION, then
--   insert), so re-loading a file or loading files in any order converges to exactly the staged events.
-- * ORDER BY (customer_id, fired_at, ...): the hourly reports read one customer's events in time order.
-- * DateTime64(6, 'UTC') with Delta + ZSTD on the sorted time column, like the other fact tables.
-- * `non_replicated_deduplication_window`: every insert carries a token unique to its load, so an
--   insert the client resends after a broken connection is dropped, while the next load's insert of
--   the same rows (after its DROP PARTITION) has a token of its own and lands.

CREATE TABLE IF NOT EXISTS referral_events
(
    event_id    String,
    customer_id Int64,
    user_id     Int64,
    fired_at    DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    event_type  LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toDate(fired_at)
ORDER BY (customer_id, fired_at, user_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;
