-- People: users (one org each, a role, an Argon2id password hash), console sessions (only the
-- SHA-256 of the secret id is stored), and each token's owning user.

CREATE TABLE users (
    id               TEXT PRIMARY KEY NOT NULL,
    org_id           TEXT NOT NULL REFERENCES orgs (id),
    -- As given; `email_key` is its lowercase form, unique in the deployment.
    email            TEXT NOT NULL,
    email_key        TEXT NOT NULL UNIQUE,
    name             TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    platform_admin   INTEGER NOT NULL DEFAULT 0,
    -- Argon2id PHC string; NULL until the user sets a password through its setup link.
    password_hash    TEXT,
    created_at       INTEGER NOT NULL,
    created_by       TEXT NOT NULL,
    last_login_at    INTEGER,
    disabled_at      INTEGER,
    -- SHA-256 (hex) of the outstanding one-time setup token, and when it stops working.
    setup_hash       TEXT UNIQUE,
    setup_expires_at INTEGER
) STRICT;

CREATE INDEX users_org ON users (org_id, id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL REFERENCES users (id),
    org_id       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    -- The absolute end of the session (created_at + the absolute timeout).
    expires_at   INTEGER NOT NULL,
    ip           TEXT,
    user_agent   TEXT
) STRICT;

CREATE INDEX sessions_user ON sessions (user_id, id);

ALTER TABLE tokens ADD COLUMN user_id TEXT;
CREATE INDEX tokens_org_user ON tokens (org_id, user_id, id) WHERE user_id IS NOT NULL;

-- The verify read learns the owner too (a token acting for a person reaches that person's
-- tokens), so the covering index gains the column.
DROP INDEX tokens_verify;
CREATE INDEX tokens_verify ON tokens (id, org_id, kind, verifier, permissions, expires_at,
    revoked_at, disabled_at, user_id);
