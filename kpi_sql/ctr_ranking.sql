-- ctr_ranking — campaigns ranked by a CTR they can be trusted to have.
-- Definition: campaigns with at least min_impressions impressions (default 100), ranked by the
--   lower bound of the Wilson score 95% interval (z = 1.96) of their CTR, so a 1-of-1 campaign does
--   not outrank a 500-of-10,000 one. wilson_low/high bound the true CTR with 95% confidence.
-- Grain: one row per qualifying live campaign, ordered by rank (ties by campaign_id). The bound is
--   compared to 12 decimals: every campaign without clicks has a bound of 0 up to float rounding, and the
--   rounding differs between engines (DuckDB recomputes this KPI to reconcile), so they tie.
-- Columns: rank, campaign_id, campaign_name, impressions, clicks, ctr, wilson_low, wilson_high.
-- Edge cases: campaigns under the threshold are left out (their CTR is too uncertain to rank). More clicks
--   than impressions in the range (the source does not tie a click to its impression, and counts it on its own
--   day) keep their ctr above 1, and are bounded as a CTR of 1: the interval exists only for 0 to 1.
-- Parameters (all optional): from_date, to_date, advertiser_id, campaign_id, min_impressions.
WITH
    selected_campaign AS (
        SELECT c.id, c.name
        FROM live_campaign AS c
        WHERE ({advertiser_id:Nullable(UInt32)} IS NULL OR c.advertiser_id = {advertiser_id:Nullable(UInt32)})
          AND ({campaign_id:Nullable(UInt32)} IS NULL OR c.id = {campaign_id:Nullable(UInt32)})
    ),
    delivery AS (
        SELECT d.campaign_id, lc.name AS campaign_name, sum(d.impressions) AS n, sum(d.clicks) AS k
        FROM campaign_daily AS d
        INNER JOIN selected_campaign AS lc ON lc.id = d.campaign_id
        WHERE ({from_date:Nullable(Date)} IS NULL OR d.day >= {from_date:Nullable(Date)})
          AND ({to_date:Nullable(Date)} IS NULL OR d.day <= {to_date:Nullable(Date)})
        GROUP BY d.campaign_id, lc.name
        HAVING n >= coalesce({min_impressions:Nullable(UInt64)}, 100) AND n > 0
    ),
    scored AS (
        SELECT
            campaign_id, campaign_name, n AS impressions, k AS clicks,
            k / n AS ctr,
            least(ctr, 1) AS p,
            1.96 * 1.96 AS z2,
            (p + z2 / (2 * n)) / (1 + z2 / n) AS centre,
            1.96 * sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n) AS margin
        FROM delivery
    )
SELECT
    toUInt64(row_number() OVER (ORDER BY round(centre - margin, 12) DESC, campaign_id)) AS rank,
    campaign_id, campaign_name, impressions, clicks, ctr,
    centre - margin AS wilson_low,
    centre + margin AS wilson_high
FROM scored
ORDER BY rank
