-- advertiser_ctr — click-through rate per advertiser.
-- Definition: clicks / impressions over all live campaigns of each live advertiser (latest
--   version, not deleted) in the selected UTC days.
-- Grain: one row per live advertiser, ordered by advertiser_id.
-- Columns: advertiser_id, advertiser_name, impressions, clicks, ctr (a fraction 0–1).
-- Edge cases: an advertiser with no campaigns or no impressions is listed with 0, 0 and ctr NULL;
--   a deleted advertiser is absent.
-- Parameters (all optional, NULL = no filter): from_date, to_date, advertiser_id, campaign_id.
WITH
    selected_advertiser AS (
        SELECT id, name
        FROM live_advertiser
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR id = {advertiser_id:Nullable(UInt32)})
    ),
    delivery AS (
        SELECT c.advertiser_id, sum(d.impressions) AS impressions, sum(d.clicks) AS clicks
        FROM campaign_daily AS d
        INNER JOIN live_campaign AS c ON c.id = d.campaign_id
        WHERE ({from_date:Nullable(Date)} IS NULL OR d.day >= {from_date:Nullable(Date)})
          AND ({to_date:Nullable(Date)} IS NULL OR d.day <= {to_date:Nullable(Date)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
        GROUP BY c.advertiser_id
    )
SELECT
    la.id AS advertiser_id,
    la.name AS advertiser_name,
    toUInt64(coalesce(d.impressions, 0)) AS impressions,
    toUInt64(coalesce(d.clicks, 0)) AS clicks,
    if(impressions = 0, NULL, clicks / impressions) AS ctr
FROM selected_advertiser AS la
LEFT JOIN delivery AS d ON d.advertiser_id = la.id
ORDER BY advertiser_id
SETTINGS join_use_nulls = 1
