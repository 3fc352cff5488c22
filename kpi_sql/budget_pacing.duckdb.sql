-- budget_pacing, recomputed by DuckDB from the Parquet snapshots (see budget_pacing.sql).
WITH
    params AS (SELECT coalesce($to_date::DATE, current_date) AS as_of),
    selected_campaign AS (
        SELECT c.id, c.name, c.bid, c.budget, c.start_date, c.end_date
        FROM live_campaign AS c
        WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
    ),
    flight_clicks AS (
        SELECT d.campaign_id, sum(d.clicks) AS clicks
        FROM campaign_daily AS d
        JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE d.day >= lc.start_date AND d.day <= least(lc.end_date, (SELECT as_of FROM params))
        GROUP BY d.campaign_id
    ),
    paced AS (
        SELECT
            lc.id AS campaign_id,
            lc.name AS campaign_name,
            lc.bid AS bid,
            lc.budget AS budget,
            coalesce(fc.clicks, 0)::UBIGINT AS clicks,
            CAST(coalesce(fc.clicks, 0) * lc.bid AS DECIMAL(18, 2)) AS spend,
            lc.start_date AS start_date,
            lc.end_date AS end_date,
            (lc.end_date - lc.start_date + 1)::BIGINT AS flight_days,
            greatest(0, least(lc.end_date - lc.start_date + 1, (SELECT as_of FROM params) - lc.start_date + 1))::BIGINT
                AS days_elapsed
        FROM selected_campaign AS lc
        LEFT JOIN flight_clicks AS fc ON fc.campaign_id = lc.id
    )
SELECT
    campaign_id, campaign_name, bid, budget, clicks, spend,
    spend::DOUBLE / budget::DOUBLE AS utilization,
    start_date, end_date, flight_days, days_elapsed,
    flight_days - days_elapsed AS days_remaining,
    CASE WHEN days_elapsed = 0 THEN NULL ELSE spend::DOUBLE / days_elapsed * flight_days END AS projected_spend,
    spend > budget AS over_budget
FROM paced
ORDER BY campaign_id
