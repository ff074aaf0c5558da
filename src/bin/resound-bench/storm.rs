//! `storm`: N clients subscribed to a channel while a publisher sends at a low rate; then all
//! of them disconnect at once and reconnect. Reports how long until the server accepts
//! connections again (first `connection_established` after the storm started), how long
//! until everyone is back, and delivery latency before, during and after the storm window.
//! A few steady connections stay through the storm; only their loss is accounted. While the
//! storm lasts the coordinator also opens fresh probe connections one after another, so the
//! accept latency a newcomer sees during the storm is reported too. With `--ab` the target and
//! the baseline are run in turn and the times to the first accept and to everyone back are
//! reported as target/baseline ratios from the same session.

use anyhow::Result;
use std::time::Duration;

use crate::ab;
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

/// `--ab`: the storm against the target, then the baseline, `--rounds` times; the summary.
pub async fn run_ab(args: &StormArgs) -> Result<Report> {
    let pairs = ab::interleave(&args.common, args.rounds, |setup| async move {
        run(args, &setup).await
    })
    .await?;
    let mut summary = Report::new("storm-ab", &args.common.url, false);
    summary
        .param("rounds", pairs.len())
        .param("connections", args.connections)
        .param("steady", args.steady)
        .param("close", close_name(args.close));
    let mut first_ratios = Vec::new();
    let mut all_ratios = Vec::new();
    const FIRST: &[&str] = &["first_accept_after_storm_ms"];
    const ALL: &[&str] = &["all_reconnected_after_storm_ms"];
    const PROBE_P99: &[&str] = &["probe_accept_latency", "p99_ms"];
    for (round, (a, b)) in pairs.iter().enumerate() {
        let get = |r: &Report, path: &[&str]| ab::number(r, path).unwrap_or(0.0);
        let first = ab::ratio(get(a, FIRST), get(b, FIRST));
        let all = ab::ratio(get(a, ALL), get(b, ALL));
        first_ratios.push(first);
        all_ratios.push(all);
        summary.result(
            &format!("round_{}", round + 1),
            serde_json::json!({
                "target_first_accept_ms": get(a, FIRST),
                "baseline_first_accept_ms": get(b, FIRST),
                "target_all_reconnected_ms": get(a, ALL),
                "baseline_all_reconnected_ms": get(b, ALL),
                "target_probe_accept_p99_ms": get(a, PROBE_P99),
                "baseline_probe_accept_p99_ms": get(b, PROBE_P99),
                "target_steady_lost": a.get_result("steady_lost"),
                "first_accept_ratio": round3(first),
                "all_reconnected_ratio": round3(all),
            }),
        );
    }
    summary
        .result(
            "first_accept_ratio",
            round3(ab::geometric_mean(&first_ratios)),
        )
        .result("first_accept_ratio_range", ab::spread(&first_ratios))
        .result(
            "all_reconnected_ratio",
            round3(ab::geometric_mean(&all_ratios)),
        )
        .result("all_reconnected_ratio_range", ab::spread(&all_ratios))
        .result(
            "note",
            "ratios are target/baseline, geometric mean over rounds; below 1 means the target is back sooner than a broadcaster that does no protocol work",
        );
    Ok(summary)
}

fn close_name(close: CloseMode) -> &'static str {
    match close {
        CloseMode::Ws => "ws",
        CloseMode::Fin => "fin",
        CloseMode::Rst => "rst",
    }
}
