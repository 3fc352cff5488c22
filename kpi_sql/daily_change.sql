-- daily_change — day-over-day change of impressions, clicks and CTR.
-- Definition: for each UTC day with events (live campaigns), the change against the calendar day
--   before: impressions_change and clicks_change as differences, ctr_change in CTR points (fraction).
-- Grain: one row per UTC day with an impression or a click, ordered by date.
-- Columns: date, impressions, clicks, ctr, impressions_change, clicks_change, ctr_change.
-- Edge cases: the first day, and a day after a day without events, compare with zero impressions and
--   clicks (so the change equals the day's totals) and have ctr_change NULL; ctr is NULL without
--   impressions, and ctr_change is NULL when either day's ctr is.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH
    selected_campaign AS (
        SELECT c.id
        FROM live_campaign AS c
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
    ),
    days AS (
        SELECT day, toInt64(sum(impressions)) AS impressions, toInt64(sum(clicks)) AS clicks
        FROM campaign_daily
        WHERE campaign_id IN (SELECT id FROM selected_campaign)
          AND ({from_date:Nullable(Date)} IS NULL OR day >= {from_date:Nullable(Date)} - 1)
          AND ({to_date:Nullable(Date)} IS NULL OR day <= {to_date:Nullable(Date)})
        GROUP BY day
        HAVING impressions > 0 OR clicks > 0
    )
SELECT
    t.day AS date,
    t.impressions AS impressions,
    t.clicks AS clicks,
    if(t.impressions = 0, NULL, t.clicks / t.impressions) AS ctr,
    t.impressions - coalesce(y.impressions, 0) AS impressions_change,
    t.clicks - coalesce(y.clicks, 0) AS clicks_change,
    ctr - if(coalesce(y.impressions, 0) = 0, NULL, y.clicks / y.impressions) AS ctr_change
FROM days AS t
LEFT JOIN days AS y ON y.day = t.day - 1
WHERE {from_date:Nullable(Date)} IS NULL OR t.day >= {from_date:Nullable(Date)}
ORDER BY date
SETTINGS join_use_nulls = 1
