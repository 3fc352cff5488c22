-- flight_delivery, recomputed by DuckDB from the Parquet snapshots (see flight_delivery.sql).
WITH
    params AS (SELECT coalesce($to_date::DATE, current_date) AS as_of),
    selected_campaign AS (
        SELECT c.id, c.name, c.start_date, c.end_date
        FROM live_campaign AS c
        WHERE ($advertiser_id IS NULL OR c.advertiser_id = $advertiser_id)
          AND ($campaign_id IS NULL OR c.id = $campaign_id)
    ),
    delivery AS (
        SELECT
            d.campaign_id,
            sum(d.impressions) FILTER (WHERE d.day >= lc.start_date AND d.day <= lc.end_date) AS in_flight,
            sum(d.impressions) FILTER (WHERE d.day > lc.end_date) AS after_end,
            sum(d.impressions) FILTER (WHERE d.day >= (SELECT as_of FROM params) - 1) AS last_2_days
        FROM campaign_daily AS d
        JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE d.day <= (SELECT as_of FROM params)
        GROUP BY d.campaign_id
    ),
    flagged AS (
        SELECT
            lc.id AS campaign_id,
            lc.name AS campaign_name,
            lc.start_date AS start_date,
            lc.end_date AS end_date,
            CASE
                WHEN (SELECT as_of FROM params) < lc.start_date THEN 'not started'
                WHEN (SELECT as_of FROM params) > lc.end_date THEN 'ended'
                ELSE 'active'
            END AS status,
            coalesce(d.in_flight, 0)::UBIGINT AS impressions_in_flight,
            coalesce(d.after_end, 0)::UBIGINT AS impressions_after_end,
            coalesce(d.last_2_days, 0)::UBIGINT AS impressions_last_2_days
        FROM selected_campaign AS lc
        LEFT JOIN delivery AS d ON d.campaign_id = lc.id
    )
SELECT
    *,
    status = 'ended' AND impressions_after_end > 0 AS ended_but_delivering,
    status = 'active' AND impressions_last_2_days = 0 AS active_but_silent
FROM flagged
ORDER BY campaign_id
