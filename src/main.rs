//! The `resound` binary: command line → configuration → tracing → server, and the `probe`
//! health check that runs in its own process.

mod probe;

use std::path::PathBuf;
use std::time::Duration;

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
    /// Address to listen on; overrides `server.host` of every other source (the file,
    /// `REVERB_SERVER_HOST`, `RESOUND_SERVER__HOST`).
    #[arg(long, env = "RESOUND_HOST", global = true)]
    host: Option<String>,
    /// Port to listen on; overrides `server.port` of every other source (the file,
    /// `REVERB_SERVER_PORT`, `RESOUND_SERVER__PORT`).
    #[arg(long, env = "RESOUND_PORT", global = true, value_parser = parse_port)]
    port: Option<u16>,
    /// Log filter, e.g. `info` or `resound=debug`.
    #[arg(long, env = "RESOUND_LOG", default_value = "info", global = true)]
    log_level: String,
    /// Log format.
    #[arg(
        long,
        value_enum,
        env = "RESOUND_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
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
    /// Health check: GET `/up` (or `--path /ready`) on the configured port of this host;
    /// exit 0 on a 2xx answer, 1 otherwise (no curl needed in a container image).
    Probe {
        /// `/up`: the process serves. `/ready`: it also accepts traffic (not draining, Redis
        /// reachable when scaling is on).
        #[arg(long, default_value = "/up")]
        path: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

/// A port number. Kubernetes (for a Service named `resound`) and Docker links set
/// `RESOUND_PORT=tcp://IP:PORT` themselves: say so instead of a bare parse error.
fn parse_port(value: &str) -> Result<u16, String> {
    if value.starts_with("tcp://") || value.starts_with("udp://") {
        return Err(format!(
            "{value:?} is a service link that Kubernetes or Docker set for a Service or link named \"resound\", not a port: disable service links (enableServiceLinks: false) or name the Service differently"
        ));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a port number (0-65535)"))
}

/// jemalloc returns the pages of freed connections to the system (its decay settings are compiled
/// in from .cargo/config.toml; `_RJEM_MALLOC_CONF` overrides them at start).
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut process_env: Vec<(String, String)> = std::env::vars().collect();
    // The flags win over every source, so they join the environment under the names with the
    // highest precedence.
    if let Some(host) = &cli.host {
        process_env.push(("RESOUND_SERVER__HOST".into(), host.clone()));
    }
    if let Some(port) = cli.port {
        process_env.push(("RESOUND_SERVER__PORT".into(), port.to_string()));
    }
    let reload_env = process_env.clone();
    let sources = Sources {
        config_file: cli.config.as_deref(),
        env_file: cli.env_file.as_deref(),
        process_env,
    };
    let probing = matches!(cli.command, Some(Command::Probe { .. }));
    let config = match config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resound: configuration error: {e}");
            // A health check knows only healthy (0) and unhealthy (1).
            std::process::exit(if probing { 1 } else { 2 });
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            let text =
                toml::to_string_pretty(&config.effective).context("printing configuration")?;
            for w in &config.warnings {
                eprintln!("resound: warning: {w}");
            }
            println!("# configuration is valid\n{text}");
            return Ok(());
        }
        Some(Command::Probe { path, timeout }) => {
            let outcome = probe::target(&config.server).and_then(|addr| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the runtime")?
                    .block_on(probe::run(
                        addr,
                        config.server.tls.is_some(),
                        &path,
                        Duration::from_secs(timeout),
                    ))
            });
            if let Err(e) = outcome {
                eprintln!("resound probe: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        None => {}
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
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        for app in &config.apps {
            info!(app_id = %app.id, key = %app.key.as_str(), "app");
        }
        let server = Server::bind(config).await?;
        // SIGHUP reads the same sources again (the process environment as it was at start).
        // With `server.watch_config_ms`, an edit of these files reloads too.
        server.reloader().watch(
            cli.config
                .iter()
                .chain(cli.env_file.iter())
                .cloned()
                .collect(),
        );
        let (config_file, env_file, env) = (cli.config.clone(), cli.env_file.clone(), reload_env);
        server.reload_from(Box::new(move || {
            config::load(&Sources {
                config_file: config_file.as_deref(),
                env_file: env_file.as_deref(),
                process_env: env.clone(),
            })
        }));
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
