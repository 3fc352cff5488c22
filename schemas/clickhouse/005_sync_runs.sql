-- One row per sync run and table: what was read, loaded and quarantined, and how it ended.
--
-- A run writes its row as `running` when it starts and again when it ends; the newest
-- `updated_at` wins (ReplacingMergeTree). A run killed mid-way stays `running` until the next
-- sync settles it as `recovered` (it loads what the run had published) or `interrupted`.
-- This table is history: a full sync never replaces it.
--
-- The cleanup settings (here and on every table): the engine deletes the parts merged away, and the patch parts of
-- deletes once applied, in a pass it runs as a table starts and then every second. By default that pass does nothing
-- at the start (merge_tree_clear_old_parts_interval_seconds) and comes back 30 s later plus up to 10 s at random.
-- An embedded engine lives only as long as its `adpipe` process, usually shorter than that: with the defaults, a home
-- that syncs every minute kept every merged-away part of this table and every patch part of the facts, and each
-- process spent longer loading them when it opened the engine (docs/performance.md, Change capture).

CREATE TABLE IF NOT EXISTS sync_runs
(
    run_id           String,
    table_name       LowCardinality(String),
    mode             LowCardinality(String),
    rows_extracted   UInt64,
    rows_loaded      UInt64,
    rows_quarantined UInt64,
    min_id           Nullable(Int64),
    max_id           Nullable(Int64),
    started_at       DateTime64(6, 'UTC'),
    finished_at      Nullable(DateTime64(6, 'UTC')),
    status           LowCardinality(String),
    error            Nullable(String),
    updated_at       DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (run_id, table_name)
SETTINGS cleanup_delay_period = 1, max_cleanup_delay_period = 1, cleanup_delay_period_random_add = 0, merge_tree_clear_old_parts_interval_seconds = 0;
