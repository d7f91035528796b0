use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use latchkey::cli::{Cli, Command, UserCommand};
use latchkey::clock::SystemClock;
use latchkey::startup::{Application, shutdown_signal};
use latchkey::{client, config, offline, telemetry};

// The verify path allocates a little on every request and the usage flush a lot at once;
// mimalloc's per-thread free lists cost less than glibc's arenas for both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Hands emptied memory back to the OS 10 ms after it empties (mimalloc 2's default) instead
/// of mimalloc 3's 1 s, unless `MIMALLOC_PURGE_DELAY` says otherwise. A node verifying more
/// tokens than its cache holds replaces cache entries at its request rate; a second of freed
/// entries held back was 30 MiB of its peak RSS at 90,000 misses a second.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, which it reads atomically; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
}

/// Runs the command; a failure prints `error: ` and its cause chain on one line of stderr (never
/// a backtrace, whatever `RUST_BACKTRACE` says) and exits with status 1.
fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            telemetry::init_logging(args.common.log_format);
            let settings = config::serve_settings(&args)?;
            let app = Application::build(settings, Arc::new(SystemClock)).await?;
            tracing::info!(address = %app.local_addr()?, "listening");
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Bootstrap(args) => offline::bootstrap(&args).await,
        Command::Backup(args) => offline::backup(&args).await,
        Command::Import(args) => offline::import(&args).await,
        Command::DevSeed(args) => offline::dev_seed(&args).await,
        Command::User {
            command: UserCommand::Create(args),
        } => offline::create_user(args).await,
        Command::User {
            command: UserCommand::Remote(cmd),
        } => client::user(cmd).await,
        Command::Login(args) => client::login(&args).await,
        Command::Token {
            client: args,
            command,
        } => client::token(&args, command).await,
        Command::Audit {
            client: args,
            command,
        } => client::audit(&args, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_mimallocs_and_is_set_to_10_ms() {
        // Arrange: mimalloc 3's default for this option is 1000 ms; another option number
        // would hold another default.
        // SAFETY: reads an option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };

        // Act
        tune_allocator();

        // Assert
        // SAFETY: reads an option.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!((before, after), (1000, 10));
    }
}
