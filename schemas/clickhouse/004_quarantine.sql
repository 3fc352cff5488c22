-- Rows that failed validation, with the reason, so nothing is dropped silently.
--
-- One row per (source table, source id, reason). ReplacingMergeTree(version, is_resolved):
-- a dimension row that is still invalid on the next sync collapses onto its earlier entry,
-- and one that was fixed in Postgres gets an is_resolved = 1 version, which FINAL hides.
-- `row` keeps the source row as JSON for the audit.

CREATE TABLE IF NOT EXISTS quarantine
(
    table_name  LowCardinality(String),
    source_id   Int64,
    reason      LowCardinality(String),
    row         String,
    version     UInt64,
    is_resolved UInt8
)
ENGINE = ReplacingMergeTree(version, is_resolved)
ORDER BY (table_name, source_id, reason)
SETTINGS non_replicated_deduplication_window = 10000, cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;
