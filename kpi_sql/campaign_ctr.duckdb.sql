-- campaign_ctr, recomputed by DuckDB from the Parquet snapshots (see campaign_ctr.sql for the definition).
WITH
    selected_campaign AS (
        SELECT c.id, c.name
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
    )
SELECT
    lc.id AS campaign_id,
    lc.name AS campaign_name,
    coalesce(d.impressions, 0)::UBIGINT AS impressions,
    coalesce(d.clicks, 0)::UBIGINT AS clicks,
    CASE WHEN coalesce(d.impressions, 0) = 0 THEN NULL ELSE d.clicks / d.impressions END AS ctr
FROM selected_campaign AS lc
LEFT JOIN delivery AS d ON d.campaign_id = lc.id
ORDER BY campaign_id
