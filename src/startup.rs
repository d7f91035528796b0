//! Builds the application: store, service, router; binds the port and reports it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::service::{Authority, AuthorityConfig, BootstrapOutcome};
use crate::{console, grpc, http, server, store, telemetry};

pub use crate::server::ServerLimits;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    /// Connection pool of a server database (PostgreSQL).
    pub db_pool: store::PoolOptions,
    /// Port 0 picks a free port; see [`Application::local_addr`].
    pub listen: SocketAddr,
    pub authority: AuthorityConfig,
    pub usage_flush_interval: Duration,
    pub max_body_bytes: usize,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether the session cookie carries `Secure` (false only with `--plain-http`).
    pub secure_cookies: bool,
    pub limits: ServerLimits,
    /// Also serve `ibex.auth.v1.AuthService` (`--compat-ibex`).
    pub compat_ibex: bool,
}

/// A built server, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    router: server::Bounded<server::OnePort<http::Rest>>,
    authority: Arc<Authority>,
    metrics: PrometheusHandle,
    flush_interval: Duration,
    limits: ServerLimits,
}

impl Application {
    /// Opens and migrates the database, bootstraps an empty one (printing the admin token to
    /// stderr once), and binds the listen address.
    ///
    /// # Errors
    /// Database, migration, config or bind failures, with context.
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // The recorder first: the service takes its metric handles when it is built.
        let metrics = telemetry::metrics();
        let store = store::connect_with(&settings.database_url, &settings.db_pool).await?;
        let authority = Arc::new(Authority::new(store, settings.authority));
        authority.spawn_invalidation_listener().await?;
        authority.refresh_legacy_schemes().await?;
        if let Some(out) = authority.bootstrap_if_empty(clock.now()).await? {
            print_bootstrap(&out);
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let rest = http::router(
            authority.clone(),
            clock.clone(),
            metrics.clone(),
            settings.max_body_bytes,
            settings.secure_cookies,
        )
        .merge(console::router(
            authority.clone(),
            clock.clone(),
            settings.secure_cookies,
        ));
        let trusted = Arc::new(settings.trusted_proxies);
        let grpc = grpc::router(
            authority.clone(),
            clock.clone(),
            settings.max_body_bytes,
            settings.compat_ibex,
            trusted.clone(),
        )
        .await?;
        let router = server::bounded(server::OnePort::new(rest, grpc, trusted), &settings.limits);
        Ok(Self {
            listener,
            clock,
            router,
            authority,
            metrics,
            flush_interval: settings.usage_flush_interval,
            limits: settings.limits,
        })
    }

    /// The bound address (the real port when built with port 0).
    ///
    /// # Errors
    /// If the socket has no local address (does not happen for a bound TCP socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn authority(&self) -> Arc<Authority> {
        self.authority.clone()
    }

    /// Serves until `shutdown` completes, then drains connections and flushes usage counters.
    ///
    /// # Errors
    /// Server I/O failures.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_flusher, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = {
            let authority = self.authority.clone();
            let metrics = self.metrics.clone();
            let every = self.flush_interval;
            let clock = self.clock.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                // Ended sessions and hourly usage counts older than 7 days are deleted (and the live
                // sessions counted) about once a minute.
                let sessions_every = (60_000 / every.as_millis().max(1)).max(1) as u64;
                let mut ticks: u64 = 0;
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // A flush in progress is never cancelled: only the wait between flushes is.
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = &mut stopped => break,
                    }
                    // Histogram samples wait in the recorder until upkeep folds them in; without
                    // it they pile up for as long as nobody scrapes /metrics. Under load that is
                    // one sample per verification, milliseconds of work a second: on a request
                    // thread it would stall every request queued behind it, so it runs on the
                    // blocking pool, with the rate limiters' pruning.
                    let (a, m) = (authority.clone(), metrics.clone());
                    let upkept = tokio::task::spawn_blocking(move || {
                        a.housekeeping();
                        m.run_upkeep();
                    });
                    if let Err(e) = upkept.await {
                        tracing::warn!(error = %e, "housekeeping or metrics upkeep failed");
                    }
                    if let Err(e) = authority.flush_usage().await {
                        tracing::warn!(error = %e, "usage flush failed; counts kept for the next one");
                    }
                    if ticks.is_multiple_of(sessions_every) {
                        if let Err(e) = authority.clean_sessions(clock.now()).await {
                            tracing::warn!(error = %e, "cleaning ended sessions failed");
                        }
                        if let Err(e) = authority.clean_usage_hours(clock.now()).await {
                            tracing::warn!(error = %e, "deleting old hourly usage counts failed");
                        }
                        if let Err(e) = authority.refresh_legacy_schemes().await {
                            tracing::warn!(error = %e, "reading the schemes of imported keys failed");
                        }
                    }
                    ticks += 1;
                }
            })
        };
        let authority = self.authority.clone();
        let shutdown = async move {
            shutdown.await;
            authority.stop_watches();
        };
        let served = server::serve(
            self.listener,
            self.router,
            self.limits,
            shutdown,
            self.limits.request_timeout,
        )
        .await;
        let _ = stop_flusher.send(());
        let _ = flusher.await;
        let flushed = self.authority.flush_usage().await;
        tracing::info!(tokens = flushed.as_ref().ok(), "usage flushed; stopped");
        served.context("serving HTTP")?;
        flushed?;
        Ok(())
    }
}

fn print_bootstrap(out: &BootstrapOutcome) {
    // Straight to stderr, not through the log pipeline: this is the one place a plaintext token
    // is printed by the server, once.
    eprintln!(
        "\nLatchkey bootstrap: created org {:?} ({}) and an admin token (platform:admin and every \
         system permission).\nIt is shown this once and will not be shown again; store it now:\n\n{}\n",
        out.org.name,
        out.org.id,
        out.plaintext.expose()
    );
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
