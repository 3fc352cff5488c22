-- effective_cpm_cpc, recomputed by DuckDB from the Parquet snapshots (see effective_cpm_cpc.sql).
WITH
    selected_campaign AS (
        SELECT c.id, c.name, c.bid
        FROM live_campaign AS c
        WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
    ),
    delivery AS (
        SELECT campaign_id, sum(impressions) AS impressions, sum(clicks) AS clicks
        FROM campaign_daily
        WHERE ($from_date IS NULL OR day >= $from_date)
          AND ($to_date IS NULL OR day <= $to_date)
        GROUP BY campaign_id
    ),
    priced AS (
        SELECT
            lc.id AS campaign_id,
            lc.name AS campaign_name,
            coalesce(d.impressions, 0)::UBIGINT AS impressions,
            coalesce(d.clicks, 0)::UBIGINT AS clicks,
            CAST(coalesce(d.clicks, 0) * lc.bid AS DECIMAL(18, 2)) AS spend
        FROM selected_campaign AS lc
        LEFT JOIN delivery AS d ON d.campaign_id = lc.id
    )
SELECT
    campaign_id, campaign_name, impressions, clicks, spend,
    CASE WHEN impressions = 0 THEN NULL ELSE spend::DOUBLE / impressions * 1000 END AS ecpm,
    CASE WHEN clicks = 0 THEN NULL ELSE spend::DOUBLE / clicks END AS ecpc
FROM priced
ORDER BY campaign_id
