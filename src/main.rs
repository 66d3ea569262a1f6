//! Parses the command line, sets up logging and runs the chosen command; nothing else.

use clap::Parser;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use vfi_orchestrator::app::{self, App};
use vfi_orchestrator::config::{Cli, Command, TokenCommand};
use vfi_orchestrator::{dev, http, store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let app = App::build(&args).await?;
            let shutdown = CancellationToken::new();
            app::cancel_on_signal(shutdown.clone());
            app.run(shutdown).await
        }
        Command::Migrate(args) => {
            let pool = store::pool(&args.database_url, 1)?;
            store::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Openapi => {
            println!("{}", http::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Token(TokenCommand::Create(args)) => {
            let pool = store::pool(&args.database.database_url, 1)?;
            let request = http::tokens::TokenRequest {
                name: args.name,
                scope: args.scope.into(),
                tasks: (!args.tasks.is_empty()).then_some(args.tasks),
                max_active_runs: args.max_active_runs,
            };
            let created = http::tokens::create_token(&pool, &request)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The token goes to stdout alone, so scripts can capture it; it is never shown again.
            println!("{}", created.token);
            Ok(())
        }
        Command::ReleaseFinalizers(args) => {
            let client = kube::Client::try_default().await?;
            let released = vfi_orchestrator::cluster::uninstall::release_finalizers(
                &client,
                &args.installation,
                &args.namespaces,
            )
            .await?;
            tracing::info!(
                jobs = released.jobs,
                pods = released.pods,
                "released the service's finalizers"
            );
            Ok(())
        }
    }
}
