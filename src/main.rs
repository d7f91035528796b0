use std::sync::Arc;

use clap::Parser;
use latchkey::cli::{Cli, Command};
use latchkey::clock::{Clock, SystemClock};
use latchkey::service::Authority;
use latchkey::startup::{Application, shutdown_signal};
use latchkey::{config, store, telemetry};

// The verify path allocates a little on every request and the usage flush a lot at once;
// mimalloc's per-thread free lists cost less than glibc's arenas for both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            telemetry::init_logging(args.common.log_format);
            let settings = config::serve_settings(&args)?;
            let app = Application::build(settings, Arc::new(SystemClock)).await?;
            tracing::info!(address = %app.local_addr()?, "listening");
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Bootstrap(args) => {
            telemetry::init_logging(args.common.log_format);
            let authority = Authority::new(
                store::connect_with(
                    &args.common.database_url,
                    &config::pool_options(&args.common),
                )
                .await?,
                config::authority_config(&args.common)?,
            );
            let out = authority
                .bootstrap(&args.org_name, SystemClock.now())
                .await?;
            eprintln!(
                "{} org {:?} ({}); admin token {} follows on stdout. It will not be shown again.",
                if out.created_org { "created" } else { "using" },
                out.org.name,
                out.org.id,
                out.token_id,
            );
            println!("{}", out.plaintext.expose());
            Ok(())
        }
        Command::Token { client, command } => latchkey::client::token(&client, command).await,
        Command::Audit { client, command } => latchkey::client::audit(&client, command).await,
    }
}
