-- `adpipe events report`: the four reports side by side, one row per customer and hour.
-- click_through_rate has a row for every hour with a page load or a click, so it drives the join.
-- Filters are bound parameters; NULL means "no filter". %(to)s is exclusive.

SELECT r.customer_id,
       r.hour,
       r.page_loads,
       coalesce(c.clicks, 0) AS clicks,
       coalesce(u.unique_user_clicks, 0) AS unique_user_clicks,
       r.related_clicks,
       r.ctr
FROM referral.click_through_rate AS r
LEFT JOIN referral.clicks AS c USING (customer_id, hour)
LEFT JOIN referral.unique_user_clicks AS u USING (customer_id, hour)
WHERE (%(customer_id)s::bigint IS NULL OR r.customer_id = %(customer_id)s::bigint)
  AND (%(from)s::timestamp IS NULL OR r.hour >= %(from)s::timestamp)
  AND (%(to)s::timestamp IS NULL OR r.hour < %(to)s::timestamp)
ORDER BY r.customer_id, r.hour
