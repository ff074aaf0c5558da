//! `fanout`: S subscribers over C channels, publishers at a fixed rate for D seconds (signed
//! HTTP API, or `client-` events on private channels), end-to-end latency, loss and
//! duplicates; and the A/B mode that interleaves the target with the built-in baseline and
//! reports target/baseline ratios so machine noise cancels.

use anyhow::Result;

use crate::ab;
use crate::baseline::BaselineChild;
use crate::cli::{FanoutArgs, Via};
use crate::connections::{add_rss, workers};
use crate::ipc::{Assignment, ChannelKind, ChannelPlan, SenderSpec};
use crate::publish::HttpPlan;
use crate::report::{latency_value, round3, Report};
use crate::run::{self, ClientPublishers, Outcome, Setup, Workload};

fn workload(args: &FanoutArgs, setup: &Setup) -> Result<Workload> {
    let duration = args.common.duration_or(10.0)?;
    let channels = args.channels.max(1);
    let (prefix, kind) = match args.via {
        Via::Http => (args.channel_prefix.clone(), ChannelKind::Public),
        Via::ClientEvents => (
            format!("private-{}", args.channel_prefix),
            ChannelKind::Private,
        ),
    };
    let plan = ChannelPlan {
        prefix: prefix.clone(),
        kind,
        total: channels,
        assignment: Assignment::Spread {
            per_conn: args.channels_per_sub.max(1),
        },
    };
    let (http, client_publishers) = match args.via {
        Via::Http => (
            Some(HttpPlan {
                target: setup.publish_target.clone(),
                app_id: setup.app_id.clone(),
                rate: args.rate,
                connections: args.http_conns.max(1),
                event: "bench".to_string(),
                channel_prefix: prefix.clone(),
                channels,
                pad: args.payload_bytes,
            }),
            None,
        ),
        Via::ClientEvents => {
            let per_conn = args.client_event_rate.max(0.1);
            let publishers = ((args.rate / per_conn).ceil() as u64).max(1);
            (
                None,
                Some(ClientPublishers {
                    connections: publishers,
                    channels: ChannelPlan {
                        assignment: Assignment::Strided { stride: publishers },
                        ..plan.clone()
                    },
                    sender: SenderSpec {
                        event: "client-bench".to_string(),
                        rate: args.rate / publishers as f64,
                        pad: args.payload_bytes,
                        duration_ms: 0,
                    },
                }),
            )
        }
    };
    Ok(Workload {
        subscribers: args.subscribers,
        channels: plan,
        typing: None,
        client_publishers,
        http,
        duration,
        hold: false,
        storm: None,
    })
}

/// Runs the scenario as asked: against the target, the baseline, or both interleaved.
pub async fn run(args: &FanoutArgs) -> Result<Vec<Report>> {
    if args.ab {
        return run_ab(args).await;
    }
    if args.common.baseline {
        let baseline = BaselineChild::start().await?;
        let mut setup = args.common.setup(Some(baseline.port))?;
        setup.server_pid = baseline.pid;
        let result = run_once(args, &setup).await;
        baseline.stop().await;
        return Ok(vec![result?]);
    }
    let setup = args.common.setup(None)?;
    Ok(vec![run_once(args, &setup).await?])
}

async fn run_once(args: &FanoutArgs, setup: &Setup) -> Result<Report> {
    let workload = workload(args, setup)?;
    let outcome = run::run(setup, &workload).await?;
    Ok(report("fanout", args, setup, &workload, &outcome))
}

async fn run_ab(args: &FanoutArgs) -> Result<Vec<Report>> {
    let pairs = ab::interleave(&args.common, args.rounds, |setup| async move {
        run_once(args, &setup).await
    })
    .await?;
    let mut summary = Report::new("fanout-ab", &args.common.url, false);
    summary
        .param("rounds", pairs.len())
        .param("subscribers", args.subscribers)
        .param("channels", args.channels)
        .param("rate", args.rate)
        .param("via", via_name(args.via))
        .param("duration_s", args.common.duration.unwrap_or(10.0));
    let mut throughput_ratios = Vec::new();
    let mut p99_ratios = Vec::new();
    let mut reports = Vec::new();
    for (round, (a, b)) in pairs.into_iter().enumerate() {
        let (a_m, b_m) = (metrics(&a), metrics(&b));
        let t = ab::ratio(a_m.deliveries_per_s, b_m.deliveries_per_s);
        let p = ab::ratio(a_m.p99_ms, b_m.p99_ms);
        throughput_ratios.push(t);
        p99_ratios.push(p);
        summary.result(
            &format!("round_{}", round + 1),
            serde_json::json!({
                "target_deliveries_per_s": round3(a_m.deliveries_per_s),
                "baseline_deliveries_per_s": round3(b_m.deliveries_per_s),
                "target_p99_ms": round3(a_m.p99_ms),
                "baseline_p99_ms": round3(b_m.p99_ms),
                "target_lost": a_m.lost,
                "baseline_lost": b_m.lost,
                "deliveries_per_s_ratio": round3(t),
                "p99_ratio": round3(p),
            }),
        );
        reports.push(a);
        reports.push(b);
    }
    summary
        .result(
            "deliveries_per_s_ratio",
            round3(ab::geometric_mean(&throughput_ratios)),
        )
        .result("p99_ratio", round3(ab::geometric_mean(&p99_ratios)))
        .result("p99_ratio_range", ab::spread(&p99_ratios))
        .result(
            "note",
            "ratios are target/baseline, geometric mean over rounds; throughput < 1 and p99 > 1 mean the target is slower",
        );
    reports.push(summary);
    Ok(reports)
}

