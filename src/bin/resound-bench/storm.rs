//! `storm`: N clients subscribed to a channel while a publisher sends at a low rate; then all
//! of them disconnect at once and reconnect. Reports how long until the server accepts
//! connections again (first `connection_established` after the storm started), how long
//! until everyone is back, and delivery latency before, during and after the storm window.
//! A few steady connections stay through the storm; only their loss is accounted. While the
//! storm lasts the coordinator also opens fresh probe connections one after another, so the
//! accept latency a newcomer sees during the storm is reported too.

use anyhow::Result;
use std::time::Duration;

use crate::cli::StormArgs;
use crate::connections::{add_rss, workers};
use crate::ipc::{Assignment, ChannelKind, ChannelPlan, CloseMode};
use crate::publish::HttpPlan;
use crate::report::{latency_value, round3, Report};
use crate::run::{self, Setup, StormPlan, Workload};

pub async fn run(args: &StormArgs, setup: &Setup) -> Result<Report> {
    let timeout = args.common.duration_or(30.0)?;
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let channels = args.channels.max(1);
    let prefix = "storm-";
    let workload = Workload {
        subscribers: args.connections + args.steady,
        channels: ChannelPlan {
            prefix: prefix.to_string(),
            kind: ChannelKind::Public,
            total: channels,
            assignment: Assignment::Spread { per_conn: 1 },
        },
        typing: None,
        client_publishers: None,
        http: Some(HttpPlan {
            target: setup.target.clone(),
            app_id: setup.app_id.clone(),
            rate: args.rate,
            connections: 1,
            event: "tick".to_string(),
            channel_prefix: prefix.to_string(),
            channels,
            pad: 0,
        }),
        duration: Duration::ZERO,
        hold: false,
        storm: Some(StormPlan {
            steady: args.steady,
            close: args.close,
            reconnect_inflight: args.reconnect_inflight.max(1),
            timeout,
            warmup: secs(args.warmup),
            post: secs(args.post),
        }),
    };
    let outcome = run::run(setup, &workload).await?;

    let mut report = Report::new("storm", &setup.url, setup.baseline);
    report
        .param("connections", args.connections)
        .param("steady", args.steady)
        .param("channels", channels)
        .param("publish_rate", args.rate)
        .param("close", close_name(args.close))
        .param("warmup_s", args.warmup)
        .param("post_s", args.post)
        .param("reconnect_limit_s", timeout.as_secs_f64())
        .param("workers", workers(setup, args.connections + args.steady));
    let c = &outcome.connect;
    report
        .result("connected", c.connected)
        .result("connect_failures", c.failed)
        .result("connect_time_s", round3(c.time_to_all.as_secs_f64()));
    if let Some(s) = &outcome.storm {
        let ms = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64() * 1_000.0));
        report
            .result("dropped", s.dropped)
            .result("reconnected", s.reconnected)
            .result("gave_up", s.gave_up)
            .result("failed_attempts", s.failed_attempts)
            .result("first_accept_after_storm_ms", ms(s.first_accept))
            .result("all_reconnected_after_storm_ms", ms(s.all_reconnected))
            .result("reconnect_latency", latency_value(&s.reconnect_latency))
            .result("probe_connects", s.probe.attempts)
            .result("probe_failures", s.probe.failures)
            .result(
                "probe_accept_latency",
                latency_value(&s.probe.accept_latency),
            );
    }
    if !c.failure_samples.is_empty() {
        report.result("failure_samples", c.failure_samples.join(" | "));
    }
    if let Some(http) = &outcome.http {
        report
            .result("published_ok", http.ok())
            .result("publish_errors", http.errors)
            .result(
                "http_publish_latency",
                latency_value(&http.latency.summary()),
            );
    }
    let t = &outcome.totals;
    let [before, during, after] = &outcome.latency;
    report
        .result("deliveries", t.deliveries)
        .result("latency_before_storm", latency_value(&before.summary()))
        .result("latency_during_storm", latency_value(&during.summary()))
        .result("latency_after_storm", latency_value(&after.summary()))
        .result("steady_expected", t.expected)
        .result("steady_lost", t.lost)
        .result("duplicated", t.duplicates)
        .result("server_errors", t.server_errors)
        .result("disconnects", t.disconnects);
    add_rss(&mut report, &outcome);
    Ok(report)
}

fn close_name(close: CloseMode) -> &'static str {
    match close {
        CloseMode::Ws => "ws",
        CloseMode::Fin => "fin",
        CloseMode::Rst => "rst",
    }
}
