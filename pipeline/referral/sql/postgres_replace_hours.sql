-- Replace the reports of the touched (customer, hour) keys. Run in one transaction by
-- pipeline.referral.publish; every value is a bound array parameter:
-- %(key_customers)s / %(key_hours)s: the touched keys, deleted from every table first;
-- %(customer_ids)s, %(hours)s, %(page_loads)s, %(clicks)s, %(unique_user_clicks)s, %(related_clicks)s:
-- the recomputed rows of those keys (hours with a page load or a click).

DELETE FROM referral.page_loads AS t
USING unnest(%(key_customers)s::bigint[], %(key_hours)s::timestamp[]) AS k (customer_id, hour)
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.clicks AS t
USING unnest(%(key_customers)s::bigint[], %(key_hours)s::timestamp[]) AS k (customer_id, hour)
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.unique_user_clicks AS t
USING unnest(%(key_customers)s::bigint[], %(key_hours)s::timestamp[]) AS k (customer_id, hour)
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

DELETE FROM referral.click_through_rate AS t
USING unnest(%(key_customers)s::bigint[], %(key_hours)s::timestamp[]) AS k (customer_id, hour)
WHERE t.customer_id = k.customer_id AND t.hour = k.hour;

INSERT INTO referral.page_loads (customer_id, hour, page_loads)
SELECT customer_id, hour, page_loads
FROM unnest(%(customer_ids)s::bigint[], %(hours)s::timestamp[], %(page_loads)s::integer[]) AS r (customer_id, hour, page_loads)
WHERE page_loads > 0;

INSERT INTO referral.clicks (customer_id, hour, clicks)
SELECT customer_id, hour, clicks
FROM unnest(%(customer_ids)s::bigint[], %(hours)s::timestamp[], %(clicks)s::integer[]) AS r (customer_id, hour, clicks)
WHERE clicks > 0;

INSERT INTO referral.unique_user_clicks (customer_id, hour, unique_user_clicks)
SELECT customer_id, hour, unique_user_clicks
FROM unnest(%(customer_ids)s::bigint[], %(hours)s::timestamp[], %(unique_user_clicks)s::integer[])
    AS r (customer_id, hour, unique_user_clicks)
WHERE unique_user_clicks > 0;

INSERT INTO referral.click_through_rate (customer_id, hour, page_loads, related_clicks, ctr)
SELECT customer_id, hour, page_loads, related_clicks,
       related_clicks::double precision / NULLIF(page_loads, 0)
FROM unnest(%(customer_ids)s::bigint[], %(hours)s::timestamp[], %(page_loads)s::integer[], %(related_clicks)s::integer[])
    AS r (customer_id, hour, page_loads, related_clicks);
