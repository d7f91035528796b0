//! Command-line interface. Every flag has a `LATCHKEY_*` environment variable; `--help` shows
//! both and the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::token::{HashAlgorithm, Prefix};

/// What `latchkey --version` prints after the name: the crate's version and the git commit it
/// was built from (`unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LATCHKEY_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(name = "latchkey", version = VERSION, about = "Self-hosted API token authority")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (REST, /metrics, health) on one listen address.
    Serve(ServeArgs),
    /// Mint an admin token directly in the database (no server needed) and print it on stdout.
    Bootstrap(BootstrapArgs),
    /// Manage tokens on a running server (REST client).
    Token {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Read the audit log of a running server (REST client).
    Audit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage people: `create` writes to the database (no server needed); the rest is a REST
    /// client.
    ///
    /// `user create` writes a user to the database directly, like `bootstrap`: how the first
    /// admin comes to be. `user list|get|me|disable|enable` ask a running server, given by
    /// `--url` / `LATCHKEY_URL`, with `--token` / `LATCHKEY_TOKEN`.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Copy the database to a file while the server runs (SQLite; PostgreSQL: use pg_dump).
    ///
    /// A consistent snapshot (SQLite's `VACUUM INTO`), safe while servers read and write. The
    /// file must not exist. Restoring it brings back tokens revoked after the backup: see
    /// docs/operations.md for revoking them again from the audit log.
    Backup(BackupArgs),
    /// Import keys another system stored (their hashes, never plaintexts), all or nothing.
    ///
    /// FILE is JSON Lines, one key per line (`-` reads stdin); docs/migrating.md has the format
    /// and an export for each system. Writes to the database directly, like `bootstrap`, in one
    /// transaction; keys already present are left alone, so a second run changes nothing.
    /// Prints a summary on stderr (imported, already present, refused lines and why) and exits
    /// with status 1, writing nothing, if any line is refused. A running server recognises keys
    /// of a scheme it had not seen within a minute (at once for `POST /v1/tokens/import`).
    Import(ImportArgs),
    /// Seed a development database with fixed ids and a fixed, local-only admin token.
    ///
    /// Org `00000000-0000-0000-0000-000000000001` ("dev"), admin user `...0002`
    /// (dev-admin@latchkey.localhost, password `local-development-only`) and token `...0004`
    /// (`<prefix>_pat_00000000-0000-0000-0000-000000000004_LOCALDEVELOPMENTONLY`, an admin's
    /// permissions), each created only if missing: a second run changes nothing. Prints
    /// `export LATCHKEY_DEV_...=` lines on stdout, for `eval "$(latchkey dev-seed)"`. Refuses to
    /// run when LATCHKEY_ENV is `production` or the PostgreSQL host is not loopback (or a local
    /// socket): anyone can read this token.
    DevSeed(DevSeedArgs),
    /// Sign in to a running server with an email and password; prints a new token on stdout.
    ///
    /// Trades the email and password for a token owned by the user (`POST /v1/auth/token`) and
    /// prints its plaintext alone on stdout, for scripts:
    /// `export LATCHKEY_TOKEN=$(latchkey login --email E)`.
    Login(LoginArgs),
}

