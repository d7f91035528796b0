//! Every business rule, once: who may do what, org isolation, expiry, audit, the verify path.
//! Operations take the acting [`Caller`] and `now`; both transports call the same methods.

mod argon2_pool;
mod audit;
mod break_glass;
pub mod changes;
mod dev_seed;
mod import;
mod leaked;
mod lifecycle;
pub mod model;
mod orgs;
mod passwords;
pub mod ratelimit;
mod sessions;
mod tokens;
mod users;
mod verify;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{Store, TokenRecord};
use crate::token::{HashAlgorithm, Permissions, Prefix, ScopeRegistry, Secret};

pub use break_glass::{BREAK_GLASS_USED, BreakGlassDigest};
pub use dev_seed::{DEV_ORG_ID, DEV_TOKEN_ID, DEV_USER_ID, DevSeed};
pub use import::{ImportInput, ImportOptions, MAX_IMPORT_KEYS};
pub use orgs::BootstrapOutcome;
pub use passwords::validate_password;
pub use sessions::{Csrf, NewSession, SESSION_COOKIE};
pub use tokens::GrantableScope;
pub use users::{NewUser, UserCreated};
pub use verify::AuthenticatedToken;

/// Who is acting: a verified token, a signed-in user, the bootstrap credential, the break-glass
/// secret or the system. No rule may assume the caller is a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub org_id: Uuid,
    /// What the principal may do: a token's own bits, or a user's role's.
    pub permissions: Permissions,
    /// The person behind the principal: the user itself, or the user owning the token.
    pub user_id: Option<Uuid>,
}

/// What kind of credential a [`Principal`] acts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A token, by id.
    Token(Uuid),
    /// A signed-in user (a console session), by id.
    User(Uuid),
    /// The bootstrap credential.
    Bootstrap,
    /// The operator's break-glass secret (`--break-glass-sha256`): `platform:admin` in no org
    /// of its own (org id nil), so it names the org it acts in.
    BreakGlass,
    /// Latchkey itself.
    System,
}

impl Principal {
    /// The system itself, acting for a command run against the database (`latchkey import`):
    /// every permission, in no org of its own.
    pub fn system() -> Self {
        Principal {
            kind: PrincipalKind::System,
            org_id: Uuid::nil(),
            permissions: Permissions::from_bits(u64::MAX),
            user_id: None,
        }
    }

    /// The audit `actor` and `created_by` string: `token:<uuid>`, `user:<uuid>`, `bootstrap`,
    /// `break_glass`, `system`.
    pub fn actor(&self) -> String {
        match self.kind {
            PrincipalKind::Token(id) => format!("token:{id}"),
            PrincipalKind::User(id) => format!("user:{id}"),
            PrincipalKind::Bootstrap => "bootstrap".into(),
            PrincipalKind::BreakGlass => "break_glass".into(),
            PrincipalKind::System => "system".into(),
        }
    }

    /// The bits this principal may use and grant: its own, or every bit for `platform:admin`.
    pub fn effective(&self) -> Permissions {
        if self.permissions.contains(Permissions::PLATFORM_ADMIN) {
            Permissions::from_bits(u64::MAX)
        } else {
            self.permissions
        }
    }

    fn is_platform_admin(&self) -> bool {
        self.permissions.contains(Permissions::PLATFORM_ADMIN)
    }

    /// Fails with `permission_denied` naming the missing permission.
    fn require(&self, p: Permissions, name: &str) -> Result<()> {
        if self.effective().contains(p) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "this operation needs the {name} permission"
            )))
        }
    }

    /// Whether `token` is within reach: same org (or `platform:admin`), and either `org:admin`,
    /// owned by the principal's user, created by this principal, or the principal itself.
    fn reaches(&self, token: &TokenRecord) -> bool {
        if self.is_platform_admin() {
            return true;
        }
        if token.org_id != self.org_id {
            return false;
        }
        self.permissions.contains(Permissions::ORG_ADMIN)
            || (token.user_id.is_some() && token.user_id == self.user_id)
            || token.created_by == self.actor()
            || self.kind == PrincipalKind::Token(token.id)
    }
}

