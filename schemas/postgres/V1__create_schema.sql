-- The seed's source schema: the advertising platform's operational tables.
-- All timestamps are WITHOUT TIME ZONE and hold UTC.

CREATE TABLE advertiser (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    updated_at TIMESTAMP,
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE campaign (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    bid NUMERIC(10, 2) NOT NULL,
    budget NUMERIC(10, 2) NOT NULL,
    start_date DATE,
    end_date DATE,
    advertiser_id INTEGER REFERENCES advertiser (id),
    updated_at TIMESTAMP,
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE impressions (
    id SERIAL PRIMARY KEY,
    campaign_id INTEGER REFERENCES campaign (id),
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE TABLE clicks (
    id SERIAL PRIMARY KEY,
    campaign_id INTEGER REFERENCES campaign (id),
    created_at TIMESTAMP DEFAULT NOW()
);
