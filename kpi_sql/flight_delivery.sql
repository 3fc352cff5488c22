-- flight_delivery — is each campaign delivering when its flight says it should?
-- Definition: status on the as-of day (to_date if given, else today, UTC): 'not started' before
--   start_date, 'ended' after end_date, else 'active'. Flags: ended_but_delivering — ended, yet
--   impressions after end_date; active_but_silent — active, yet no impression on the as-of day
--   or the day before.
-- Grain: one row per live campaign, ordered by campaign_id.
-- Columns: campaign_id, campaign_name, start_date, end_date, status, impressions_in_flight,
--   impressions_after_end, impressions_last_2_days, ended_but_delivering, active_but_silent.
-- Edge cases: a campaign without flight dates is 'active' (it never starts or ends); events up to
--   the as-of day count, later ones are ignored.
-- Parameters (all optional): to_date (the as-of day), advertiser_id, campaign_id.
WITH
    params AS (SELECT coalesce({to_date:Nullable(Date)}, toDate(now('UTC'))) AS as_of),
    selected_campaign AS (
        SELECT c.id, c.name, c.start_date, c.end_date
        FROM live_campaign AS c
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
    ),
    delivery AS (
        SELECT
            d.campaign_id,
            sumIf(d.impressions, d.day >= lc.start_date AND d.day <= lc.end_date) AS in_flight,
            sumIf(d.impressions, d.day > lc.end_date) AS after_end,
            sumIf(d.impressions, d.day >= (SELECT as_of FROM params) - 1) AS last_2_days
        FROM campaign_daily AS d
        INNER JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE d.day <= (SELECT as_of FROM params)
        GROUP BY d.campaign_id
    )
SELECT
    lc.id AS campaign_id,
    lc.name AS campaign_name,
    lc.start_date AS start_date,
    lc.end_date AS end_date,
    multiIf(
        (SELECT as_of FROM params) < lc.start_date, 'not started',
        (SELECT as_of FROM params) > lc.end_date, 'ended',
        'active'
    ) AS status,
    toUInt64(coalesce(d.in_flight, 0)) AS impressions_in_flight,
    toUInt64(coalesce(d.after_end, 0)) AS impressions_after_end,
    toUInt64(coalesce(d.last_2_days, 0)) AS impressions_last_2_days,
    toBool(status = 'ended' AND impressions_after_end > 0) AS ended_but_delivering,
    toBool(status = 'active' AND impressions_last_2_days = 0) AS active_but_silent
FROM selected_campaign AS lc
LEFT JOIN delivery AS d ON d.campaign_id = lc.id
ORDER BY campaign_id
SETTINGS join_use_nulls = 1
