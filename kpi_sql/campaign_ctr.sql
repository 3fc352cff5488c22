-- campaign_ctr — click-through rate per campaign.
-- Definition: clicks / impressions of each live campaign (latest version, not deleted, whose
--   advertiser is live) over the selected UTC days.
-- Grain: one row per live campaign, ordered by campaign_id.
-- Columns: campaign_id, campaign_name, impressions, clicks, ctr (a fraction 0–1).
-- Edge cases: a campaign with no impressions is listed with 0, 0 and ctr NULL (never a division
--   error); quarantined rows never reached the warehouse, so they are not counted.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH
    selected_campaign AS (
        SELECT c.id, c.name
        FROM live_campaign AS c
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
    ),
    delivery AS (
        SELECT campaign_id, sum(impressions) AS impressions, sum(clicks) AS clicks
        FROM campaign_daily
        WHERE ({from_date:Nullable(Date)} IS NULL OR day >= {from_date:Nullable(Date)})
          AND ({to_date:Nullable(Date)} IS NULL OR day <= {to_date:Nullable(Date)})
        GROUP BY campaign_id
    )
SELECT
    lc.id AS campaign_id,
    lc.name AS campaign_name,
    toUInt64(coalesce(d.impressions, 0)) AS impressions,
    toUInt64(coalesce(d.clicks, 0)) AS clicks,
    if(impressions = 0, NULL, clicks / impressions) AS ctr
FROM selected_campaign AS lc
LEFT JOIN delivery AS d ON d.campaign_id = lc.id
ORDER BY campaign_id
SETTINGS join_use_nulls = 1
