-- daily_impressions_clicks, recomputed by DuckDB from the Parquet snapshots (see daily_impressions_clicks.sql).
WITH selected_campaign AS (
    SELECT c.id
    FROM live_campaign AS c
    WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
      AND ($campaign_id IS NULL OR c.id = $campaign_id)
)
SELECT
    day AS date,
    sum(d.impressions)::UBIGINT AS impressions,
    sum(d.clicks)::UBIGINT AS clicks,
    CASE WHEN sum(d.impressions) = 0 THEN NULL ELSE sum(d.clicks) / sum(d.impressions) END AS ctr
FROM campaign_daily AS d
WHERE d.campaign_id IN (SELECT id FROM selected_campaign)
  AND ($from_date IS NULL OR day >= $from_date)
  AND ($to_date IS NULL OR day <= $to_date)
GROUP BY day
HAVING sum(d.impressions) > 0 OR sum(d.clicks) > 0
ORDER BY date
