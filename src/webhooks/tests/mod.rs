//! Tests of the whole module through its public handle: real HTTP receivers on 127.0.0.1
//! for the wire format, and a scripted transport under paused tokio time for the timing
//! rules (removal delay, batching windows, retries, shutdown).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::dispatcher::LANE_BACKLOG;
use super::metrics::{AppMetrics, DropReason, JournalOp, WebhookMetrics};
use super::payload::{sign, OutgoingRequest};
use super::transport::{Attempt, Transport};
use super::*;

const APP_ID: &str = "3";
const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

// ---------------------------------------------------------------------------------------
// Event helpers

fn occupied(channel: &str) -> WebhookEvent {
    WebhookEvent::ChannelOccupied {
        channel: channel.into(),
    }
}
fn vacated(channel: &str) -> WebhookEvent {
    WebhookEvent::ChannelVacated {
        channel: channel.into(),
    }
}
fn added(channel: &str, user: &str) -> WebhookEvent {
    WebhookEvent::MemberAdded {
        channel: channel.into(),
        user_id: user.into(),
    }
}
fn removed(channel: &str, user: &str) -> WebhookEvent {
    WebhookEvent::MemberRemoved {
        channel: channel.into(),
        user_id: user.into(),
    }
}
fn client_event(channel: &str, data: &str, user: Option<&str>) -> WebhookEvent {
    WebhookEvent::ClientEvent {
        channel: channel.into(),
        event: "client-typing".into(),
        data: data.into(),
        socket_id: "123.456".into(),
        user_id: user.map(str::to_owned),
    }
}

/// One event of each kind (both `client_event` shapes), on distinct channels.
fn one_of_each() -> Vec<WebhookEvent> {
    vec![
        occupied("ch-occupied"),
        vacated("ch-vacated"),
        added("presence-added", "42"),
        removed("presence-removed", "43"),
        client_event("private-chat", r#"{"typing":true}"#, None),
        client_event(
            "presence-room",
            r#"{"text":"héllo \"wörld\" ✓"}"#,
            Some("44"),
        ),
        WebhookEvent::CacheMiss {
            channel: "cache-prices".into(),
        },
        WebhookEvent::SubscriptionCount {
            channel: "ch-count".into(),
            subscription_count: 3,
        },
    ]
}

fn app(targets: Vec<WebhookTarget>) -> AppWebhooks {
    AppWebhooks::new(APP_ID, KEY, SECRET, targets)
}

fn sorted(mut events: Vec<WebhookEvent>) -> Vec<WebhookEvent> {
    events.sort_by_key(|event| serde_json::to_string(event).unwrap());
    events
}

fn events_of(body: &[u8]) -> (u64, Vec<WebhookEvent>) {
    #[derive(serde::Deserialize)]
    struct Body {
        time_ms: u64,
        events: Vec<WebhookEvent>,
    }
    let body: Body = serde_json::from_slice(body).unwrap();
    (body.time_ms, body.events)
}

// ---------------------------------------------------------------------------------------
// A real HTTP receiver

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Read the request, never answer.
    Hang,
}

#[derive(Debug)]
struct Received {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

struct Receiver {
    url: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    /// Starts a hyper server on 127.0.0.1 that answers from `script`, then with `default`.
    async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let tx = tx.clone();
                        let script = Arc::clone(&script);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let reply = script.lock().pop_front().unwrap_or(default);
                            let _ = tx.send(Received {
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            });
                            let code = match reply {
                                Reply::Status(code) => code,
                                Reply::Hang => std::future::pending().await,
                            };
                            let response = Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/hooks?token=abc"),
            requests,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a webhook should arrive within 10 s")
            .expect("receiver alive")
    }

    /// Asserts that nothing more arrives within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        if let Ok(extra) = self.requests.try_recv() {
            panic!(
                "unexpected extra webhook: {}",
                String::from_utf8_lossy(&extra.body)
            );
        }
    }
}

