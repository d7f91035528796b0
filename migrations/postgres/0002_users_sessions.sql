-- People: users (one org each, a role, an Argon2id password hash), console sessions (only the
-- SHA-256 of the secret id is stored), and each token's owning user. The same tables, columns and
-- indexes as migrations/sqlite/0004_users_sessions.sql, in native types.

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id),
    -- As given; `email_key` is its lowercase form (computed by the store), unique in the
    -- deployment. The store recognises a duplicate email by this constraint's name.
    email            text NOT NULL,
    email_key        text NOT NULL CONSTRAINT users_email_key UNIQUE,
    name             text NOT NULL,
    role             text NOT NULL CHECK (role IN ('member', 'admin')),
    platform_admin   boolean NOT NULL DEFAULT false,
    -- Argon2id PHC string; NULL until the user sets a password through its setup link.
    password_hash    text,
    created_at       timestamptz NOT NULL,
    created_by       text NOT NULL,
    last_login_at    timestamptz,
    disabled_at      timestamptz,
    -- SHA-256 (hex) of the outstanding one-time setup token, and when it stops working.
    setup_hash       text CONSTRAINT users_setup_hash UNIQUE,
    setup_expires_at timestamptz
);

CREATE INDEX users_org ON users (org_id, id);

CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    secret_hash  text NOT NULL UNIQUE,
    user_id      uuid NOT NULL REFERENCES users (id),
    org_id       uuid NOT NULL,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    -- The absolute end of the session (created_at + the absolute timeout).
    expires_at   timestamptz NOT NULL,
    ip           text,
    user_agent   text
);

CREATE INDEX sessions_user ON sessions (user_id, id);

-- NULL for tokens of machines (minted by other tokens).
ALTER TABLE tokens ADD COLUMN user_id uuid;
CREATE INDEX tokens_org_user ON tokens (org_id, user_id, id) WHERE user_id IS NOT NULL;
