//! Turning flags and the config file into settings.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{CommonArgs, ServeArgs};
use crate::server::ServerLimits;
use crate::service::ratelimit::RateLimitConfig;
use crate::service::{AuthorityConfig, PeopleConfig};
use crate::startup::Settings;
use crate::store::PoolOptions;
use crate::token::ScopeRegistry;
use crate::token::permissions::ScopeConfig;

/// Reads the TOML config file (scopes and composites; see [`ScopeConfig`]).
///
/// # Errors
/// A missing or unreadable file, malformed TOML, or an invalid scope declaration.
pub fn load_scopes(path: Option<&Path>) -> anyhow::Result<ScopeRegistry> {
    let Some(path) = path else {
        return Ok(ScopeRegistry::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let cfg: ScopeConfig =
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    ScopeRegistry::new(&cfg).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// The database pool settings shared by `serve` and `bootstrap` (SQLite ignores them).
pub fn pool_options(common: &CommonArgs) -> PoolOptions {
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    PoolOptions {
        max_connections: common.db_max_connections.max(1),
        min_connections: common.db_min_connections,
        acquire_timeout: Duration::from_secs(common.db_acquire_timeout_seconds.max(1)),
        idle_timeout: secs(common.db_idle_timeout_seconds),
        max_lifetime: secs(common.db_max_lifetime_seconds),
    }
}

/// The service settings shared by `serve` and `bootstrap`.
///
/// # Errors
/// As [`load_scopes`].
pub fn authority_config(common: &CommonArgs) -> anyhow::Result<AuthorityConfig> {
    let public_url = common.public_url.trim_end_matches('/').to_string();
    anyhow::ensure!(
        public_url.starts_with("http://") || public_url.starts_with("https://"),
        "--public-url must start with http:// or https:// (got {public_url:?})"
    );
    Ok(AuthorityConfig {
        prefix: common.token_prefix.clone(),
        hash: common.hash,
        scopes: load_scopes(common.config.as_deref())?,
        people: PeopleConfig {
            public_url,
            ..PeopleConfig::default()
        },
        ..AuthorityConfig::default()
    })
}

/// The settings of `latchkey serve`.
///
/// # Errors
/// As [`load_scopes`].
pub fn serve_settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let mut authority = authority_config(&args.common)?;
    authority.cache_capacity = args.cache_capacity;
    authority.cache_ttl = Duration::from_secs(args.cache_ttl_seconds);
    let request_timeout = Duration::from_secs(args.request_timeout_seconds.max(1));
    let refusal_delay = Duration::from_millis(args.rate_limit_refusal_delay_ms);
    // A held refusal must be answered as a refusal, not cut off by the request timeout.
    anyhow::ensure!(
        refusal_delay < request_timeout,
        "--rate-limit-refusal-delay-ms ({} ms) must be shorter than --request-timeout-seconds ({} s)",
        refusal_delay.as_millis(),
        request_timeout.as_secs()
    );
    authority.people.session_idle = Duration::from_secs(args.session_idle_minutes * 60);
    authority.people.session_absolute = Duration::from_secs(args.session_absolute_hours * 3600);
    authority.people.login_token_max_days = args.login_token_max_days;
    authority.rate_limits = RateLimitConfig {
        mint_per_hour: args.rate_limit_mint_per_hour,
        mint_per_token_per_hour: args.rate_limit_mint_per_token_per_hour,
        login_per_15m: args.rate_limit_login_per_15m,
        management_per_second: args.rate_limit_per_second,
        management_burst: args.rate_limit_burst,
        failed_verify_per_minute: args.rate_limit_failed_verify_per_minute,
        leaked_reports_per_minute: args.rate_limit_leaked_per_minute,
        refusal_delay,
        // None held below 4 in flight: one held refusal must not fill the server.
        max_held_refusals: args.max_in_flight / 4,
    };
    Ok(Settings {
        database_url: args.common.database_url.clone(),
        db_pool: pool_options(&args.common),
        listen: args.listen,
        authority,
        usage_flush_interval: Duration::from_millis(args.usage_flush_ms.max(10)),
        max_body_bytes: args.max_body_bytes,
        trusted_proxies: args.trusted_proxies.clone(),
        secure_cookies: !args.plain_http,
        limits: ServerLimits {
            header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
            request_timeout,
            max_connections: args.max_connections.max(1),
            max_in_flight: args.max_in_flight.max(1),
        },
    })
}
