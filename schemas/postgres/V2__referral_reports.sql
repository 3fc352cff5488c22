-- Hourly referral reports, one row per customer and UTC hour, written by `adpipe events load`.
-- Idempotent (IF NOT EXISTS): adpipe applies it to a database that lacks it, Flyway applies it once.
-- `hour` is TIMESTAMP WITHOUT TIME ZONE holding UTC, truncated to the hour, like every timestamp here.

CREATE SCHEMA IF NOT EXISTS referral;

-- ReferralPageLoad events per customer and hour.
CREATE TABLE IF NOT EXISTS referral.page_loads (
    customer_id BIGINT NOT NULL,
    hour TIMESTAMP NOT NULL,
    page_loads INTEGER NOT NULL,
    PRIMARY KEY (customer_id, hour)
);

-- ReferralRecommendClick events per customer and hour.
CREATE TABLE IF NOT EXISTS referral.clicks (
    customer_id BIGINT NOT NULL,
    hour TIMESTAMP NOT NULL,
    clicks INTEGER NOT NULL,
    PRIMARY KEY (customer_id, hour)
);

-- Distinct users who clicked, per customer and hour.
CREATE TABLE IF NOT EXISTS referral.unique_user_clicks (
    customer_id BIGINT NOT NULL,
    hour TIMESTAMP NOT NULL,
    unique_user_clicks INTEGER NOT NULL,
    PRIMARY KEY (customer_id, hour)
);

-- Clicks related to a page load (same event_id, customer and user; or the same customer and user had a
-- page load at most the load's --window seconds before), counted in the click's hour.
-- ctr = related_clicks / page_loads, NULL in an hour without page loads. A row for every hour with a
-- page load or a click.
CREATE TABLE IF NOT EXISTS referral.click_through_rate (
    customer_id BIGINT NOT NULL,
    hour TIMESTAMP NOT NULL,
    page_loads INTEGER NOT NULL,
    related_clicks INTEGER NOT NULL,
    ctr DOUBLE PRECISION,
    PRIMARY KEY (customer_id, hour)
);
