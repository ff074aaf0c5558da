//! The `resound` binary: command line → configuration → tracing → server.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::info;

use resound::config::{self, Sources};
use resound::server::Server;

#[derive(Parser)]
#[command(
    name = "resound",
    version,
    about = "A Pusher-protocol broadcast server"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// A `.env` file (Laravel's works as is: REVERB_* and REDIS_* are read).
    #[arg(long, global = true)]
    env_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `resound=debug`.
    #[arg(long, env = "RESOUND_LOG", default_value = "info", global = true)]
    log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it, secrets masked.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sources = Sources {
        config_file: cli.config.as_deref(),
        env_file: cli.env_file.as_deref(),
        process_env: std::env::vars().collect(),
    };
    let config = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resound: configuration error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        let text = toml::to_string_pretty(&config.effective).context("printing configuration")?;
        println!("# configuration is valid\n{text}");
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .with_context(|| format!("invalid log level {:?}", cli.log_level))?;
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        for app in &config.apps {
            info!(app_id = %app.id, key = %app.key.as_str(), "app");
        }
        let server = Server::bind(config).await?;
        if let Some(addr) = server.local_addr() {
            info!(%addr, "listening (WebSocket /app/{{key}}, HTTP API /apps/{{id}})");
        }
        server.run(shutdown_signal()).await;
        Ok::<(), anyhow::Error>(())
    })
}

async fn shutdown_signal() {
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
    info!("shutdown signal received");
}
