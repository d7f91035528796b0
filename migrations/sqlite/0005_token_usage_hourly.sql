-- Verifications per token and clock hour (UTC), for the console's chart and
-- GET /v1/tokens/{id}/usage. The usage flush adds to the current hour's row; the housekeeping
-- tick deletes hours older than 7 days. The index on hour makes that delete a range scan.
CREATE TABLE token_usage_hourly (
    token_id TEXT NOT NULL,
    -- The hour's start, microseconds since the epoch, like every other instant here.
    hour     INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (token_id, hour)
) STRICT, WITHOUT ROWID;

CREATE INDEX token_usage_hourly_hour ON token_usage_hourly (hour);
