//! The workload runner every scenario shares: split the connections into worker jobs, connect
//! them, start the senders and HTTP publishers, optionally run a reconnection storm, stop,
//! tell the workers what was published, and merge what they measured.
//!
//! Scenarios only describe a `Workload` and turn the `Outcome` into a report; the phase order
//! lives here once.

use anyhow::{Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::sleep;

use crate::fleet::Fleet;
use crate::ipc::{
    Assignment, ChannelPlan, CloseMode, Command, Event, JobSpec, ReadyReport, SenderSpec,
    StormReport, StormSpec, TargetSpec, WorkerResult,
};
use crate::payload::{self, now_ns, Control};
use crate::publish::{self, HttpOutcome, HttpPlan};
use crate::report::{cpu_time, rss_kib};
use crate::stats::{Latency, LatencySummary};
use crate::wsclient::{self, Incoming};

/// Settings every scenario shares (from the common command-line options).
#[derive(Debug, Clone)]
pub struct Setup {
    pub target: TargetSpec,
    /// Where publishers send (`--publish-url`; else `target`).
    pub publish_target: TargetSpec,
    pub url: String,
    /// The target is the built-in baseline, not the server under test.
    pub baseline: bool,
    pub app_id: String,
    pub workers: Option<usize>,
    pub source_ips: Vec<Ipv4Addr>,
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub connect_timeout: Duration,
    pub drain: Duration,
    pub server_pid: Option<u32>,
    /// Share of the subscriber connections that offer permessage-deflate.
    pub deflate_share: f64,
}

/// Client-event publishers on their own worker (`fanout --via client-events`).
#[derive(Debug, Clone)]
pub struct ClientPublishers {
    pub connections: u64,
    pub channels: ChannelPlan,
    pub sender: SenderSpec,
}

#[derive(Debug, Clone)]
pub struct StormPlan {
    pub steady: u64,
    pub close: CloseMode,
    pub reconnect_inflight: usize,
    pub timeout: Duration,
    pub warmup: Duration,
    pub post: Duration,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Workload {
    pub subscribers: u64,
    pub channels: ChannelPlan,
    /// Client events sent by the subscribers themselves (chat typing).
    pub typing: Option<SenderSpec>,
    pub client_publishers: Option<ClientPublishers>,
    pub http: Option<HttpPlan>,
    /// How long to publish (or, with `hold`, how long to keep idle connections open).
    pub duration: Duration,
    pub hold: bool,
    pub storm: Option<StormPlan>,
}

#[derive(Debug, Default)]
pub struct ConnectOutcome {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// From the first attempt to the last connection subscribed.
    pub time_to_all: Duration,
    pub latency: LatencySummary,
    pub failure_samples: Vec<String>,
}

#[derive(Debug, Default)]
pub struct StormOutcome {
    pub dropped: u64,
    pub reconnected: u64,
    pub gave_up: u64,
    pub failed_attempts: u64,
    /// Storm start to the first `connection_established` of a reconnection.
    pub first_accept: Option<Duration>,
    /// Storm start to the last reconnection subscribed.
    pub all_reconnected: Option<Duration>,
    pub reconnect_latency: LatencySummary,
    pub probe: ProbeOutcome,
}

/// Fresh connections opened one after another by the coordinator while the storm lasts.
#[derive(Debug, Default)]
pub struct ProbeOutcome {
    pub attempts: u64,
    pub failures: u64,
    /// Connect to `connection_established`, per successful probe.
    pub accept_latency: LatencySummary,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub connect: ConnectOutcome,
    pub publisher_connect_failures: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The server's CPU time (user + system) from the start of publishing until every
    /// delivery was drained, when a server pid was given.
    pub server_cpu: Option<Duration>,
    pub window: Duration,
    /// When the publish window began (ns since the Unix epoch; 0: no window).
    pub window_start_ns: u64,
    pub http: Option<HttpOutcome>,
    /// Client events sent (typing and client-event publishers).
    pub client_sent: u64,
    /// `pusher:error` frames received by client-event publishers.
    pub client_publish_errors: u64,
    pub totals: WorkerResult,
    pub latency: [Latency; 3],
    pub storm: Option<StormOutcome>,
}

impl Outcome {
    /// All deliveries' latency, whatever the phase.
    pub fn latency_all(&self) -> LatencySummary {
        let mut all = Latency::new();
        for l in &self.latency {
            all.merge(l);
        }
        all.summary()
    }

    pub fn deliveries_per_s(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.totals.deliveries as f64 / secs
        } else {
            0.0
        }
    }

    pub fn rss_per_conn_kib(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_connected_kib?);
        let n = self.connect.connected.max(1) as f64;
        Some((after as f64 - before as f64) / n)
    }
}

