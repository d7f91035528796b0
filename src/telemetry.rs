//! Logging (tracing) and metrics (Prometheus).

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global log subscriber on stderr. The filter comes from `LATCHKEY_LOG`
/// (default `info`). Text logs are coloured only when stderr is a terminal and `NO_COLOR` is
/// not set, so a file, a pipe or a journal gets plain text. A second call does nothing.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LATCHKEY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Whether to colour logs: on a terminal, unless `NO_COLOR` is set to anything but empty
/// (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The process-wide Prometheus recorder, installed on first use, with every counter of the
/// design present from the start (at zero).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("latchkey_verify_duration_seconds".into()),
                    &[
                        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                        0.005, 0.01, 0.025, 0.05, 0.1,
                    ],
                )
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
            for name in [
                "latchkey_token_created_total",
                "latchkey_token_revoked_total",
                "latchkey_list_tokens_total",
            ] {
                metrics::counter!(name).absolute(0);
            }
            for result in [
                "valid",
                "invalid",
                "insufficient_permissions",
                "rate_limited",
            ] {
                metrics::counter!("latchkey_verify_total", "result" => result).absolute(0);
            }
            for limit in crate::service::ratelimit::LABELS {
                metrics::counter!("latchkey_rate_limited_total", "limit" => limit).absolute(0);
            }
            handle
        })
        .clone()
}
