-- The current hour's count of a token lives in its `token_usage` row, which every usage flush
-- rewrites anyway; `token_usage_hourly` receives an hour's count once, when a later hour starts
-- (or when a late count for an earlier hour arrives). Upserting `token_usage_hourly` on every
-- flush was most of a flush's database time (docs/performance.md). Reads add the two together.
-- `rolled_hour` and `rolled_count` carry the hour a flush's UPDATE moved out of the row back to
-- that flush (in RETURNING), which then adds it to `token_usage_hourly`; read nowhere else.
-- Adding columns with constant defaults rewrites nothing, so this is instant on a large table.
ALTER TABLE token_usage
    ADD COLUMN hour timestamptz,
    ADD COLUMN hour_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN rolled_hour timestamptz,
    ADD COLUMN rolled_count bigint NOT NULL DEFAULT 0;