/// Default worker count: at least two (the machine has two cores) and few enough connections
/// per process to stay far below the 20,000 open-file limit.
pub fn default_workers(connections: u64) -> usize {
    usize::try_from(connections.div_ceil(6_000))
        .unwrap_or(1)
        .max(2)
}

fn split(total: u64, parts: usize, align: u64) -> Vec<(u64, u64)> {
    let parts = parts.max(1) as u64;
    let align = align.max(1);
    let per = total.div_ceil(parts).div_ceil(align) * align;
    let mut ranges = Vec::new();
    let mut first = 0;
    while first < total {
        let count = per.min(total - first);
        ranges.push((first, count));
        first += count;
    }
    ranges
}

fn ready_of(event: Event) -> Result<ReadyReport, Event> {
    match event {
        Event::Ready(r) => Ok(r),
        other => Err(other),
    }
}

pub async fn run(setup: &Setup, workload: &Workload) -> Result<Outcome> {
    let workers = setup
        .workers
        .unwrap_or_else(|| default_workers(workload.subscribers))
        .max(1);
    let align = match workload.channels.assignment {
        Assignment::Rooms { size } => size,
        _ => 1,
    };
    let ranges = split(workload.subscribers, workers, align);
    let per_worker_rate = if setup.connect_rate > 0.0 {
        setup.connect_rate / ranges.len().max(1) as f64
    } else {
        0.0
    };
    let per_worker_inflight = (setup.max_inflight / ranges.len().max(1)).max(1);
    let connect_estimate = if setup.connect_rate > 0.0 {
        Duration::from_secs_f64(workload.subscribers as f64 / setup.connect_rate)
    } else {
        Duration::ZERO
    };
    let storm_time = workload.storm.as_ref().map_or(Duration::ZERO, |s| {
        s.warmup + s.timeout + s.post + setup.connect_timeout
    });
    let deadline = connect_estimate
        + setup.connect_timeout
        + workload.duration
        + storm_time
        + setup.drain
        + Duration::from_secs(120);
    let drain_ms = u64::try_from(setup.drain.as_millis()).unwrap_or(u64::MAX);
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let sender_duration = millis(workload.duration);

    let mut jobs = Vec::new();
    let mut steady_left = workload.storm.as_ref().map_or(0, |s| s.steady);
    for (w, &(first, count)) in ranges.iter().enumerate() {
        let storm = workload.storm.as_ref().map(|s| {
            let share = if w + 1 == ranges.len() {
                steady_left
            } else {
                (s.steady * count / workload.subscribers.max(1)).min(steady_left)
            };
            steady_left -= share;
            StormSpec {
                steady: share,
                close: s.close,
                reconnect_inflight: (s.reconnect_inflight / ranges.len().max(1)).max(1),
                timeout_ms: millis(s.timeout),
            }
        });
        jobs.push(JobSpec {
            worker: w,
            target: setup.target.clone(),
            first,
            count,
            channels: workload.channels.clone(),
            connect_rate: per_worker_rate,
            max_inflight: per_worker_inflight,
            connect_timeout_ms: millis(setup.connect_timeout),
            source_ips: setup.source_ips.clone(),
            sender: workload.typing.clone().map(|mut s| {
                s.duration_ms = sender_duration;
                s
            }),
            count_deliveries: true,
            deflate_share: setup.deflate_share,
            storm,
            drain_ms,
            deadline_ms: millis(deadline),
        });
    }
    let subscriber_workers: Vec<usize> = (0..jobs.len()).collect();
    if let Some(p) = &workload.client_publishers {
        let mut sender = p.sender.clone();
        sender.duration_ms = sender_duration;
        jobs.push(JobSpec {
            worker: jobs.len(),
            target: setup.publish_target.clone(),
            first: 0,
            count: p.connections,
            channels: p.channels.clone(),
            connect_rate: setup.connect_rate,
            max_inflight: setup.max_inflight.max(1),
            connect_timeout_ms: millis(setup.connect_timeout),
            // Publishers use the last source address so they rarely share one with subscribers.
            source_ips: setup.source_ips.iter().rev().copied().collect(),
            sender: Some(sender),
            count_deliveries: false,
            deflate_share: 0.0,
            storm: None,
            drain_ms,
            deadline_ms: millis(deadline),
        });
    }
    let all: Vec<usize> = (0..jobs.len()).collect();

    let mut outcome = Outcome {
        rss_before_kib: setup.server_pid.and_then(rss_kib),
        ..Outcome::default()
    };
    let connect_start = now_ns();
    let mut fleet = Fleet::spawn(&jobs).await?;
    let ready_within = connect_estimate + setup.connect_timeout + Duration::from_secs(60);
    let readies = fleet.collect(&all, ready_within, "ready", ready_of).await?;
    let mut connect_latency = Latency::new();
    let mut last_ready = connect_start;
    for (w, ready) in readies.iter().enumerate() {
        if w >= subscriber_workers.len() {
            outcome.publisher_connect_failures += ready.failed;
            continue;
        }
        outcome.connect.connected += ready.connected;
        outcome.connect.failed += ready.failed;
        last_ready = last_ready.max(ready.last_ready_ns);
        connect_latency.merge_encoded(&ready.connect_latency);
        for s in &ready.failure_samples {
            if outcome.connect.failure_samples.len() < 5
                && !outcome.connect.failure_samples.contains(s)
            {
                outcome.connect.failure_samples.push(s.clone());
            }
        }
    }
    outcome.connect.attempted = workload.subscribers;
    outcome.connect.time_to_all = Duration::from_nanos(last_ready.saturating_sub(connect_start));
    outcome.connect.latency = connect_latency.summary();
    if setup.server_pid.is_some() {
        // Give the server a moment to finish allocating for the last connections.
        sleep(Duration::from_secs(1)).await;
        outcome.rss_connected_kib = setup.server_pid.and_then(rss_kib);
    }

    let channel_count = usize::try_from(workload.channels.total).unwrap_or(0);
    let mut expected = vec![0u64; channel_count];
    let mut cpu_start = None;
    if workload.hold {
        sleep(workload.duration).await;
    } else {
        fleet.send_to(&all, &Command::Start).await?;
        let window_start = now_ns();
        outcome.window_start_ns = window_start;
        cpu_start = setup.server_pid.and_then(cpu_time);
        let (stop_tx, stop_rx) = watch::channel(false);
        let http_task = workload.http.clone().map(|plan| {
            let duration = if workload.storm.is_some() {
                None
            } else {
                Some(workload.duration)
            };
            tokio::spawn(publish::run(plan, duration, stop_rx))
        });
        if let Some(storm) = &workload.storm {
            sleep(storm.warmup).await;
            let at_ns = now_ns();
            let (probe_stop, probe_rx) = watch::channel(false);
            let probe = tokio::spawn(probe_accepts(
                setup.target.clone(),
                setup.connect_timeout,
                probe_rx,
            ));
            fleet
                .send_to(&subscriber_workers, &Command::Storm { at_ns })
                .await?;
            let within = storm.timeout + setup.connect_timeout + Duration::from_secs(15);
            let reports = fleet
                .collect(&subscriber_workers, within, "storm_done", |e| match e {
                    Event::StormDone(r) => Ok(r),
                    other => Err(other),
                })
                .await?;
            fleet
                .send_to(&subscriber_workers, &Command::StormEnd)
                .await?;
            let _ = probe_stop.send(true);
            let mut storm_result = storm_outcome(at_ns, &reports);
            if let Ok(probe) = probe.await {
                storm_result.probe = probe;
            }
            outcome.storm = Some(storm_result);
            sleep(storm.post).await;
            let _ = stop_tx.send(true);
        } else {
            sleep(workload.duration).await;
        }
        if let Some(task) = http_task {
            let http = task.await.context("http publishers")?;
            for (e, ok) in expected.iter_mut().zip(&http.ok_per_channel) {
                *e += ok;
            }
            outcome.http = Some(http);
        }
        outcome.window = Duration::from_nanos(now_ns().saturating_sub(window_start));
        fleet.send_to(&all, &Command::Stop).await?;
        let stopped = fleet
            .collect(&all, Duration::from_secs(30), "stopped", |e| match e {
                Event::Stopped { sent, errors } => Ok((sent, errors)),
                other => Err(other),
            })
            .await?;
        for (w, (sent, errors)) in stopped.iter().enumerate() {
            outcome.client_sent += sent.iter().sum::<u64>();
            if w >= subscriber_workers.len() {
                outcome.client_publish_errors += errors;
                for (e, s) in expected.iter_mut().zip(sent) {
                    *e += s;
                }
            }
        }
    }

    fleet
        .send_to(&subscriber_workers, &Command::Finish { expected })
        .await?;
    let results = fleet
        .collect(
            &subscriber_workers,
            setup.drain + Duration::from_secs(30),
            "result",
            |e| match e {
                Event::Result(r) => Ok(*r),
                other => Err(other),
            },
        )
        .await?;
    outcome.rss_after_kib = setup.server_pid.and_then(rss_kib);
    if let (Some(start), Some(end)) = (cpu_start, setup.server_pid.and_then(cpu_time)) {
        outcome.server_cpu = Some(end.saturating_sub(start));
    }
    fleet.close().await;
    merge_results(&mut outcome, &results);
    Ok(outcome)
}

