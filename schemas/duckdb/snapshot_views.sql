-- The warehouse, rebuilt as DuckDB views over the committed Parquet snapshot (pipeline.analytics.reconcile).
-- Python first creates staged_<table>: every staged row of each source table and of each fact's retractions
-- (staged_<fact>_retracted), read from their Parquet files.
-- Then these views give each table the name and the rows the warehouse shows, so the KPIs' DuckDB twins
-- (kpi_sql/*.duckdb.sql) read the same relations as the ClickHouse queries.

-- The live-row rule of schemas/clickhouse/007_live_dimensions.sql (current_*): the latest version of each id,
-- deleted rows left out.
CREATE VIEW advertiser AS
SELECT * EXCLUDE (row_hash, version, is_deleted, _rank) FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) AS _rank
    FROM staged_advertiser
) WHERE _rank = 1 AND is_deleted = 0;

CREATE VIEW campaign AS
SELECT * EXCLUDE (row_hash, version, is_deleted, _rank) FROM (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) AS _rank
    FROM staged_campaign
) WHERE _rank = 1 AND is_deleted = 0;

-- Facts: every version staged, less the versions later runs retracted (updated or deleted in the source). A
-- multiset difference: a row changed and changed back has two staged versions and one retraction of it.
CREATE VIEW impressions AS
SELECT id, campaign_id, created_at FROM staged_impressions
EXCEPT ALL
SELECT id, campaign_id, created_at FROM staged_impressions_retracted;

CREATE VIEW clicks AS
SELECT id, campaign_id, created_at FROM staged_clicks
EXCEPT ALL
SELECT id, campaign_id, created_at FROM staged_clicks_retracted;

-- live_*: as in ClickHouse, a campaign only while its advertiser is live.
CREATE VIEW live_advertiser AS SELECT id, name FROM advertiser;

CREATE VIEW live_campaign AS
SELECT id, name, bid, budget, start_date, end_date, advertiser_id
FROM campaign
WHERE advertiser_id IN (SELECT id FROM live_advertiser);

-- The aggregates the materialized views of schemas/clickhouse/003_aggregates.sql fill, computed from the facts.
CREATE VIEW campaign_daily AS
SELECT campaign_id, CAST(created_at AS DATE) AS day, sum(impressions)::UBIGINT AS impressions,
       sum(clicks)::UBIGINT AS clicks
FROM (
    SELECT campaign_id, created_at, 1 AS impressions, 0 AS clicks FROM impressions
    UNION ALL
    SELECT campaign_id, created_at, 0 AS impressions, 1 AS clicks FROM clicks
)
GROUP BY ALL;

CREATE VIEW campaign_hourly AS
SELECT campaign_id, date_trunc('hour', created_at) AS hour, sum(impressions)::UBIGINT AS impressions,
       sum(clicks)::UBIGINT AS clicks
FROM (
    SELECT campaign_id, created_at, 1 AS impressions, 0 AS clicks FROM impressions
    UNION ALL
    SELECT campaign_id, created_at, 0 AS impressions, 1 AS clicks FROM clicks
)
GROUP BY ALL;
