-- Usage counters live in a narrow table of their own. The usage flush rewrites the counters of
-- every token used since the last flush (once a second); on a large database, rewriting the
-- wide token row dirtied a page per token, and the flush cost more than the verifications.
-- A row exists once a token has been used. Tokens are never deleted.
CREATE TABLE token_usage (
    token_id      TEXT PRIMARY KEY NOT NULL,
    request_count INTEGER NOT NULL,
    last_used_at  INTEGER,
    -- JSON array of the last distinct client addresses: [{"ip": "...", "last_seen_at": micros}].
    client_ips    TEXT NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO token_usage (token_id, request_count, last_used_at, client_ips)
SELECT id, request_count, last_used_at, client_ips
FROM tokens
WHERE request_count > 0 OR last_used_at IS NOT NULL OR client_ips <> '[]';

-- The token table without its usage columns. (ALTER TABLE ... DROP COLUMN cannot drop the last
-- column here: SQLite trips on the comment before it.) Nothing references tokens, so the table
-- is rebuilt and renamed, and its indexes made again.
CREATE TABLE tokens_new (
    id            TEXT PRIMARY KEY NOT NULL,
    org_id        TEXT NOT NULL REFERENCES orgs (id),
    name          TEXT NOT NULL,
    -- The name while the token is live (not revoked, not replaced); NULL afterwards. A unique
    -- index on it enforces "one live token per name and org" on every backend.
    live_name     TEXT,
    kind          INTEGER NOT NULL,
    verifier      TEXT NOT NULL,
    permissions   INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    replaced_by   TEXT,
    metadata      TEXT,
    -- The id of the first token of its rotation family (its own id when never rotated).
    family_id     TEXT NOT NULL,
    disabled_at   INTEGER
) STRICT;

INSERT INTO tokens_new (id, org_id, name, live_name, kind, verifier, permissions, created_at,
    created_by, expires_at, revoked_at, replaced_by, metadata, family_id, disabled_at)
SELECT id, org_id, name, live_name, kind, verifier, permissions, created_at,
    created_by, expires_at, revoked_at, replaced_by, metadata, family_id, disabled_at
FROM tokens;

DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;

CREATE UNIQUE INDEX tokens_live_name ON tokens (org_id, live_name) WHERE live_name IS NOT NULL;
CREATE INDEX tokens_org_id ON tokens (org_id, id);
CREATE INDEX tokens_org_creator ON tokens (org_id, created_by, id);
CREATE INDEX tokens_family ON tokens (family_id);
