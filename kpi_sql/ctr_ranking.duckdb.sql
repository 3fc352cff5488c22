-- ctr_ranking, recomputed by DuckDB from the Parquet snapshots (see ctr_ranking.sql).
WITH
    selected_campaign AS (
        SELECT c.id, c.name
        FROM live_campaign AS c
        WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
    ),
    delivery AS (
        SELECT d.campaign_id, lc.name AS campaign_name, sum(d.impressions) AS n, sum(d.clicks) AS k
        FROM campaign_daily AS d
        JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE ($from_date IS NULL OR d.day >= $from_date)
          AND ($to_date IS NULL OR d.day <= $to_date)
        GROUP BY d.campaign_id, lc.name
        HAVING sum(d.impressions) >= coalesce($min_impressions, 100) AND sum(d.impressions) > 0
    ),
    scored AS (
        SELECT
            campaign_id, campaign_name, n::UBIGINT AS impressions, k::UBIGINT AS clicks,
            k / n AS ctr,
            (least(k / n, 1) + 1.96 * 1.96 / (2 * n)) / (1 + 1.96 * 1.96 / n) AS centre,
            1.96 * sqrt(least(k / n, 1) * (1 - least(k / n, 1)) / n + 1.96 * 1.96 / (4 * n * n))
                / (1 + 1.96 * 1.96 / n) AS margin
        FROM delivery
    )
SELECT
    (row_number() OVER (ORDER BY round(centre - margin, 12) DESC, campaign_id))::UBIGINT AS rank,
    campaign_id, campaign_name, impressions, clicks, ctr,
    centre - margin AS wilson_low,
    centre + margin AS wilson_high
FROM scored
ORDER BY rank
