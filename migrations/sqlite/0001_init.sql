-- Timestamps are INTEGER microseconds since the Unix epoch (UTC), the precision PostgreSQL keeps.
-- Ids are lowercase hyphenated UUIDs; UUID v7 ids sort by creation time as text.

CREATE TABLE orgs (
    id                  TEXT PRIMARY KEY NOT NULL,
    name                TEXT NOT NULL UNIQUE,
    created_at          INTEGER NOT NULL,
    -- Lifetime policy: the longest lifetime a token may get, and the one it gets by default.
    max_ttl_seconds     INTEGER,
    default_ttl_seconds INTEGER
) STRICT;

CREATE TABLE tokens (
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
    last_used_at  INTEGER,
    request_count INTEGER NOT NULL DEFAULT 0,
    replaced_by   TEXT,
    metadata      TEXT,
    -- The id of the first token of its rotation family (its own id when never rotated).
    family_id     TEXT NOT NULL,
    disabled_at   INTEGER,
    -- JSON array of the last distinct client addresses: [{"ip": "...", "last_seen_at": micros}].
    client_ips    TEXT NOT NULL DEFAULT '[]'
) STRICT;

CREATE UNIQUE INDEX tokens_live_name ON tokens (org_id, live_name) WHERE live_name IS NOT NULL;
CREATE INDEX tokens_org_id ON tokens (org_id, id);
CREATE INDEX tokens_org_creator ON tokens (org_id, created_by, id);
CREATE INDEX tokens_family ON tokens (family_id);

CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY NOT NULL,
    org_id      TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    token_id    TEXT,
    ip          TEXT,
    user_agent  TEXT,
    details     TEXT NOT NULL
) STRICT;

CREATE INDEX audit_events_org ON audit_events (org_id, id);
CREATE INDEX audit_events_token ON audit_events (token_id, id);
CREATE INDEX audit_events_org_action ON audit_events (org_id, action, id);
