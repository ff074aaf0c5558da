//! HTTP publishers: stamped events triggered through the signed HTTP API
//! (`POST /apps/{id}/events`, protocol.md 5.6.1) at a fixed total rate over a few keep-alive
//! connections, recording per-channel successes and the request latency.
//!
//! Each publisher task owns one HTTP/1.1 connection and one request in flight; the total rate
//! is split evenly between them with staggered schedules. A publisher that falls behind sends
//! as fast as it can until it catches up, so the achieved rate shows in the report instead of
//! being hidden. What this does not do: account deliveries (the workers do).

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};

use crate::ipc::TargetSpec;
use crate::payload::{self, now_ns, Stamp};
use crate::sign;
use crate::stats::Latency;

/// What to publish.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    pub target: TargetSpec,
    pub app_id: String,
    /// Total publishes per second.
    pub rate: f64,
    pub connections: usize,
    pub event: String,
    pub channel_prefix: String,
    pub channels: u64,
    pub pad: usize,
}

/// What the publishers did.
#[derive(Debug, Default)]
pub struct HttpOutcome {
    pub attempted: u64,
    /// Successful (HTTP 200) publishes per channel index.
    pub ok_per_channel: Vec<u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub latency: Latency,
    pub elapsed: Duration,
}

impl HttpOutcome {
    pub fn ok(&self) -> u64 {
        self.ok_per_channel.iter().sum()
    }

    fn absorb(&mut self, other: HttpOutcome) {
        self.attempted += other.attempted;
        if self.ok_per_channel.len() < other.ok_per_channel.len() {
            self.ok_per_channel.resize(other.ok_per_channel.len(), 0);
        }
        for (a, b) in self.ok_per_channel.iter_mut().zip(other.ok_per_channel) {
            *a += b;
        }
        self.errors += other.errors;
        for sample in other.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&sample) {
                self.error_samples.push(sample);
            }
        }
        self.latency.merge(&other.latency);
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// Publishes until `stop` turns true (or, with `duration`, until it has passed).
pub async fn run(
    plan: HttpPlan,
    duration: Option<Duration>,
    stop: watch::Receiver<bool>,
) -> HttpOutcome {
    let connections = plan.connections.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..connections {
        let plan = plan.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(publisher(
            plan,
            k,
            connections,
            start,
            duration,
            stop,
        )));
    }
    let mut total = HttpOutcome {
        ok_per_channel: vec![0; usize::try_from(plan.channels).unwrap_or(0)],
        ..HttpOutcome::default()
    };
    for task in tasks {
        match task.await {
            Ok(outcome) => total.absorb(outcome),
            Err(e) => {
                total.errors += 1;
                total.error_samples.push(format!("publisher task: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn open(target: &TargetSpec) -> Result<Sender> {
    let addr = SocketAddr::V4(SocketAddrV4::new(target.ip, target.port));
    let stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true).context("nodelay")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("http handshake")?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the server closes; either way
        // the publisher notices on its next request.
        let _ = connection.await;
    });
    Ok(sender)
}

async fn publisher(
    plan: HttpPlan,
    k: usize,
    of: usize,
    start: Instant,
    duration: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> HttpOutcome {
    let channels = usize::try_from(plan.channels.max(1)).unwrap_or(1);
    let mut outcome = HttpOutcome {
        ok_per_channel: vec![0; channels],
        ..HttpOutcome::default()
    };
    let mut seqs = vec![0u64; channels];
    let mut sender: Option<Sender> = None;
    let end = duration.map(|d| start + d);
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let path = format!("/apps/{}/events", plan.app_id);
    let uri_path = format!("{}{}", plan.target.prefix, path);
    let host = format!("{}:{}", plan.target.ip, plan.target.port);
    let mut n: u64 = 0;
    loop {
        let global = n * of as u64 + k as u64;
        let at = start + interval.mul_f64(global as f64);
        if end.is_some_and(|e| at >= e) || *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = sleep_until(at) => {}
            _ = stop.changed() => break,
        }
        n += 1;
        let channel = usize::try_from(global % channels as u64).unwrap_or(0);
        let Some(seq) = seqs.get(channel).copied() else {
            continue;
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match open(&plan.target).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    outcome.attempted += 1;
                    note(&mut outcome, format!("{e:#}"));
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else {
            continue;
        };
        let name = format!("{}{}", plan.channel_prefix, channel);
        let stamp = Stamp {
            publisher: k as u64,
            channel: channel as u64,
            seq,
            sent_ns: now_ns(),
        };
        if let Some(next) = seqs.get_mut(channel) {
            *next += 1;
        }
        let body = payload::trigger_body(&plan.event, &name, stamp, plan.pad);
        let query = sign::signed_query(
            &plan.target.key,
            &plan.target.secret,
            "POST",
            &path,
            now_ns() / 1_000_000_000,
            Some(body.as_bytes()),
        );
        let request = http::Request::post(format!("{uri_path}?{query}"))
            .header(http::header::HOST, &host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                outcome.attempted += 1;
                note(&mut outcome, format!("build request: {e}"));
                continue;
            }
        };
        outcome.attempted += 1;
        let sent = now_ns();
        match timeout(Duration::from_secs(10), send(s, request)).await {
            Ok(Ok(200)) => {
                outcome.latency.record_between(sent, now_ns());
                if let Some(ok) = outcome.ok_per_channel.get_mut(channel) {
                    *ok += 1;
                }
            }
            Ok(Ok(status)) => note(&mut outcome, format!("HTTP {status}")),
            Ok(Err(e)) => {
                sender = None;
                note(&mut outcome, format!("{e:#}"));
            }
            Err(_) => {
                sender = None;
                note(&mut outcome, "request timed out".to_string());
            }
        }
    }
    outcome
}

async fn send(sender: &mut Sender, request: http::Request<Full<Bytes>>) -> Result<u16> {
    sender.ready().await.context("connection not ready")?;
    let response = sender.send_request(request).await.context("request")?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .context("response body")?;
    Ok(status)
}

fn note(outcome: &mut HttpOutcome, error: String) {
    outcome.errors += 1;
    if outcome.error_samples.len() < 5 && !outcome.error_samples.contains(&error) {
        outcome.error_samples.push(error);
    }
}
