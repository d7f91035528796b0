-- Verifications per token and clock hour (UTC), for the console's chart and
-- GET /v1/tokens/{id}/usage. The usage flush adds to the current hour's row; the housekeeping
-- tick deletes hours older than 7 days. The index on hour makes that delete a range scan.
CREATE TABLE token_usage_hourly (
    token_id uuid NOT NULL,
    hour     timestamptz NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (token_id, hour)
);

CREATE INDEX token_usage_hourly_hour ON token_usage_hourly (hour);