struct Metrics {
    deliveries_per_s: f64,
    p99_ms: f64,
    lost: u64,
}

fn metrics(report: &Report) -> Metrics {
    Metrics {
        deliveries_per_s: ab::number(report, &["deliveries_per_s"]).unwrap_or(0.0),
        p99_ms: ab::number(report, &["latency", "p99_ms"]).unwrap_or(0.0),
        lost: report
            .get_result("lost")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Http => "http",
        Via::ClientEvents => "client-events",
    }
}

fn report(
    scenario: &str,
    args: &FanoutArgs,
    setup: &Setup,
    workload: &Workload,
    outcome: &Outcome,
) -> Report {
    let mut report = Report::new(scenario, &setup.url, setup.baseline);
    report
        .param("subscribers", args.subscribers)
        .param("channels", args.channels)
        .param("channels_per_sub", args.channels_per_sub)
        .param("rate", args.rate)
        .param("via", via_name(args.via))
        .param("duration_s", workload.duration.as_secs_f64())
        .param("payload_pad_bytes", args.payload_bytes)
        .param("workers", workers(setup, args.subscribers));
    if let Some(p) = &workload.client_publishers {
        report.param("publisher_connections", p.connections);
    } else {
        report.param("http_conns", args.http_conns);
    }
    add_delivery_results(&mut report, outcome);
    report
}

/// The rows fanout and chat share: connection, publishing, delivery, latency, memory.
pub fn add_delivery_results(report: &mut Report, outcome: &Outcome) {
    let c = &outcome.connect;
    let window = outcome.window.as_secs_f64();
    report
        .result("subscribers_connected", c.connected)
        .result("subscribe_failures", c.failed)
        .result("connect_time_s", round3(c.time_to_all.as_secs_f64()));
    if outcome.publisher_connect_failures > 0 {
        report.result(
            "publisher_connect_failures",
            outcome.publisher_connect_failures,
        );
    }
    if !c.failure_samples.is_empty() {
        report.result("failure_samples", c.failure_samples.join(" | "));
    }
    report.result("publish_window_s", round3(window));
    if outcome.window_start_ns > 0 {
        // Wall-clock bounds, so a script can read other processes' CPU over the same window.
        let start_ms = outcome.window_start_ns / 1_000_000;
        let len_ms = u64::try_from(outcome.window.as_millis()).unwrap_or(u64::MAX);
        report
            .result("publish_window_start_unix_ms", start_ms)
            .result(
                "publish_window_end_unix_ms",
                start_ms.saturating_add(len_ms),
            );
    }
    let per_s = |n: u64| round3(if window > 0.0 { n as f64 / window } else { 0.0 });
    if let Some(http) = &outcome.http {
        report
            .result("http_published", http.attempted)
            .result("http_publish_ok", http.ok())
            .result("http_publish_errors", http.errors)
            .result("http_publish_rate_per_s", per_s(http.ok()))
            .result(
                "http_publish_latency",
                latency_value(&http.latency.summary()),
            );
        if !http.error_samples.is_empty() {
            report.result("http_error_samples", http.error_samples.join(" | "));
        }
    }
    if outcome.client_sent > 0 {
        report
            .result("client_events_sent", outcome.client_sent)
            .result("client_event_rate_per_s", per_s(outcome.client_sent))
            .result("client_event_errors", outcome.client_publish_errors);
    }
    let t = &outcome.totals;
    report
        .result("deliveries", t.deliveries)
        .result("deliveries_per_s", round3(outcome.deliveries_per_s()))
        .result("expected_deliveries", t.expected)
        .result("lost", t.lost)
        .result("duplicated", t.duplicates)
        .result("surplus", t.surplus)
        .result("misrouted", t.misrouted)
        .result("latency", latency_value(&outcome.latency_all()))
        .result("server_errors", t.server_errors)
        .result("disconnects", t.disconnects);
    add_rss(report, outcome);
}