/// Where a request came from, for audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl RequestMeta {
    /// Keeps at most 256 characters of the user agent.
    pub fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> Self {
        Self {
            ip,
            user_agent: user_agent.map(|u| u.chars().take(256).collect()),
        }
    }
}

/// An authenticated principal and where its request came from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub meta: RequestMeta,
    /// The console session the request came with, if it came with one.
    pub session: Option<CallerSession>,
}

impl Caller {
    /// A caller that did not come with a session.
    pub fn new(principal: Principal, meta: RequestMeta) -> Self {
        Self {
            principal,
            meta,
            session: None,
        }
    }
}

/// The session of a request: its public id and the CSRF token bound to it.
#[derive(Clone, PartialEq, Eq)]
pub struct CallerSession {
    pub id: Uuid,
    pub csrf_token: Secret<String>,
}

impl std::fmt::Debug for CallerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerSession")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Settings of people: sessions, sign-in tokens and setup links.
#[derive(Debug, Clone)]
pub struct PeopleConfig {
    /// A session not used for this long ends (default 30 minutes).
    pub session_idle: Duration,
    /// A session ends this long after sign-in whatever its use (default 8 hours).
    pub session_absolute: Duration,
    /// The longest lifetime of a token minted by `POST /v1/auth/token` (default 30 days).
    pub login_token_max_days: i64,
    /// The base URL people reach the server at, for setup links (default
    /// `http://127.0.0.1:8080`).
    pub public_url: String,
    /// How long a setup link works (24 hours).
    pub setup_link_ttl: Duration,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(30 * 60),
            session_absolute: Duration::from_secs(8 * 3600),
            login_token_max_days: 30,
            public_url: "http://127.0.0.1:8080".into(),
            setup_link_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Settings of the service layer.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Token prefix, default `lk`.
    pub prefix: Prefix,
    /// Verifier algorithm for new tokens, default sha256.
    pub hash: HashAlgorithm,
    pub scopes: ScopeRegistry,
    /// Most tokens held by the verify cache, default 100,000.
    pub cache_capacity: usize,
    /// How long a cached token is trusted before it is read again, default 5 s.
    pub cache_ttl: Duration,
    /// Rate limits; all off by default (the server's flags turn them on).
    pub rate_limits: ratelimit::RateLimitConfig,
    pub people: PeopleConfig,
    /// The SHA-256 of the break-glass secret (`--break-glass-sha256`); none by default.
    pub break_glass: Option<BreakGlassDigest>,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            prefix: Prefix::default(),
            hash: HashAlgorithm::Sha256,
            scopes: ScopeRegistry::default(),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(5),
            rate_limits: ratelimit::RateLimitConfig::DISABLED,
            people: PeopleConfig::default(),
            break_glass: None,
        }
    }
}

