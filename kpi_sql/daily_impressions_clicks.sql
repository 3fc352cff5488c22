-- daily_impressions_clicks — impressions, clicks and CTR per UTC day.
-- Definition: totals over live campaigns (latest version, not deleted, advertiser live) per UTC day.
-- Grain: one row per UTC day that has at least one impression or click, ordered by date.
-- Columns: date, impressions, clicks, ctr (a fraction 0–1).
-- Edge cases: a day with clicks but no impressions (a click just after midnight on an impression
--   just before) is listed with ctr NULL; days without any event are absent; quarantined rows
--   never reached the warehouse.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH selected_campaign AS (
    SELECT c.id
    FROM live_campaign AS c
    WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
      AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
)
SELECT
    day AS date,
    sum(d.impressions) AS impressions,
    sum(d.clicks) AS clicks,
    if(impressions = 0, NULL, clicks / impressions) AS ctr
FROM campaign_daily AS d
WHERE d.campaign_id IN (SELECT id FROM selected_campaign)
  AND ({from_date:Nullable(Date)} IS NULL OR day >= {from_date:Nullable(Date)})
  AND ({to_date:Nullable(Date)} IS NULL OR day <= {to_date:Nullable(Date)})
GROUP BY day
HAVING impressions > 0 OR clicks > 0
ORDER BY date