/// Checks the headers of protocol.md 6.1 and the signature; returns the body's events.
fn check_signed(request: &Received) -> Vec<WebhookEvent> {
    let headers = &request.headers;
    assert_eq!(
        headers.get_all("content-type").iter().collect::<Vec<_>>(),
        ["application/json"]
    );
    assert_eq!(
        headers.get_all("x-pusher-key").iter().collect::<Vec<_>>(),
        [KEY]
    );
    let signature = headers["x-pusher-signature"].to_str().unwrap();
    assert_eq!(signature, sign(SECRET, &request.body).unwrap());
    assert!(signature
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let (time_ms, events) = events_of(&request.body);
    let now_ms = payload::unix_time_ms();
    assert!(
        time_ms <= now_ms && now_ms - time_ms < 60_000,
        "time_ms {time_ms} vs {now_ms}"
    );
    events
}

fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            labels.iter().all(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == *key && pair.value() == *value)
            })
        })
        .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
        .sum()
}

fn fast_retries() -> DispatcherSettings {
    DispatcherSettings {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        ..DispatcherSettings::default()
    }
}

// ---------------------------------------------------------------------------------------
// A scripted transport for paused-time tests

#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    Never,
}

#[derive(Debug)]
struct Sent {
    at: Instant,
    uri: Uri,
    key: String,
    signature: String,
    body: Bytes,
    events: Vec<WebhookEvent>,
}

struct Scripted {
    answers: Mutex<VecDeque<Answer>>,
    default: Answer,
    sent: mpsc::UnboundedSender<Sent>,
}

impl Transport for Scripted {
    fn post<'a>(&'a self, request: &'a OutgoingRequest) -> Attempt<'a> {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let _ = self.sent.send(Sent {
            at: Instant::now(),
            uri: request.uri.clone(),
            key: header("x-pusher-key"),
            signature: header("x-pusher-signature"),
            body: request.body.clone(),
            events: events_of(&request.body).1,
        });
        let answer = self.answers.lock().pop_front().unwrap_or(self.default);
        Box::pin(async move {
            match answer {
                Answer::Status(code) => Ok(StatusCode::from_u16(code).unwrap()),
                Answer::Never => std::future::pending().await,
            }
        })
    }
}

struct Harness {
    webhooks: Webhooks,
    sent: mpsc::UnboundedReceiver<Sent>,
    metrics: WebhookMetrics,
    journal: Option<Arc<MemoryJournal>>,
}

impl Harness {
    fn start(settings: DispatcherSettings, script: Vec<Answer>, default: Answer) -> Harness {
        let metrics = WebhookMetrics::register(&Registry::new(), "test_webhooks").unwrap();
        let (tx, sent) = mpsc::unbounded_channel();
        let transport = Arc::new(Scripted {
            answers: Mutex::new(script.into()),
            default,
            sent: tx,
        });
        let webhooks = Webhooks::start_with(settings, metrics.clone(), transport, None).unwrap();
        Harness {
            webhooks,
            sent,
            metrics,
            journal: None,
        }
    }

    /// A harness whose lanes record into a `MemoryJournal`.
    fn journaled(default: Answer) -> Harness {
        Harness::journaled_with(DispatcherSettings::default(), default)
    }

    fn journaled_with(settings: DispatcherSettings, default: Answer) -> Harness {
        let metrics = WebhookMetrics::register(&Registry::new(), "test_webhooks").unwrap();
        let (tx, sent) = mpsc::unbounded_channel();
        let transport = Arc::new(Scripted {
            answers: Mutex::new(VecDeque::new()),
            default,
            sent: tx,
        });
        let journal = Arc::new(MemoryJournal::default());
        let shared: Arc<dyn Journal> = journal.clone();
        let webhooks =
            Webhooks::start_with(settings, metrics.clone(), transport, Some(shared)).unwrap();
        Harness {
            webhooks,
            sent,
            metrics,
            journal: Some(journal),
        }
    }

    fn app_metrics(&self, app_id: &str) -> AppMetrics {
        self.metrics.for_app(app_id)
    }

    /// Everything sent so far (lets the dispatcher run first, without moving the clock).
    async fn take_sent(&mut self) -> Vec<Sent> {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        std::iter::from_fn(|| self.sent.try_recv().ok()).collect()
    }
}

fn target(url: &str) -> WebhookTarget {
    WebhookTarget::new(url)
}

mod timing;
mod wire;
