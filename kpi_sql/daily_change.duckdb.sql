-- daily_change, recomputed by DuckDB from the Parquet snapshots (see daily_change.sql).
WITH
    selected_campaign AS (
        SELECT c.id
        FROM live_campaign AS c
        WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
    ),
    days AS (
        SELECT day, sum(impressions)::BIGINT AS impressions, sum(clicks)::BIGINT AS clicks
        FROM campaign_daily
        WHERE campaign_id IN (SELECT id FROM selected_campaign)
          AND ($from_date IS NULL OR day >= $from_date::DATE - 1)
          AND ($to_date IS NULL OR day <= $to_date)
        GROUP BY day
        HAVING sum(impressions) > 0 OR sum(clicks) > 0
    )
SELECT
    t.day AS date,
    t.impressions AS impressions,
    t.clicks AS clicks,
    CASE WHEN t.impressions = 0 THEN NULL ELSE t.clicks / t.impressions END AS ctr,
    t.impressions - coalesce(y.impressions, 0) AS impressions_change,
    t.clicks - coalesce(y.clicks, 0) AS clicks_change,
    CASE WHEN t.impressions = 0 THEN NULL ELSE t.clicks / t.impressions END
        - CASE WHEN coalesce(y.impressions, 0) = 0 THEN NULL ELSE y.clicks / y.impressions END AS ctr_change
FROM days AS t
LEFT JOIN days AS y ON y.day = t.day - 1
WHERE $from_date IS NULL OR t.day >= $from_date
ORDER BY date
