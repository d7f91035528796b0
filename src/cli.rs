//! Command-line interface. Every flag has a `LATCHKEY_*` environment variable; `--help` shows
//! both and the default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::token::{HashAlgorithm, Prefix};

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "Self-hosted API token authority")]
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
    /// Database URL: `sqlite://PATH` (created if missing) or `postgres://...`.
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
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Org to mint the admin token in; created if it does not exist.
    #[arg(long, env = "LATCHKEY_ORG_NAME", default_value = "default")]
    pub org_name: String,
}
