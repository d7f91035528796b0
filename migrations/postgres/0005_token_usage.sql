-- Usage counters in a narrow table of their own, as on SQLite: the usage flush rewrote the wide
-- token row (name, verifier, metadata, indexes) of every token used in the last second, tens of
-- thousands of rows a second under load, which was most of the flush's cost. A row here is small
-- and has no index but its key, so an update can stay on its page (fillfactor leaves room).
CREATE TABLE token_usage (
    token_id      uuid PRIMARY KEY,
    request_count bigint NOT NULL DEFAULT 0,
    last_used_at  timestamptz,
    -- The last distinct client addresses: [{"ip": "...", "last_seen_at": "<RFC 3339>"}].
    client_ips    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(client_ips) = 'array')
) WITH (fillfactor = 70);

-- The counters so far move here. The columns of `tokens` stay (unused from now on), so that a node
-- of the previous version still running during a rolling upgrade keeps working; what it counts
-- after this migration lands in those columns and is not shown (docs/postgresql.md, "Upgrades").
INSERT INTO token_usage (token_id, request_count, last_used_at, client_ips)
SELECT id, request_count, last_used_at, client_ips
FROM tokens
WHERE request_count <> 0 OR last_used_at IS NOT NULL OR client_ips <> '[]'::jsonb;
