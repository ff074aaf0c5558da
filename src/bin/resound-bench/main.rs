//! `resound-bench`: load and latency benchmarks for Resound (or any Pusher-protocol server),
//! always against loopback, always bounded in count and time.
//!
//! The process started by the user coordinates: it re-executes itself as `worker` processes
//! that hold the client connections (spreading sockets over processes and 127.0.0.x source
//! addresses), publishes over HTTP itself, and merges what the workers measured into one
//! report. `baseline-server` is the minimal broadcaster that results are compared against.
//!
//! ```text
//! resound-bench connections --connections 10000 --channels-per-conn 2 --rate 2000 --server-pid PID
//! resound-bench fanout --subscribers 1000 --channels 10 --rate 1000 --duration 10 [--via client-events]
//! resound-bench fanout --ab --rounds 4 ...      # target and baseline interleaved, ratios reported
//! resound-bench chat --connections 10000 --room-size 10 --rate 10000 --typing-share 0.5
//! resound-bench storm --connections 5000 --steady 100 --rate 20 --close fin
//! resound-bench storm --ab --rounds 3 ...       # first accept as a ratio to the baseline's
//! resound-bench baseline-server --port 8090
//! ```
//!
//! Every scenario takes `--url --app-id --key --secret --json --server-pid --duration
//! --workers --baseline`; `--help` on each lists the rest.

mod ab;
mod baseline;
mod chat;
mod cli;
mod connections;
mod fanout;
mod fleet;
mod ipc;
mod payload;
mod publish;
mod report;
mod run;
mod sign;
mod stats;
mod storm;
mod worker;
mod wsclient;

use anyhow::{Context, Result};
use clap::Parser;

use crate::baseline::BaselineChild;
use crate::cli::{Cli, Cmd, CommonArgs};
use crate::report::Report;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Worker => worker::run(),
        Cmd::BaselineServer(args) => baseline::serve(
            args.port,
            args.exit_after
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(std::time::Duration::from_secs_f64),
            args.exit_on_stdin_eof,
        ),
        command => coordinate(command),
    };
    if let Err(e) = result {
        eprintln!("resound-bench: {e:#}");
        std::process::exit(1);
    }
}

fn coordinate(command: Cmd) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(async move {
        match command {
            Cmd::Connections(args) => {
                let report = with_target(&args.common, |setup| {
                    let args = args.clone();
                    async move { connections::run(&args, &setup).await }
                })
                .await?;
                report.print(args.common.json);
            }
            Cmd::Fanout(args) => {
                let reports = fanout::run(&args).await?;
                // A/B runs print each run as it finishes; only the summary is left.
                let skip = if args.ab {
                    reports.len().saturating_sub(1)
                } else {
                    0
                };
                for report in reports.iter().skip(skip) {
                    report.print(args.common.json);
                }
            }
            Cmd::Chat(args) => {
                let report = with_target(&args.common, |setup| {
                    let args = args.clone();
                    async move { chat::run(&args, &setup).await }
                })
                .await?;
                report.print(args.common.json);
            }
            Cmd::Storm(args) if args.ab => {
                // Each run is printed as it finishes; only the summary is left.
                storm::run_ab(&args).await?.print(args.common.json);
            }
            Cmd::Storm(args) => {
                let report = with_target(&args.common, |setup| {
                    let args = args.clone();
                    async move { storm::run(&args, &setup).await }
                })
                .await?;
                report.print(args.common.json);
            }
            Cmd::Worker | Cmd::BaselineServer(_) => {}
        }
        Ok(())
    })
}

/// Runs `scenario` against `--url`, or against a freshly started baseline with `--baseline`.
async fn with_target<F, Fut>(common: &CommonArgs, scenario: F) -> Result<Report>
where
    F: FnOnce(run::Setup) -> Fut,
    Fut: std::future::Future<Output = Result<Report>>,
{
    if common.baseline {
        let baseline = BaselineChild::start().await?;
        let mut setup = common.setup(Some(baseline.port))?;
        if setup.server_pid.is_none() {
            setup.server_pid = baseline.pid;
        }
        let result = scenario(setup).await;
        baseline.stop().await;
        result
    } else {
        scenario(common.setup(None)?).await
    }
}
