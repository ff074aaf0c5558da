//! `connections`: open N idle connections, each subscribed to M public channels, at a target
//! rate; report the connect rate, time to all-connected, failures and, with `--server-pid`,
//! the server's resident memory per connection.

use anyhow::Result;

use crate::cli::ConnectionsArgs;
use crate::ipc::{Assignment, ChannelKind, ChannelPlan};
use crate::report::{latency_value, round3, Report};
use crate::run::{self, Setup, Workload};

pub async fn run(args: &ConnectionsArgs, setup: &Setup) -> Result<Report> {
    let mut setup = setup.clone();
    if let Some(rate) = args.rate {
        setup.connect_rate = rate.max(0.0);
    }
    let hold = args.common.duration_or(2.0)?;
    let workload = Workload {
        subscribers: args.connections,
        channels: ChannelPlan {
            prefix: "bench-".to_string(),
            kind: ChannelKind::Public,
            total: args.channels.max(1),
            assignment: Assignment::Spread {
                per_conn: args.channels_per_conn.max(1),
            },
        },
        typing: None,
        client_publishers: None,
        http: None,
        duration: hold,
        hold: true,
        storm: None,
    };
    let outcome = run::run(&setup, &workload).await?;

    let mut report = Report::new("connections", &setup.url, setup.baseline);
    report
        .param("connections", args.connections)
        .param("channels_per_conn", args.channels_per_conn)
        .param("channels", args.channels)
        .param("target_rate", setup.connect_rate)
        .param("workers", workers(&setup, args.connections))
        .param("source_ips", setup.source_ips.len())
        .param("hold_s", hold.as_secs_f64());
    let c = &outcome.connect;
    let secs = c.time_to_all.as_secs_f64();
    report
        .result("connected", c.connected)
        .result("failed", c.failed)
        .result("time_to_all_connected_s", round3(secs))
        .result(
            "connect_rate_per_s",
            round3(if secs > 0.0 {
                c.connected as f64 / secs
            } else {
                0.0
            }),
        )
        .result("connect_latency", latency_value(&c.latency))
        .result("disconnects_while_idle", outcome.totals.disconnects);
    if !c.failure_samples.is_empty() {
        report.result("failure_samples", c.failure_samples.join(" | "));
    }
    add_rss(&mut report, &outcome);
    Ok(report)
}

pub fn workers(setup: &Setup, connections: u64) -> usize {
    setup
        .workers
        .unwrap_or_else(|| run::default_workers(connections))
}

/// Server cost rows, when a server pid was given: memory (before, connected, at the end, per
/// connection) and user + system CPU over the send window, per delivery and per publish.
pub fn add_rss(report: &mut Report, outcome: &run::Outcome) {
    if let Some(before) = outcome.rss_before_kib {
        report.result("server_rss_before_kib", before);
    }
    if let Some(connected) = outcome.rss_connected_kib {
        report.result("server_rss_connected_kib", connected);
    }
    if let Some(after) = outcome.rss_after_kib {
        report.result("server_rss_end_kib", after);
    }
    if let Some(per) = outcome.rss_per_conn_kib() {
        report.result("server_rss_per_conn_kib", round3(per));
    }
    if let Some(cpu) = outcome.server_cpu {
        report.result("server_cpu_s", round3(cpu.as_secs_f64()));
        let deliveries = outcome.totals.deliveries;
        if deliveries > 0 {
            #[allow(clippy::cast_precision_loss)]
            let per = cpu.as_secs_f64() * 1e9 / deliveries as f64;
            report.result("server_cpu_ns_per_delivery", round3(per));
        }
        // A publish: an event sent by a client or accepted by the HTTP API.
        let publishes = outcome.client_sent + outcome.http.as_ref().map_or(0, |h| h.ok());
        if publishes > 0 {
            #[allow(clippy::cast_precision_loss)]
            let per = cpu.as_secs_f64() * 1e6 / publishes as f64;
            report.result("server_cpu_us_per_publish", round3(per));
        }
    }
}
