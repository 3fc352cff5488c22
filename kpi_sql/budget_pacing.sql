-- budget_pacing — spend against budget under the CPC model, and where the flight is heading.
-- Definition: spend = clicks × bid (CPC pricing), counted over the flight up to the as-of day
--   (to_date if given, else today, UTC); utilization = spend / budget; projected spend at the end
--   of the flight = spend / days elapsed × flight days (a straight line from the pace so far).
-- Grain: one row per live campaign, ordered by campaign_id.
-- Columns: campaign_id, campaign_name, bid, budget, clicks, spend, utilization, start_date, end_date,
--   flight_days, days_elapsed, days_remaining, projected_spend, over_budget.
-- Edge cases: a campaign whose flight has not started, or has no dates, has days_elapsed 0 and
--   projected_spend NULL; days_elapsed is capped at the flight length; over_budget is spend > budget;
--   from_date is ignored here (pacing always counts from the flight start).
-- Parameters (all optional): to_date (the as-of day), advertiser_id, campaign_id.
WITH
    params AS (SELECT coalesce({to_date:Nullable(Date)}, toDate(now('UTC'))) AS as_of),
    selected_campaign AS (
        SELECT c.id, c.name, c.bid, c.budget, c.start_date, c.end_date
        FROM live_campaign AS c
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
    ),
    flight_clicks AS (
        SELECT d.campaign_id, sum(d.clicks) AS clicks
        FROM campaign_daily AS d
        INNER JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE d.day >= lc.start_date AND d.day <= least(lc.end_date, (SELECT as_of FROM params))
        GROUP BY d.campaign_id
    ),
    paced AS (
        SELECT
            lc.id AS campaign_id,
            lc.name AS campaign_name,
            lc.bid AS bid,
            lc.budget AS budget,
            toUInt64(coalesce(fc.clicks, 0)) AS clicks,
            CAST(clicks * lc.bid AS Decimal(18, 2)) AS spend,
            lc.start_date AS start_date,
            lc.end_date AS end_date,
            toInt64(dateDiff('day', lc.start_date, lc.end_date) + 1) AS flight_days,
            toInt64(greatest(0, least(flight_days, dateDiff('day', lc.start_date, (SELECT as_of FROM params)) + 1)))
                AS days_elapsed
        FROM selected_campaign AS lc
        LEFT JOIN flight_clicks AS fc ON fc.campaign_id = lc.id
        SETTINGS join_use_nulls = 1
    )
SELECT
    campaign_id, campaign_name, bid, budget, clicks, spend,
    toFloat64(spend) / toFloat64(budget) AS utilization,
    start_date, end_date, flight_days, days_elapsed,
    flight_days - days_elapsed AS days_remaining,
    if(days_elapsed = 0, NULL, toFloat64(spend) / days_elapsed * flight_days) AS projected_spend,
    toBool(spend > budget) AS over_budget
FROM paced
ORDER BY campaign_id
