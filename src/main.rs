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

/// Runs the command; a failure prints `error: ` and its cause chain on one line of stderr (never
/// a backtrace, whatever `RUST_BACKTRACE` says) and exits with status 1.
fn main() -> ExitCode {
    latchkey::allocator::tune();
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
            eprintln!("error: {}", latchkey::error::one_line(&e));
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
