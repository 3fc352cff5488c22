-- ctr_heatmap, recomputed by DuckDB from the Parquet snapshots (see ctr_heatmap.sql).
WITH selected_campaign AS (
    SELECT c.id
    FROM live_campaign AS c
    WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
      AND ($campaign_id IS NULL OR c.id = $campaign_id)
)
SELECT
    isodow(h.hour)::UTINYINT AS weekday,
    hour(h.hour)::UTINYINT AS hour,
    sum(h.impressions)::UBIGINT AS impressions,
    sum(h.clicks)::UBIGINT AS clicks,
    CASE WHEN sum(h.impressions) = 0 THEN NULL ELSE sum(h.clicks) / sum(h.impressions) END AS ctr
FROM campaign_hourly AS h
WHERE h.campaign_id IN (SELECT id FROM selected_campaign)
  AND ($from_date IS NULL OR CAST(h.hour AS DATE) >= $from_date)
  AND ($to_date IS NULL OR CAST(h.hour AS DATE) <= $to_date)
GROUP BY ALL
HAVING sum(h.impressions) > 0 OR sum(h.clicks) > 0
ORDER BY weekday, hour
