-- effective_cpm_cpc — what a thousand impressions and a click cost, per campaign.
-- Definition: spend = clicks × bid (CPC model); eCPM = spend / impressions × 1000;
--   eCPC = spend / clicks (equal to the bid under pure CPC pricing; shown to compare models).
-- Grain: one row per live campaign, ordered by campaign_id.
-- Columns: campaign_id, campaign_name, impressions, clicks, spend, ecpm, ecpc.
-- Edge cases: no impressions → ecpm NULL; no clicks → ecpc NULL.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH
    selected_campaign AS (
        SELECT c.id, c.name, c.bid
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
    CAST(clicks * lc.bid AS Decimal(18, 2)) AS spend,
    if(impressions = 0, NULL, toFloat64(spend) / impressions * 1000) AS ecpm,
    if(clicks = 0, NULL, toFloat64(spend) / clicks) AS ecpc
FROM selected_campaign AS lc
LEFT JOIN delivery AS d ON d.campaign_id = lc.id
ORDER BY campaign_id
SETTINGS join_use_nulls = 1
