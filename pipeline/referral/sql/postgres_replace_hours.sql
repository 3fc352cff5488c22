-- Replace the reports of the touched (customer, hour) keys, in one transaction, run by
-- pipeline.referral.publish.write_reports. The two COPY statements receive, in this order, the touched
-- keys and the recomputed rows of those keys (CSV from Polars); no value is spliced into the SQL.

CREATE TEMPORARY TABLE referral_touched (customer_id BIGINT, hour TIMESTAMP) ON COMMIT DROP;

CREATE TEMPORARY TABLE referral_hourly (
    customer_id BIGINT, hour TIMESTAMP, page_loads INTEGER, clicks INTEGER, unique_user_clicks INTEGER,
    related_clicks INTEGER
) ON COMMIT DROP;

COPY referral_touched (customer_id, hour) FROM STDIN (FORMAT csv);

COPY referral_hourly (customer_id, hour, page_loads, clicks, unique_user_clicks, related_clicks)
FROM STDIN (FORMAT csv);

DELETE FROM referral.page_loads AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.clicks AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.unique_user_clicks AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.click_through_rate AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

INSERT INTO referral.page_loads (customer_id, hour, page_loads)
SELECT customer_id, hour, page_loads FROM referral_hourly WHERE page_loads > 0;

INSERT INTO referral.clicks (customer_id, hour, clicks)
SELECT customer_id, hour, clicks FROM referral_hourly WHERE clicks > 0;

INSERT INTO referral.unique_user_clicks (customer_id, hour, unique_user_clicks)
SELECT customer_id, hour, unique_user_clicks FROM referral_hourly WHERE unique_user_clicks > 0;

-- ctr is NULL in an hour without page loads.
INSERT INTO referral.click_through_rate (customer_id, hour, page_loads, related_clicks, ctr)
SELECT customer_id, hour, page_loads, related_clicks, related_clicks::double precision / NULLIF(page_loads, 0)
FROM referral_hourly;
