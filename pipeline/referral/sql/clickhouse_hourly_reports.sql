-- The hourly referral reports computed by ClickHouse from `referral_events`, independently of the Polars
-- code, to reconcile with what a load wrote to Postgres. Parameters: {window:UInt32} (seconds),
-- {horizon:UInt32} (seconds an event_id link may span). One row per customer and hour with a page load
-- or a click; the columns of pipeline.referral.report.HOURLY_SCHEMA.

WITH
    loads AS (
        SELECT customer_id, user_id, event_id, fired_at FROM referral_events WHERE event_type = 'ReferralPageLoad'
    ),
    clicks AS (
        SELECT customer_id, user_id, event_id, fired_at FROM referral_events
        WHERE event_type = 'ReferralRecommendClick'
    ),
    click_related AS (
        SELECT c.customer_id AS customer_id,
               toStartOfHour(c.fired_at) AS hour,
               max(ifNull(
                   l.fired_at <= c.fired_at
                   AND (l.fired_at >= c.fired_at - toIntervalSecond({window:UInt32})
                        OR (l.event_id = c.event_id AND l.fired_at >= c.fired_at - toIntervalSecond({horizon:UInt32}))),
                   0)) AS related
        FROM clicks AS c
        LEFT JOIN loads AS l ON l.customer_id = c.customer_id AND l.user_id = c.user_id
        GROUP BY c.customer_id, c.user_id, c.event_id, c.fired_at
    ),
    related_per_hour AS (
        SELECT customer_id, hour, sum(related) AS related_clicks FROM click_related GROUP BY customer_id, hour
    ),
    counts AS (
        SELECT customer_id,
               toStartOfHour(fired_at) AS hour,
               countIf(event_type = 'ReferralPageLoad') AS page_loads,
               countIf(event_type = 'ReferralRecommendClick') AS clicks,
               uniqExactIf(user_id, event_type = 'ReferralRecommendClick') AS unique_user_clicks
        FROM referral_events
        GROUP BY customer_id, hour
        HAVING page_loads > 0 OR clicks > 0
    )
SELECT counts.customer_id AS customer_id,
       counts.hour AS hour,
       counts.page_loads AS page_loads,
       counts.clicks AS clicks,
       counts.unique_user_clicks AS unique_user_clicks,
       ifNull(related_per_hour.related_clicks, 0) AS related_clicks
FROM counts
LEFT JOIN related_per_hour ON related_per_hour.customer_id = counts.customer_id AND related_per_hour.hour = counts.hour
ORDER BY customer_id, hour
SETTINGS join_use_nulls = 1