/// How the client commands reach the server.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the Latchkey server.
    #[arg(
        long,
        env = "LATCHKEY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,

    /// A PEM file of certificate authorities to trust for an `https://` URL, besides the
    /// system's (`SSL_CERT_FILE` replaces those).
    #[arg(long, env = "LATCHKEY_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Bearer token to act with.
    #[arg(long, env = "LATCHKEY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its plaintext alone on stdout (shown once).
    Create {
        /// The token's name: 1-100 characters of letters, digits, space and ._:-, unique among
        /// the org's live tokens.
        #[arg(long)]
        name: String,
        /// `pat` (a person's token) or `svc` (a service's).
        #[arg(long = "type", default_value = "pat")]
        r#type: String,
        /// A scope or composite name (repeatable) [default: none].
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The permission bitmap, added to the scopes [default: none].
        #[arg(long)]
        permissions: Option<u64>,
        /// Lifetime in seconds from now [default: the org's default lifetime, else none].
        #[arg(long)]
        ttl_seconds: Option<i64>,
        /// When the token stops working, an RFC 3339 time (instead of --ttl-seconds).
        #[arg(long)]
        expires_at: Option<String>,
        /// The org to create the token in (another org's needs platform:admin) [default: the
        /// caller's org].
        #[arg(long)]
        org_id: Option<String>,
        /// Free-form JSON object of at most 4 KiB, returned with the token.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List tokens, newest first.
    List {
        /// The org whose tokens to list (another org's needs platform:admin) [default: the
        /// caller's org].
        #[arg(long)]
        org_id: Option<String>,
        /// Only tokens in this state: `active`, `expired`, `revoked` or `disabled` [default:
        /// every state].
        #[arg(long)]
        state: Option<String>,
        /// Only tokens of this format: `native`, or the scheme of imported keys
        /// (`argon2id-embedded-uuid`, `sha256`, `sha512`, `sanctum`) [default: every format].
        #[arg(long)]
        format: Option<String>,
        /// Tokens per page, 1-500 [default: 50].
        #[arg(long)]
        page_size: Option<u32>,
        /// The next page, as printed by the previous one (`more: --page-token ...`).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one token.
    Get {
        /// The token's id.
        id: String,
        /// The token's org (another org's needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
    },
    /// Revoke a token at once (`-`: every id read from stdin, one per line).
    Revoke {
        /// The token's id, or `-` to revoke each id on stdin (as `audit list --ids` prints
        /// them); revoking a revoked token changes nothing.
        id: String,
        /// The token's org (another org's needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
    },
    /// Rotate a token; prints the new plaintext alone on stdout.
    Rotate {
        /// The id of the token to replace.
        id: String,
        /// Seconds the old token keeps working (0: it stops at once) [default: 3600].
        #[arg(long)]
        grace_seconds: Option<i64>,
        /// The token's org (another org's needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
    },
    /// Disable a token (it verifies as invalid until enabled).
    Disable {
        /// The token's id.
        id: String,
        /// The token's org (another org's needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
    },
    /// Enable a disabled token.
    Enable {
        /// The token's id.
        id: String,
        /// The token's org (another org's needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
    },
    /// Verify a token (`-` reads it from stdin); exit code 0 only when valid.
    Verify {
        /// The token's plaintext, or `-` to read it from one line of stdin (kept out of `ps`).
        token: String,
        /// A scope the token must hold (repeatable) [default: none].
        #[arg(long = "require")]
        require: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first.
    List {
        /// The org whose events to list (another org's needs platform:admin) [default: the
        /// caller's org].
        #[arg(long)]
        org_id: Option<String>,
        /// Only events about this token (its id).
        #[arg(long)]
        token_id: Option<String>,
        /// Only events of this action, e.g. `token_created`, `token_revoked`, `login_succeeded`.
        #[arg(long)]
        action: Option<String>,
        /// Only events by this actor, e.g. `token:<id>`, `user:<id>`, `bootstrap`.
        #[arg(long)]
        actor: Option<String>,
        /// Events at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Events before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Events per page, 1-500 [default: 50].
        #[arg(long)]
        page_size: Option<u32>,
        /// The next page, as printed by the previous one (`more: --page-token ...`).
        #[arg(long)]
        page_token: Option<String>,
        /// Print only the ids of the tokens the events are about, one per line, each once,
        /// following every page (for `| latchkey token revoke -`).
        #[arg(long, conflicts_with = "json")]
        ids: bool,
    },
}

/// `latchkey backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Database URL: `sqlite://PATH` (PostgreSQL: use pg_dump).
    #[arg(
        long,
        env = "LATCHKEY_DATABASE_URL",
        default_value = "sqlite://latchkey-data/latchkey.db"
    )]
    pub database_url: String,

    /// The file to write; must not exist.
    #[arg(long)]
    pub to: PathBuf,
}

/// `latchkey dev-seed`.
#[derive(Debug, Args)]
pub struct DevSeedArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The environment this runs in; `production` makes dev-seed refuse.
    #[arg(long, env = "LATCHKEY_ENV", default_value = "development")]
    pub env: String,
}