fn merge_results(outcome: &mut Outcome, results: &[WorkerResult]) {
    let t = &mut outcome.totals;
    for r in results {
        t.deliveries += r.deliveries;
        t.unique += r.unique;
        t.duplicates += r.duplicates;
        t.expected += r.expected;
        t.lost += r.lost;
        t.surplus += r.surplus;
        t.misrouted += r.misrouted;
        t.server_errors += r.server_errors;
        t.disconnects += r.disconnects;
        t.sent += r.sent;
        if r.first_delivery_ns != 0 {
            t.first_delivery_ns = if t.first_delivery_ns == 0 {
                r.first_delivery_ns
            } else {
                t.first_delivery_ns.min(r.first_delivery_ns)
            };
        }
        t.last_delivery_ns = t.last_delivery_ns.max(r.last_delivery_ns);
        for (phase, buckets) in r.latency.iter().enumerate() {
            if let Some(l) = outcome.latency.get_mut(phase) {
                l.merge_encoded(buckets);
            }
        }
    }
}

/// Opens one fresh connection at a time (from 127.0.0.1, outside the storm's source
/// addresses) until told to stop, measuring how long the server takes to greet each.
async fn probe_accepts(
    target: TargetSpec,
    limit: Duration,
    mut stop: watch::Receiver<bool>,
) -> ProbeOutcome {
    let mut outcome = ProbeOutcome::default();
    let mut latency = Latency::new();
    while !*stop.borrow_and_update() {
        outcome.attempts += 1;
        let started = now_ns();
        let attempt = tokio::time::timeout(limit, async {
            let (mut reader, _writer) =
                wsclient::connect(&target, Ipv4Addr::LOCALHOST, false, false).await?;
            loop {
                match wsclient::next(&mut reader).await? {
                    Incoming::Text(text) => {
                        if let Control::Established { .. } = payload::classify(&text) {
                            return anyhow::Ok(now_ns());
                        }
                    }
                    Incoming::Close => anyhow::bail!("closed"),
                    _ => {}
                }
            }
        });
        tokio::select! {
            result = attempt => match result {
                Ok(Ok(done)) => latency.record_between(started, done),
                _ => outcome.failures += 1,
            },
            _ = stop.changed() => break,
        }
        sleep(Duration::from_millis(20)).await;
    }
    outcome.accept_latency = latency.summary();
    outcome
}

