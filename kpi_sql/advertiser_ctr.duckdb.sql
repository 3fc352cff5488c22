-- advertiser_ctr, recomputed by DuckDB from the Parquet snapshots (see advertiser_ctr.sql).
WITH
    selected_advertiser AS (
        SELECT id, name FROM live_advertiser WHERE ($advertiser_id IS NULL OR id = $advertiser_id)
    ),
    delivery AS (
        SELECT c.advertiser_id, sum(d.impressions) AS impressions, sum(d.clicks) AS clicks
        FROM campaign_daily AS d
        JOIN live_campaign AS c ON c.id = d.campaign_id
        WHERE ($from_date IS NULL OR d.day >= $from_date)
          AND ($to_date IS NULL OR d.day <= $to_date)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
        GROUP BY c.advertiser_id
    )
SELECT
    la.id AS advertiser_id,
    la.name AS advertiser_name,
    coalesce(d.impressions, 0)::UBIGINT AS impressions,
    coalesce(d.clicks, 0)::UBIGINT AS clicks,
    CASE WHEN coalesce(d.impressions, 0) = 0 THEN NULL ELSE d.clicks / d.impressions END AS ctr
FROM selected_advertiser AS la
LEFT JOIN delivery AS d ON d.advertiser_id = la.id
ORDER BY advertiser_id