/// `latchkey import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// JSON Lines file of keys; `-` reads stdin.
    pub file: PathBuf,

    /// Org of the keys without an `org_id` of their own.
    #[arg(long, env = "LATCHKEY_IMPORT_ORG_ID", conflicts_with = "org_name")]
    pub org_id: Option<uuid::Uuid>,

    /// Org of the keys without an `org_id` of their own, by name (it must exist).
    #[arg(long, env = "LATCHKEY_IMPORT_ORG_NAME")]
    pub org_name: Option<String>,

    /// Validate and report only; nothing is written.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the report as JSON on stdout (each key's line and token id too).
    #[arg(long)]
    pub json: bool,
}

/// `latchkey user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user by writing to the database directly (no server needed, like `bootstrap`).
    ///
    /// How the first admin comes to be; later users are invited by an admin on the server.
    /// Prints who was created on stderr and a one-time setup link (valid 24 hours) alone on
    /// stdout, to hand over. With `--password-stdin` it reads the password from one line of
    /// stdin instead, sets it, and prints nothing on stdout.
    Create(UserCreateArgs),
    #[command(flatten)]
    Remote(UserRemoteCommand),
}

/// The `latchkey user ...` commands that ask a running server.
#[derive(Debug, Subcommand)]
pub enum UserRemoteCommand {
    /// List the org's users, newest first (REST client of a running server).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Another org's users (needs platform:admin) [default: the caller's org].
        #[arg(long)]
        org_id: Option<String>,
        /// Users per page, 1-500 [default: 50].
        #[arg(long)]
        page_size: Option<u32>,
        /// The next page, as printed by the previous one (`more: --page-token ...`).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one user (REST client of a running server).
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The user's id.
        id: String,
    },
    /// Show the user the token belongs to (REST client of a running server).
    Me {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a user: its tokens are revoked and its sessions end, at once (REST client of a
    /// running server).
    Disable {
        #[command(flatten)]
        client: ClientArgs,
        /// The user's id.
        id: String,
    },
    /// Enable a disabled user; its revoked tokens stay revoked (REST client of a running
    /// server).
    Enable {
        #[command(flatten)]
        client: ClientArgs,
        /// The user's id.
        id: String,
    },
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Manages the tokens it owns.
    Member,
    /// Every token and user of its org, its policy and its audit log.
    Admin,
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The user's email, unique in the deployment; what they sign in with.
    #[arg(long)]
    pub email: String,

    /// The user's name: 1-100 characters of letters, digits, space and ._:-
    #[arg(long)]
    pub name: String,

    /// What the user may do in its org.
    #[arg(long, value_enum, default_value_t = RoleArg::Member)]
    pub role: RoleArg,

    /// The org to create the user in; created if it does not exist.
    #[arg(long, env = "LATCHKEY_ORG_NAME", default_value = "default")]
    pub org_name: String,

    /// Also an operator of the whole deployment (`platform:admin`: every org).
    #[arg(long)]
    pub platform_admin: bool,

    /// Read the password from one line of stdin (instead of printing a setup link).
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Base URL of the Latchkey server.
    #[arg(long, env = "LATCHKEY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// A PEM file of certificate authorities to trust for an `https://` URL, besides the
    /// system's (`SSL_CERT_FILE` replaces those).
    #[arg(long, env = "LATCHKEY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// The email to sign in with.
    #[arg(long)]
    pub email: String,

    /// The new token's name, unique among the org's live tokens [default: "cli <hostname>
    /// <UTC time>"].
    #[arg(long)]
    pub name: Option<String>,

    /// A scope or composite name (repeatable); none: the deployment's default scopes.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,

    /// Days the token lives [default: the org's default, at most the server's
    /// --login-token-max-days].
    #[arg(long)]
    pub expires_in_days: Option<i64>,

    /// Read the password from stdin, one line (the default whenever stdin is not a terminal; a
    /// terminal is asked without echo).
    #[arg(long)]
    pub password_stdin: bool,

    /// Print the server's JSON (the token's details and its plaintext) instead of the plaintext
    /// alone.
    #[arg(long)]
    pub json: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags shared by every command that opens the database.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Database URL: `sqlite://PATH` (created if missing) or `postgres://...` (TLS as its
    /// `sslmode` says: `prefer` when absent; use `verify-full`, see docs/postgresql.md).
    #[arg(
        long,
        env = "LATCHKEY_DATABASE_URL",
        default_value = "sqlite://latchkey-data/latchkey.db"
    )]
    pub database_url: String,

    /// TOML file declaring custom scopes (bits 16-63) and composites.
    #[arg(long, env = "LATCHKEY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Prefix of issued tokens, `[a-z][a-z0-9]{0,15}`. Tokens with another prefix do not verify.
    #[arg(long, env = "LATCHKEY_TOKEN_PREFIX", default_value = "lk")]
    pub token_prefix: Prefix,

    /// Verifier algorithm for new tokens. Existing tokens keep theirs.
    #[arg(long, env = "LATCHKEY_HASH", value_enum, default_value_t = HashAlgorithm::Sha256)]
    pub hash: HashAlgorithm,

    /// PostgreSQL: most pooled connections per node (one more is held for notifications).
    #[arg(long, env = "LATCHKEY_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// PostgreSQL: connections kept open when idle.
    #[arg(long, env = "LATCHKEY_DB_MIN_CONNECTIONS", default_value_t = 0)]
    pub db_min_connections: u32,

    /// PostgreSQL: seconds a query waits for a free connection before it fails, and that a
    /// starting node waits for the database to answer before it exits saying why.
    #[arg(long, env = "LATCHKEY_DB_ACQUIRE_TIMEOUT_SECONDS", default_value_t = 5)]
    pub db_acquire_timeout_seconds: u64,

    /// PostgreSQL: seconds before an idle connection is closed (0: never).
    #[arg(long, env = "LATCHKEY_DB_IDLE_TIMEOUT_SECONDS", default_value_t = 600)]
    pub db_idle_timeout_seconds: u64,

    /// PostgreSQL: seconds before a connection is replaced, e.g. to follow a failover (0: never).
    #[arg(long, env = "LATCHKEY_DB_MAX_LIFETIME_SECONDS", default_value_t = 1800)]
    pub db_max_lifetime_seconds: u64,

    /// The base URL people reach this server at, for the setup links of new users.
    #[arg(
        long,
        env = "LATCHKEY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,

    /// Log format on stderr. The level is set with LATCHKEY_LOG (e.g. `info`, `debug`).
    #[arg(long, env = "LATCHKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address to listen on (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "LATCHKEY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Most tokens held in the in-process verify cache.
    #[arg(long, env = "LATCHKEY_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: usize,

    /// Seconds a cached token is trusted before it is read again from the database.
    #[arg(long, env = "LATCHKEY_CACHE_TTL_SECONDS", default_value_t = 5)]
    pub cache_ttl_seconds: u64,

    /// Milliseconds between flushes of usage counters (last_used_at, request_count).
    #[arg(long, env = "LATCHKEY_USAGE_FLUSH_MS", default_value_t = 1000)]
    pub usage_flush_ms: u64,

    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "LATCHKEY_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    /// Tokens minted (created or rotated) by people (console sessions, password exchanges) per
    /// hour per client IP (0: off).
    #[arg(long, env = "LATCHKEY_RATE_LIMIT_MINT_PER_HOUR", default_value_t = 10)]
    pub rate_limit_mint_per_hour: u32,

    /// Tokens minted (created or rotated) by a token per hour, per calling token (0: off). A
    /// backend that provisions keys for its customers mints with a token.
    #[arg(
        long,
        env = "LATCHKEY_RATE_LIMIT_MINT_PER_TOKEN_PER_HOUR",
        default_value_t = 1000
    )]
    pub rate_limit_mint_per_token_per_hour: u32,

    /// Sign-ins (password exchanges, console sign-ins, password changes) per 15 minutes per
    /// client IP, counted before any password is hashed (0: off).
    #[arg(long, env = "LATCHKEY_RATE_LIMIT_LOGIN_PER_15M", default_value_t = 5)]
    pub rate_limit_login_per_15m: u32,

    /// Minutes a console session may go unused before it ends.
    #[arg(long, env = "LATCHKEY_SESSION_IDLE_MINUTES", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=10_080))]
    pub session_idle_minutes: u64,

    /// Hours after sign-in that a console session ends, however it is used.
    #[arg(long, env = "LATCHKEY_SESSION_ABSOLUTE_HOURS", default_value_t = 8,
        value_parser = clap::value_parser!(u64).range(1..=720))]
    pub session_absolute_hours: u64,

    /// Longest lifetime, in days, of a token minted with `POST /v1/auth/token` (email and
    /// password); also its lifetime when the request names none and the org has no default.
    #[arg(long, env = "LATCHKEY_LOGIN_TOKEN_MAX_DAYS", default_value_t = 30,
        value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub login_token_max_days: i64,

    /// The server is reached over plain HTTP, with no TLS in front: the session cookie is sent
    /// without `Secure`. Leave it off behind HTTPS (browsers keep `Secure` cookies of
    /// http://localhost and http://127.0.0.1 anyway).
    #[arg(long, env = "LATCHKEY_PLAIN_HTTP")]
    pub plain_http: bool,

    /// Management requests (everything but verification) per second per client IP (0: off).
    #[arg(long, env = "LATCHKEY_RATE_LIMIT_PER_SECOND", default_value_t = 50)]
    pub rate_limit_per_second: u32,

    /// Burst of management requests per client IP.
    #[arg(long, env = "LATCHKEY_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,

    /// Failed Argon2id checks (verifications and bearer authentications) per minute, per client
    /// IP and per token; beyond it Argon2id checks for that IP or token answer 429 (0: off).
    /// Nothing else is refused: garbage, unknown ids and SHA-256 tokens cost too little.
    #[arg(
        long,
        env = "LATCHKEY_RATE_LIMIT_FAILED_VERIFY_PER_MINUTE",
        default_value_t = 60
    )]
    pub rate_limit_failed_verify_per_minute: u32,

    /// Milliseconds a verification or bearer authentication refused because the client is past
    /// its failed-verification limit waits before it is answered, so a client guessing in a loop
    /// slows to a few attempts a second per HTTP/1.1 connection (0: answer at once). Must be
    /// shorter than the request timeout. At most a quarter of `--max-in-flight` refusals wait at
    /// once (none below 4); the rest are answered at once.
    #[arg(
        long,
        env = "LATCHKEY_RATE_LIMIT_REFUSAL_DELAY_MS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(0..=10_000)
    )]
    pub rate_limit_refusal_delay_ms: u64,

    /// Leaked-token reports per minute per client IP (0: off).
    #[arg(
        long,
        env = "LATCHKEY_RATE_LIMIT_LEAKED_PER_MINUTE",
        default_value_t = 10
    )]
    pub rate_limit_leaked_per_minute: u32,

    /// Proxies whose X-Forwarded-For is believed, as comma-separated CIDRs (e.g.
    /// `127.0.0.1/32,10.0.0.0/8`). The client IP is the socket peer, or, when the peer is a
    /// trusted proxy, the right-most untrusted address of X-Forwarded-For.
    #[arg(long, env = "LATCHKEY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Seconds a client may take to send a request's headers; also how long an idle HTTP/1.1
    /// keep-alive connection is kept open.
    #[arg(long, env = "LATCHKEY_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_timeout_seconds: u64,

    /// Seconds a request may take from its headers to the end of the response.
    #[arg(long, env = "LATCHKEY_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// Most open connections; further ones wait in the listen backlog.
    #[arg(long, env = "LATCHKEY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most requests in flight; beyond it requests get 503 with Retry-After at once.
    #[arg(long, env = "LATCHKEY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Also serve `ibex.auth.v1.AuthService` (the gRPC API of the ibex auth service) on the same
    /// address, so that ibex's clients keep working; its rules are Latchkey's.
    #[arg(long, env = "LATCHKEY_COMPAT_IBEX")]
    pub compat_ibex: bool,

    /// SHA-256 (64 hex digits) of a break-glass secret: a bearer whose SHA-256 matches acts as
    /// platform:admin on REST and gRPC management calls, every use audited (`break_glass_used`)
    /// and logged at WARN. Not a token: verification and the gateway check refuse it [default:
    /// none].
    #[arg(long, env = "LATCHKEY_BREAK_GLASS_SHA256", hide_env_values = true)]
    pub break_glass_sha256: Option<String>,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Org to mint the admin token in; created if it does not exist.
    #[arg(long, env = "LATCHKEY_ORG_NAME", default_value = "default")]
    pub org_name: String,
}