fn storm_outcome(at_ns: u64, reports: &[StormReport]) -> StormOutcome {
    let mut out = StormOutcome::default();
    let mut latency = Latency::new();
    let mut first = 0u64;
    let mut last = 0u64;
    for r in reports {
        out.dropped += r.dropped;
        out.reconnected += r.reconnected;
        out.gave_up += r.gave_up;
        out.failed_attempts += r.failed_attempts;
        if r.first_established_ns != 0 && (first == 0 || r.first_established_ns < first) {
            first = r.first_established_ns;
        }
        last = last.max(r.last_ready_ns);
        latency.merge_encoded(&r.reconnect_latency);
    }
    if first != 0 {
        out.first_accept = Some(Duration::from_nanos(first.saturating_sub(at_ns)));
    }
    if last != 0 {
        out.all_reconnected = Some(Duration::from_nanos(last.saturating_sub(at_ns)));
    }
    out.reconnect_latency = latency.summary();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_everything_and_respects_rooms() {
        assert_eq!(split(10, 3, 1), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(split(100, 3, 10), vec![(0, 40), (40, 40), (80, 20)]);
        assert_eq!(split(5, 8, 1), vec![(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]);
        assert!(split(0, 2, 1).is_empty());
    }

    #[test]
    fn default_workers_keep_processes_under_the_file_limit() {
        assert_eq!(default_workers(100), 2);
        assert_eq!(default_workers(10_000), 2);
        assert_eq!(default_workers(30_000), 5);
    }

    #[test]
    fn storm_outcome_takes_the_earliest_accept_and_latest_ready() {
        let reports = vec![
            StormReport {
                dropped: 5,
                reconnected: 5,
                first_established_ns: 1_300,
                last_ready_ns: 9_000,
                ..StormReport::default()
            },
            StormReport {
                dropped: 5,
                reconnected: 4,
                gave_up: 1,
                first_established_ns: 1_200,
                last_ready_ns: 5_000,
                ..StormReport::default()
            },
        ];
        let o = storm_outcome(1_000, &reports);
        assert_eq!(o.dropped, 10);
        assert_eq!(o.reconnected, 9);
        assert_eq!(o.gave_up, 1);
        assert_eq!(o.first_accept, Some(Duration::from_nanos(200)));
        assert_eq!(o.all_reconnected, Some(Duration::from_nanos(8_000)));
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut l = Latency::new();
        l.record_ns(1_000_000);
        let r = WorkerResult {
            deliveries: 3,
            unique: 3,
            expected: 4,
            lost: 1,
            first_delivery_ns: 10,
            last_delivery_ns: 20,
            latency: [l.encode(), Vec::new(), Vec::new()],
            ..WorkerResult::default()
        };
        let mut o = Outcome::default();
        merge_results(&mut o, &[r.clone(), r]);
        assert_eq!(o.totals.deliveries, 6);
        assert_eq!(o.totals.lost, 2);
        assert_eq!(o.totals.first_delivery_ns, 10);
        assert_eq!(o.latency_all().count, 2);
    }
}
