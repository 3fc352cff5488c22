-- Replace the reports of the touched (customer, hour) keys, in one transaction, run by
-- pipeline.referral.publish.write_reports. The COPY statements receive, in this order, the touched keys,
-- then the new rows of each report table (CSV from Polars); no value is spliced into the SQL.
-- The rows go straight into the tables: COPY inserts in batches, about a third faster than INSERT ... SELECT.

CREATE TEMPORARY TABLE referral_touched (customer_id BIGINT, hour TIMESTAMP) ON COMMIT DROP;

COPY referral_touched (customer_id, hour) FROM STDIN (FORMAT csv);

DELETE FROM referral.page_loads AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.clicks AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.unique_user_clicks AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.click_through_rate AS t USING referral_touched AS k
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

COPY referral.page_loads (customer_id, hour, page_loads) FROM STDIN (FORMAT csv);

COPY referral.clicks (customer_id, hour, clicks) FROM STDIN (FORMAT csv);

COPY referral.unique_user_clicks (customer_id, hour, unique_user_clicks) FROM STDIN (FORMAT csv);

-- ctr arrives NULL (an empty field) in an hour without page loads.
COPY referral.click_through_rate (customer_id, hour, page_loads, related_clicks, ctr) FROM STDIN (FORMAT csv);

-- Inside a caller's transaction, ON COMMIT would wait for the caller's commit: a second call would find the table.
DROP TABLE referral_touched;