/// The token authority: the service every transport calls.
pub struct Authority {
    store: Arc<dyn Store>,
    config: AuthorityConfig,
    cache: Arc<verify::TokenCache>,
    loader: verify::Loader,
    /// Scope names by permission bits, for verify answers.
    scope_names: quick_cache::sync::Cache<u64, Arc<[String]>>,
    usage: Arc<verify::UsageBuffer>,
    argon2: argon2_pool::Argon2Pool,
    limits: ratelimit::RateLimits,
    verify_metrics: verify::VerifyMetrics,
    /// The import schemes with keys in the database (`token::legacy::Schemes`), which the
    /// verify path tries for a string that is not a native token.
    legacy_schemes: std::sync::atomic::AtomicU8,
    /// Set when the server stops: ends every `WatchChanges` stream, so the drain does not wait
    /// for them.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Authority {
    pub fn new(store: Arc<dyn Store>, config: AuthorityConfig) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            cache: Arc::new(verify::TokenCache::new(
                config.cache_capacity,
                config.cache_ttl,
            )),
            loader: verify::Loader::default(),
            scope_names: quick_cache::sync::Cache::new(1024),
            usage: Arc::default(),
            // One core stays free for everything else; 64 checks may wait, more are refused.
            argon2: argon2_pool::Argon2Pool::new(cpus.saturating_sub(1).max(1), 64),
            limits: ratelimit::RateLimits::new(&config.rate_limits),
            verify_metrics: verify::VerifyMetrics::new(),
            legacy_schemes: std::sync::atomic::AtomicU8::new(0),
            stopping: tokio::sync::watch::Sender::new(false),
            store,
            config,
        }
    }

    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// Listens for cache invalidations published by other nodes (PostgreSQL) and applies them
    /// until the stream ends. A no-op for single-node backends.
    ///
    /// # Errors
    /// If the store cannot start listening.
    pub async fn spawn_invalidation_listener(self: &Arc<Self>) -> Result<()> {
        if let Some(mut rx) = self.store.invalidations().await? {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(inv) = rx.recv().await {
                    let Some(authority) = me.upgrade() else { break };
                    authority.apply_invalidation(inv);
                }
            });
        }
        Ok(())
    }

    /// The per-client-IP limit on management calls (everything but verification).
    ///
    /// # Errors
    /// `rate_limited` with the retry time.
    pub fn check_management_rate(&self, ip: Option<IpAddr>) -> Result<()> {
        match (&self.limits.management, ip) {
            (Some(l), Some(ip)) => l.take(&ip),
            _ => Ok(()),
        }
    }

    /// The mint limits, by kind of caller: a token minting tokens (a backend provisioning keys)
    /// is limited per calling token; a person (a session, a password exchange) per client
    /// address. The bootstrap, the break-glass secret and the system are not limited.
    fn check_mint_rate(&self, caller: &Caller) -> Result<()> {
        match caller.principal.kind {
            PrincipalKind::Token(_) => {
                if let Some(l) = &self.limits.mint_per_token {
                    l.take(&caller.principal.actor())?;
                }
            }
            PrincipalKind::User(_) => {
                if let (Some(l), Some(ip)) = (&self.limits.mint_per_ip, caller.meta.ip) {
                    l.take(&ip)?;
                }
            }
            PrincipalKind::Bootstrap | PrincipalKind::BreakGlass | PrincipalKind::System => {}
        }
        Ok(())
    }

    /// The sign-in limit per client address, taken before any password is hashed.
    fn check_login_rate(&self, ip: Option<IpAddr>) -> Result<()> {
        match (&self.limits.login, ip) {
            (Some(l), Some(ip)) => l.take(&ip).inspect_err(|_| {
                metrics::counter!("latchkey_login_total", "result" => "rate_limited").increment(1);
            }),
            _ => Ok(()),
        }
    }

    /// Periodic upkeep: forgets rate-limit state of clients that have recovered.
    pub fn housekeeping(&self) {
        self.limits.housekeeping();
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// The org a request acts in: the caller's own unless it names another, which only a
    /// `platform:admin` may, and which must exist. Anything else is the uniform not-found. The
    /// break-glass secret has no org of its own: it must name one.
    async fn target_org(&self, caller: &Principal, requested: Option<Uuid>) -> Result<Uuid> {
        match requested {
            None if caller.kind == PrincipalKind::BreakGlass => Err(Error::invalid(
                "the break-glass secret belongs to no org: name the org_id to act in",
            )),
            None => Ok(caller.org_id),
            Some(id) if id == caller.org_id => Ok(id),
            Some(id) if caller.is_platform_admin() => match self.store.get_org(id).await? {
                Some(_) => Ok(id),
                None => Err(Error::NotFound),
            },
            Some(_) => Err(Error::NotFound),
        }
    }
}

/// A random one-time value for a form, so the console can tell a form sent twice.
pub fn new_form_nonce() -> String {
    users::random_secret()
        .map(|s| s.expose().clone())
        .unwrap_or_default()
}

/// Runs CPU-heavy work (an Argon2id hash, a large usage batch) on the blocking pool, off the
/// threads that answer requests.
///
/// # Errors
/// `internal` if `f` panicked.
async fn off_request_threads<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.into()))
}
