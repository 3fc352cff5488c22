-- ctr_heatmap — CTR by hour of day and day of week (UTC), the data behind a heatmap.
-- Definition: impressions, clicks and clicks / impressions of live campaigns, bucketed by the UTC
--   weekday (1 = Monday … 7 = Sunday) and hour (0–23) of the events.
-- Grain: one row per (weekday, hour) with at least one event, ordered by weekday, hour.
-- Columns: weekday, hour, impressions, clicks, ctr.
-- Edge cases: a bucket with clicks but no impressions has ctr NULL; empty buckets are absent.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH selected_campaign AS (
    SELECT c.id
    FROM live_campaign AS c
    WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
      AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
)
SELECT
    toUInt8(toDayOfWeek(h.hour)) AS weekday,
    toUInt8(toHour(h.hour)) AS hour,
    sum(h.impressions) AS impressions,
    sum(h.clicks) AS clicks,
    if(impressions = 0, NULL, clicks / impressions) AS ctr
FROM campaign_hourly AS h
WHERE h.campaign_id IN (SELECT id FROM selected_campaign)
  AND ({from_date:Nullable(Date)} IS NULL OR toDate(h.hour) >= {from_date:Nullable(Date)})
  AND ({to_date:Nullable(Date)} IS NULL OR toDate(h.hour) <= {to_date:Nullable(Date)})
GROUP BY weekday, hour
HAVING impressions > 0 OR clicks > 0
ORDER BY weekday, hour
