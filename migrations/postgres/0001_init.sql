-- The PostgreSQL schema: the same tables, columns and indexes as migrations/sqlite, in native types.
-- Timestamps are timestamptz (microsecond precision, the precision SQLite stores too); ids are uuid
-- (compared bytewise, the same order as SQLite's lowercase hyphenated text; UUID v7 ids sort by
-- creation time); JSON is jsonb.
-- Applied at start by sqlx's migrator, which holds a PostgreSQL advisory lock (keyed on the
-- database name) while it runs, so nodes starting together apply it once.

CREATE TABLE orgs (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL,
    -- Lifetime policy: the longest lifetime a token may get, and the one it gets by default.
    max_ttl_seconds     bigint,
    default_ttl_seconds bigint
);

CREATE TABLE tokens (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES orgs (id),
    name          text NOT NULL,
    -- The name while the token is live (not revoked, not replaced); NULL afterwards. The partial
    -- unique index below enforces "one live token per name and org" across every node.
    live_name     text,
    kind          smallint NOT NULL,
    verifier      text NOT NULL,
    -- The 64-bit permission bitmap, stored bit for bit (bit 63 makes it negative).
    permissions   bigint NOT NULL,
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    request_count bigint NOT NULL DEFAULT 0,
    replaced_by   uuid,
    metadata      jsonb,
    -- The id of the first token of its rotation family (its own id when never rotated).
    family_id     uuid NOT NULL,
    disabled_at   timestamptz,
    -- The last distinct client addresses: [{"ip": "...", "last_seen_at": "<RFC 3339>"}].
    client_ips    jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(client_ips) = 'array')
);

CREATE UNIQUE INDEX tokens_live_name ON tokens (org_id, live_name) WHERE live_name IS NOT NULL;
CREATE INDEX tokens_org_id ON tokens (org_id, id);
CREATE INDEX tokens_org_creator ON tokens (org_id, created_by, id);
CREATE INDEX tokens_family ON tokens (family_id);

CREATE TABLE audit_events (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL,
    occurred_at timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    token_id    uuid,
    ip          text,
    user_agent  text,
    details     jsonb NOT NULL
);

CREATE INDEX audit_events_org ON audit_events (org_id, id);
CREATE INDEX audit_events_token ON audit_events (token_id, id);
CREATE INDEX audit_events_org_action ON audit_events (org_id, action, id);
