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

/// Checks the headers of spec 6.1 and the signature; returns the body's events.
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

// ---------------------------------------------------------------------------------------
// Wire format against a real receiver

#[tokio::test]
async fn real_receiver_gets_every_kind_with_the_right_fields_and_headers() {
    let mut receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(
        DispatcherSettings::default(),
        &registry,
        "resound_webhooks",
        None,
    )
    .unwrap();
    let mut hook = target(&receiver.url);
    hook.headers = vec![
        ("X-Custom".into(), "yes".into()),
        ("X-Pusher-Key".into(), "forged".into()),
        ("content-type".into(), "text/plain".into()),
    ];
    let app = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![hook])
    });

    let expected = one_of_each();
    for event in &expected {
        webhooks.emit(&app, event.clone());
    }

    let mut received = Vec::new();
    for _ in 0..expected.len() {
        let request = receiver.next().await;
        assert_eq!(request.uri.path(), "/hooks");
        assert_eq!(request.uri.query(), Some("token=abc"));
        assert_eq!(request.headers["x-custom"], "yes");
        let events = check_signed(&request);
        assert_eq!(events.len(), 1, "batching is off: one event per request");
        received.extend(events);
        // The raw JSON carries user_id only where spec 6.2 lists it.
        let raw: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let event = &raw["events"][0];
        let has_user = event.get("user_id").is_some();
        match event["name"].as_str().unwrap() {
            "member_added" | "member_removed" => assert!(has_user),
            "client_event" => {
                assert!(event["data"].is_string());
                assert_eq!(has_user, event["channel"] == "presence-room");
            }
            _ => assert!(!has_user),
        }
    }
    assert_eq!(sorted(received), sorted(expected.clone()));
    receiver.assert_quiet(Duration::from_millis(100)).await;

    let sent = counter(
        &registry,
        "resound_webhooks_sent_total",
        &[("app_id", APP_ID)],
    );
    assert_eq!(sent, expected.len() as f64);
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn each_url_gets_only_its_own_events_signed_as_received() {
    let mut chat = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let mut orders = Receiver::start(Vec::new(), Reply::Status(204)).await;
    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let chat_target = WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        channel_prefix: Some("private-".into()),
        ..target(&chat.url)
    };
    let orders_target = WebhookTarget {
        event_types: vec![WebhookKind::ChannelOccupied],
        channel_suffix: Some("-orders".into()),
        ..target(&orders.url)
    };
    let app = Arc::new(AppWebhooks {
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![chat_target, orders_target])
    });
    let wanted_by_chat = [
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
    ];
    let noise = [
        client_event("presence-a", "3", Some("9")),
        occupied("private-a"),
        occupied("eu-carts"),
        vacated("eu-orders"),
    ];
    webhooks.emit(&app, wanted_by_chat[0].clone());
    for event in &noise {
        webhooks.emit(&app, event.clone());
    }
    webhooks.emit(&app, occupied("eu-orders"));
    webhooks.emit(&app, wanted_by_chat[1].clone());

    // Same channel, same lane, inside one 50 ms window: one request with both.
    let request = chat.next().await;
    assert_eq!(check_signed(&request), wanted_by_chat);
    let request = orders.next().await;
    assert_eq!(check_signed(&request), [occupied("eu-orders")]);
    chat.assert_quiet(Duration::from_millis(150)).await;
    orders.assert_quiet(Duration::ZERO).await;
}

#[tokio::test]
async fn delayed_vacate_is_cancelled_by_a_quick_reoccupy_and_sent_otherwise() {
    let mut receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let delay = Duration::from_millis(300);
    let app = Arc::new(AppWebhooks {
        removal_delay: delay,
        ..app(vec![target(&receiver.url)])
    });

    webhooks.emit(&app, vacated("a"));
    webhooks.emit(&app, removed("presence-a", "1"));
    webhooks.emit(&app, added("presence-a", "1"));
    webhooks.emit(&app, occupied("a"));
    receiver.assert_quiet(delay * 2).await;

    let start = Instant::now();
    webhooks.emit(&app, vacated("a"));
    let request = receiver.next().await;
    assert!(start.elapsed() >= delay, "sent after {:?}", start.elapsed());
    assert_eq!(check_signed(&request), [vacated("a")]);
    receiver.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_batch_answered_500_500_200_arrives_exactly_three_times() {
    let script = vec![Reply::Status(500), Reply::Status(500), Reply::Status(200)];
    let mut receiver = Receiver::start(script, Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(fast_retries(), &registry, "w", None).unwrap();
    let app = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(&receiver.url)])
    });
    let batch = vec![
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
        client_event("private-a", "3", None),
    ];
    for event in &batch {
        webhooks.emit(&app, event.clone());
    }
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    for request in [&first, &second, &third] {
        assert_eq!(check_signed(request), batch);
        // Retries resend the signed bytes unchanged.
        assert_eq!(request.body, first.body);
        assert_eq!(
            request.headers["x-pusher-signature"],
            first.headers["x-pusher-signature"]
        );
    }
    receiver.assert_quiet(Duration::from_millis(400)).await;
    let labels = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_sent_total", &labels), 1.0);
    assert_eq!(counter(&registry, "w_retried_total", &labels), 2.0);
    assert_eq!(counter(&registry, "w_failed_total", &labels), 0.0);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let mut receiver = Receiver::start(vec![Reply::Status(400)], Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(fast_retries(), &registry, "w", None).unwrap();
    let app = Arc::new(app(vec![target(&receiver.url)]));
    webhooks.emit(&app, occupied("a"));
    assert_eq!(check_signed(&receiver.next().await), [occupied("a")]);
    receiver.assert_quiet(Duration::from_millis(400)).await;
    let labels = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_failed_total", &labels), 1.0);
    assert_eq!(counter(&registry, "w_retried_total", &labels), 0.0);
    assert_eq!(counter(&registry, "w_sent_total", &labels), 0.0);
}

#[tokio::test]
async fn a_burst_to_a_refused_receiver_never_waits_and_overflow_is_counted() {
    // A port that was just free: connections to it are refused.
    let refused_url = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/hooks", listener.local_addr().unwrap())
    };
    let mut healthy = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let settings = DispatcherSettings {
        queue_capacity: 100,
        ..DispatcherSettings::default()
    };
    let webhooks = Webhooks::start(settings, &registry, "w", None).unwrap();
    let dead_app = Arc::new(app(vec![target(&refused_url)]));
    let healthy_app = Arc::new(AppWebhooks::new(
        "other",
        KEY,
        SECRET,
        vec![target(&healthy.url)],
    ));

    // emit is synchronous and this test runs on one thread, so the dispatcher cannot run
    // during the loop: exactly the queue's capacity is accepted and the rest dropped.
    for i in 0..1000 {
        webhooks.emit(&dead_app, client_event("private-a", &i.to_string(), None));
    }
    let dead = [("app_id", APP_ID)];
    assert_eq!(counter(&registry, "w_queue_depth", &dead), 100.0);
    assert_eq!(
        counter(
            &registry,
            "w_dropped_total",
            &[("app_id", APP_ID), ("reason", "queue_full")]
        ),
        900.0
    );

    // Another app is not held up by the dead receiver's retries.
    webhooks.emit(&healthy_app, occupied("b"));
    assert_eq!(check_signed(&healthy.next().await), [occupied("b")]);

    // Shutdown is bounded by its grace even though 100 requests are retrying.
    let start = Instant::now();
    webhooks.shutdown(Duration::from_millis(200)).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(counter(&registry, "w_queue_depth", &dead), 0.0);
    webhooks.emit(&dead_app, occupied("c"));
    webhooks.emit(&healthy_app, occupied("c"));
    let shutdown_drops = counter(&registry, "w_dropped_total", &[("reason", "shutdown")]);
    assert_eq!(shutdown_drops, 2.0);
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_the_other_target() {
    let hanging = Receiver::start(Vec::new(), Reply::Hang).await;
    let mut healthy = Receiver::start(Vec::new(), Reply::Status(200)).await;
    let registry = Registry::new();
    let webhooks = Webhooks::start(DispatcherSettings::default(), &registry, "w", None).unwrap();
    let app = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(&hanging.url), target(&healthy.url)])
    });
    for i in 0..1000 {
        webhooks.emit(&app, client_event("private-a", &i.to_string(), None));
    }
    assert_eq!(
        counter(&registry, "w_queue_depth", &[("app_id", APP_ID)]),
        1000.0
    );
    let mut delivered = 0;
    while delivered < 1000 {
        let events = check_signed(&healthy.next().await);
        assert!(events.len() <= DEFAULT_BATCH_MAX_EVENTS);
        delivered += events.len();
    }
    assert_eq!(delivered, 1000);
    assert_eq!(counter(&registry, "w_dropped_total", &[]), 0.0);
    drop(hanging);
}

// ---------------------------------------------------------------------------------------
// Timing rules under paused time

#[tokio::test(start_paused = true)]
async fn removal_delay_cancels_pairs_and_sends_lone_removals_when_due() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));

    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, added("presence-a", "1"));
    let sent = h.take_sent().await;
    let first: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        sorted(first),
        sorted(vec![occupied("a"), added("presence-a", "1")])
    );

    // Leave and come back within 3 s: the receiver hears nothing at all.
    h.webhooks.emit(&app, removed("presence-a", "1"));
    h.webhooks.emit(&app, vacated("a"));
    tokio::time::sleep(Duration::from_millis(2900)).await;
    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, added("presence-a", "1"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(h.take_sent().await.is_empty());

    // Leave for good: both removals arrive 3 s later, member first.
    let left = Instant::now();
    h.webhooks.emit(&app, removed("presence-a", "1"));
    h.webhooks.emit(&app, vacated("a"));
    tokio::time::sleep(Duration::from_millis(2999)).await;
    assert!(h.take_sent().await.is_empty());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let sent = h.take_sent().await;
    let events: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        sorted(events),
        sorted(vec![removed("presence-a", "1"), vacated("a")])
    );
    for request in &sent {
        assert_eq!(request.at.duration_since(left), Duration::from_secs(3));
    }
}

#[tokio::test(start_paused = true)]
async fn zero_removal_delay_sends_removals_at_once() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![target("http://127.0.0.1:9/hooks")])
    });
    let start = Instant::now();
    h.webhooks.emit(&app, vacated("a"));
    h.webhooks.emit(&app, occupied("a"));
    let sent = h.take_sent().await;
    let events: Vec<_> = sent.iter().flat_map(|s| s.events.clone()).collect();
    assert_eq!(
        events,
        [vacated("a"), occupied("a")],
        "same channel keeps its order"
    );
    assert!(sent.iter().all(|s| s.at == start));
}

#[tokio::test(start_paused = true)]
async fn cache_misses_are_deduplicated_per_channel() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    let miss = |channel: &str| WebhookEvent::CacheMiss {
        channel: channel.into(),
    };
    for _ in 0..5 {
        h.webhooks.emit(&app, miss("cache-a"));
    }
    h.webhooks.emit(&app, miss("cache-b"));
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(
        sorted(events),
        sorted(vec![miss("cache-a"), miss("cache-b")])
    );
    tokio::time::sleep(CACHE_MISS_WINDOW).await;
    h.webhooks.emit(&app, miss("cache-a"));
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(events, [miss("cache-a")]);
}

#[tokio::test(start_paused = true)]
async fn batches_close_when_full_or_when_the_window_ends_and_never_mix_apps() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let url = "http://127.0.0.1:9/hooks";
    let first = Arc::new(AppWebhooks {
        batching: true,
        ..app(vec![target(url)])
    });
    let second = Arc::new(AppWebhooks {
        batching: true,
        ..AppWebhooks::new("4", "other-key", "other-secret", vec![target(url)])
    });
    let start = Instant::now();
    for i in 0..250 {
        h.webhooks
            .emit(&first, client_event("private-a", &i.to_string(), None));
        h.webhooks
            .emit(&second, client_event("private-a", &i.to_string(), None));
    }
    let full = h.take_sent().await;
    assert_eq!(full.len(), 4, "two full batches per app at once");
    assert!(full.iter().all(|s| s.events.len() == 100 && s.at == start));

    tokio::time::sleep(DEFAULT_BATCH_WINDOW).await;
    let rest = h.take_sent().await;
    assert_eq!(rest.len(), 2);
    assert!(rest
        .iter()
        .all(|s| s.events.len() == 50 && s.at == start + DEFAULT_BATCH_WINDOW));

    for request in full.iter().chain(&rest) {
        let secret = if request.key == KEY {
            SECRET
        } else {
            "other-secret"
        };
        assert_eq!(request.signature, sign(secret, &request.body).unwrap());
    }
    let by_key = |key: &str| -> Vec<WebhookEvent> {
        full.iter()
            .chain(&rest)
            .filter(|s| s.key == key)
            .flat_map(|s| s.events.clone())
            .collect()
    };
    let expected: Vec<_> = (0..250)
        .map(|i| client_event("private-a", &i.to_string(), None))
        .collect();
    assert_eq!(by_key(KEY), expected, "one app's events, in order");
    assert_eq!(by_key("other-key"), expected);
}

#[tokio::test(start_paused = true)]
async fn one_window_of_events_on_many_channels_makes_one_request_per_target() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let chat_only = WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        ..target("http://127.0.0.1:9/chat")
    };
    let app = Arc::new(AppWebhooks {
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![target("http://127.0.0.1:9/all"), chat_only])
    });
    let events: Vec<_> = (0..10)
        .flat_map(|i| {
            let channel = format!("private-{i}");
            [
                occupied(&channel),
                client_event(&channel, "1", None),
                vacated(&channel),
            ]
        })
        .collect();
    for event in &events {
        h.webhooks.emit(&app, event.clone());
    }
    tokio::time::sleep(DEFAULT_BATCH_WINDOW).await;
    let sent = h.take_sent().await;
    assert_eq!(sent.len(), 2, "one request per target");
    let all = sent.iter().find(|s| s.uri.path() == "/all").unwrap();
    assert_eq!(all.events, events, "every event, in emit order");
    let chat = sent.iter().find(|s| s.uri.path() == "/chat").unwrap();
    let chat_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == WebhookKind::ClientEvent)
        .cloned()
        .collect();
    assert_eq!(chat.events, chat_events);
}

#[tokio::test(start_paused = true)]
async fn a_full_lane_backlog_drops_newest_and_counts_them() {
    let mut h = Harness::start(DispatcherSettings::default(), Vec::new(), Answer::Never);
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    for i in 0..1000 {
        h.webhooks
            .emit(&app, client_event("private-a", &i.to_string(), None));
    }
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(metrics.queue_depth.get(), 1000);
    let _ = h.take_sent().await;
    assert_eq!(metrics.queue_depth.get(), 0);
    // One request is stuck in flight, 2 × LANE_BACKLOG wait behind it (taken by the lane,
    // and in its queue), the rest are dropped.
    let dropped = metrics.dropped(DropReason::BacklogFull).get();
    let kept = 1000 - 1 - 2 * LANE_BACKLOG as u64;
    assert!(dropped == kept || dropped == kept + 1, "dropped {dropped}");
    assert_eq!(metrics.dropped(DropReason::QueueFull).get(), 0);
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_behind_a_stuck_one_are_journaled_in_order() {
    let mut h = Harness::journaled(Answer::Never);
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target(url)]));
    let events = vec![
        occupied("private-a"),
        client_event("private-a", "1", None),
        client_event("private-a", "2", None),
    ];
    for event in &events {
        h.webhooks.emit(&app, event.clone());
    }
    assert_eq!(h.take_sent().await.len(), 1, "one request in flight");
    let expected: Vec<JournalEntry> = events
        .iter()
        .map(|event| JournalEntry {
            app_id: APP_ID.into(),
            url: url.into(),
            events: vec![event.clone()],
        })
        .collect();
    assert_eq!(journal.pending(), expected);
    // Shutting down abandons them, and they stay journaled for another node.
    h.webhooks.shutdown(Duration::from_secs(1)).await;
    assert_eq!(journal.pending(), expected);
}

#[tokio::test(start_paused = true)]
async fn finished_requests_are_forgotten_delivered_or_given_up() {
    let mut h = Harness::journaled(Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    h.webhooks.emit(&app, occupied("a"));
    h.webhooks.emit(&app, occupied("b"));
    assert_eq!(h.take_sent().await.len(), 2);
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty(), "{:?}", journal.pending());
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(metrics.journal(JournalOp::Recorded).get(), 2);

    // A 400 is given up at once: forgotten too.
    let mut h = Harness::journaled(Answer::Status(400));
    let journal = h.journal.clone().unwrap();
    h.webhooks.emit(&app, occupied("c"));
    assert_eq!(h.take_sent().await.len(), 1);
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty());
}

#[tokio::test(start_paused = true)]
async fn replays_wait_for_room_in_a_full_queue_instead_of_being_dropped() {
    let settings = DispatcherSettings {
        queue_capacity: 2,
        ..DispatcherSettings::default()
    };
    let mut h = Harness::journaled_with(settings, Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target(url)]));
    // An adopted journal of 40 requests arrives at once, with events emitted in between:
    // the dispatcher cannot run during the loop, so the queue (2) is full almost at once.
    let mut expected = Vec::new();
    for i in 0..40 {
        let entry = JournalEntry {
            app_id: APP_ID.into(),
            url: url.into(),
            events: vec![occupied(&format!("replayed-{i}"))],
        };
        expected.push(occupied(&format!("replayed-{i}")));
        let id = journal.record(&entry).await.unwrap();
        h.webhooks.replay(Some(&app), Replay { id, entry });
        h.webhooks
            .emit(&app, client_event("private-live", &i.to_string(), None));
    }
    let metrics = h.app_metrics(APP_ID);
    let mut replayed = Vec::new();
    for _ in 0..20 {
        replayed.extend(
            h.take_sent()
                .await
                .into_iter()
                .flat_map(|sent| sent.events)
                .filter(|e| matches!(e, WebhookEvent::ChannelOccupied { .. })),
        );
        if replayed.len() == expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sorted(replayed),
        sorted(expected),
        "every replay is delivered"
    );
    assert!(journal.pending().is_empty(), "and forgotten once delivered");
    assert_eq!(metrics.journal(JournalOp::Replayed).get(), 40);
    // Live events still follow the queue's policy: newest dropped when full.
    assert!(metrics.dropped(DropReason::QueueFull).get() > 0);
    assert_eq!(metrics.dropped(DropReason::ReplayBacklogFull).get(), 0);
    assert_eq!(metrics.queue_depth.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn replays_go_to_their_target_once_and_are_forgotten() {
    let mut h = Harness::journaled(Answer::Status(200));
    let journal = h.journal.clone().unwrap();
    let url = "http://127.0.0.1:9/hooks";
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/other"), target(url)]));
    let entry = JournalEntry {
        app_id: APP_ID.into(),
        url: url.into(),
        events: vec![vacated("a"), removed("presence-b", "7")],
    };
    let id = journal.record(&entry).await.unwrap();
    h.webhooks.replay(Some(&app), Replay { id, entry });
    let sent = h.take_sent().await;
    assert_eq!(sent.len(), 1, "only the recorded URL gets it");
    assert_eq!(sent[0].uri.path(), "/hooks");
    assert_eq!(
        sent[0].events,
        vec![vacated("a"), removed("presence-b", "7")]
    );
    assert_eq!(
        sent[0].signature,
        sign(SECRET, &sent[0].body).unwrap(),
        "signed with the app's secret as configured here"
    );
    let _ = h.take_sent().await;
    assert!(journal.pending().is_empty(), "forgotten once delivered");
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(
        metrics.journal(JournalOp::Recorded).get(),
        0,
        "not journaled twice"
    );
    assert_eq!(metrics.journal(JournalOp::Replayed).get(), 1);

    // A URL no longer configured, or an app without webhooks here: dropped and forgotten.
    let gone = JournalEntry {
        app_id: APP_ID.into(),
        url: "http://127.0.0.1:9/removed".into(),
        events: vec![occupied("x")],
    };
    let id = journal.record(&gone).await.unwrap();
    h.webhooks.replay(
        Some(&app),
        Replay {
            id,
            entry: gone.clone(),
        },
    );
    let id = journal.record(&gone).await.unwrap();
    h.webhooks.replay(None, Replay { id, entry: gone });
    assert!(h.take_sent().await.is_empty());
    assert!(journal.pending().is_empty());
    assert_eq!(metrics.dropped(DropReason::InvalidTarget).get(), 2);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_schedule_and_give_up_after_the_window() {
    let script = vec![
        Answer::Status(503),
        Answer::Status(503),
        Answer::Status(200),
    ];
    let mut h = Harness::start(DispatcherSettings::default(), script, Answer::Status(503));
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    let start = Instant::now();
    h.webhooks.emit(&app, occupied("a"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = h.take_sent().await;
    let offsets: Vec<_> = sent
        .iter()
        .map(|s| s.at.duration_since(start).as_secs())
        .collect();
    assert_eq!(offsets, [0, 1, 3]);
    assert!(sent.iter().all(|s| s.body == sent[0].body));

    // From now on every answer is 503: ten attempts over 243 s, then it gives up.
    let start = Instant::now();
    h.webhooks.emit(&app, occupied("b"));
    tokio::time::sleep(Duration::from_secs(400)).await;
    let sent = h.take_sent().await;
    let offsets: Vec<_> = sent
        .iter()
        .map(|s| s.at.duration_since(start).as_secs())
        .collect();
    assert_eq!(offsets, [0, 1, 3, 7, 15, 31, 63, 123, 183, 243]);
    let metrics = h.app_metrics(APP_ID);
    assert_eq!(
        (
            metrics.sent.get(),
            metrics.failed.get(),
            metrics.retried.get()
        ),
        (1, 1, 11)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_held_removals_and_open_batches_then_refuses_events() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let app = Arc::new(AppWebhooks {
        batching: true,
        batch_window: Duration::from_secs(60),
        ..app(vec![target("http://127.0.0.1:9/hooks")])
    });
    h.webhooks.emit(&app, vacated("a"));
    h.webhooks.emit(&app, client_event("private-b", "1", None));
    assert!(h.take_sent().await.is_empty());
    let start = Instant::now();
    h.webhooks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "nothing to wait for");
    let events: Vec<_> = h
        .take_sent()
        .await
        .into_iter()
        .flat_map(|s| s.events)
        .collect();
    assert_eq!(
        sorted(events),
        sorted(vec![vacated("a"), client_event("private-b", "1", None)])
    );

    h.webhooks.emit(&app, occupied("c"));
    assert_eq!(h.app_metrics(APP_ID).dropped(DropReason::Shutdown).get(), 1);
    assert!(h.take_sent().await.is_empty());
    h.webhooks.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_what_cannot_finish_within_grace() {
    let mut h = Harness::start(DispatcherSettings::default(), Vec::new(), Answer::Never);
    let app = Arc::new(app(vec![target("http://127.0.0.1:9/hooks")]));
    h.webhooks.emit(&app, occupied("a"));
    assert_eq!(h.take_sent().await.len(), 1);
    let start = Instant::now();
    h.webhooks.shutdown(Duration::from_secs(2)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_new_configuration_takes_effect_with_the_events_emitted_under_it() {
    let mut h = Harness::start(
        DispatcherSettings::default(),
        Vec::new(),
        Answer::Status(200),
    );
    let old = Arc::new(app(vec![target("http://127.0.0.1:9/old")]));
    h.webhooks.emit(&old, occupied("a"));
    let new = Arc::new(app(vec![WebhookTarget {
        event_types: vec![WebhookKind::ClientEvent],
        ..target("http://127.0.0.1:9/new")
    }]));
    h.webhooks.emit(&new, occupied("b"));
    h.webhooks.emit(&new, client_event("private-c", "1", None));
    let sent = h.take_sent().await;
    let paths: Vec<_> = sent
        .iter()
        .map(|s| (s.uri.path().to_owned(), s.events.clone()))
        .collect();
    assert_eq!(
        paths,
        [
            ("/old".to_owned(), vec![occupied("a")]),
            (
                "/new".to_owned(),
                vec![client_event("private-c", "1", None)]
            ),
        ]
    );
}

#[tokio::test]
async fn apps_without_interested_targets_cost_nothing() {
    let registry = Registry::new();
    let webhooks = Webhooks::start(DispatcherSettings::default(), &registry, "w", None).unwrap();
    let nobody = Arc::new(app(Vec::new()));
    let only_members = Arc::new(app(vec![WebhookTarget {
        event_types: vec![WebhookKind::MemberAdded],
        ..target("http://127.0.0.1:9/hooks")
    }]));
    webhooks.emit(&nobody, occupied("a"));
    webhooks.emit(&only_members, occupied("a"));
    webhooks.emit(&only_members, client_event("private-a", "1", None));
    assert_eq!(counter(&registry, "w_queue_depth", &[]), 0.0);
    assert!(format!("{webhooks:?}").contains("apps: 0"));
}

#[test]
fn start_needs_a_runtime_and_sane_settings() {
    let registry = Registry::new();
    assert!(matches!(
        Webhooks::start(DispatcherSettings::default(), &registry, "a", None),
        Err(WebhookError::NoRuntime)
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let bad = DispatcherSettings {
        queue_capacity: 0,
        ..DispatcherSettings::default()
    };
    assert!(matches!(
        Webhooks::start(bad, &registry, "b", None),
        Err(WebhookError::InvalidSettings(_))
    ));
    assert!(Webhooks::start(DispatcherSettings::default(), &registry, "c", None).is_ok());
    assert!(matches!(
        Webhooks::start(DispatcherSettings::default(), &registry, "c", None),
        Err(WebhookError::Metrics(_))
    ));
}

#[test]
fn emit_works_from_a_thread_outside_the_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (webhooks, mut receiver) = runtime.block_on(async {
        let receiver = Receiver::start(Vec::new(), Reply::Status(200)).await;
        let webhooks =
            Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
        (webhooks, receiver)
    });
    let app = Arc::new(app(vec![target(&receiver.url)]));
    let emitter = webhooks.clone();
    std::thread::spawn(move || emitter.emit(&app, occupied("a")))
        .join()
        .unwrap();
    let request = runtime.block_on(receiver.next());
    assert_eq!(check_signed(&request), [occupied("a")]);
}

// ---------------------------------------------------------------------------------------
// The official Node SDK as the receiver

#[tokio::test]
#[ignore = "needs node, `npm ci` in tests/webhook-validator/, and WEBHOOK_NODE_VALIDATOR=<path to validate.mjs>"]
async fn node_sdk_validates_every_webhook() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    // Run by scripts/test, which installs the validator and sets the variable.
    let script = std::env::var("WEBHOOK_NODE_VALIDATOR")
        .expect("WEBHOOK_NODE_VALIDATOR must point at tests/webhook-validator/validate.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .args(["0", APP_ID, KEY, SECRET])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
        .await
        .expect("validator ready within 20 s")
        .unwrap()
        .expect("validator printed its address");
    let address = ready.strip_prefix("listening on ").expect("listening line");
    let url = format!("http://{address}/webhooks");

    let webhooks =
        Webhooks::start(DispatcherSettings::default(), &Registry::new(), "w", None).unwrap();
    let single = Arc::new(AppWebhooks {
        removal_delay: Duration::ZERO,
        ..app(vec![target(&url)])
    });
    let batched = Arc::new(AppWebhooks {
        app_id: "3-batched".into(),
        batching: true,
        removal_delay: Duration::ZERO,
        ..app(vec![target(&url)])
    });
    let events = one_of_each();
    let batch: Vec<_> = (0..20)
        .map(|i| {
            client_event(
                "presence-room",
                &format!(r#"{{"n":{i},"s":"ünï \"q\""}}"#),
                Some("7"),
            )
        })
        .collect();
    for event in &events {
        webhooks.emit(&single, event.clone());
    }
    for event in &batch {
        webhooks.emit(&batched, event.clone());
    }

    let mut seen = Vec::new();
    let mut requests = 0;
    let expected_total = events.len() + batch.len();
    while seen.len() < expected_total {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .expect("validator output within 20 s")
            .unwrap()
            .expect("validator still running");
        let verdict: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(verdict["valid"], true, "{line}");
        assert_eq!(verdict["fresh"], true, "{line}");
        assert_eq!(verdict["content_type"], "application/json", "{line}");
        let batch_events: Vec<WebhookEvent> =
            serde_json::from_value(verdict["events"].clone()).unwrap();
        seen.extend(batch_events);
        requests += 1;
    }
    assert_eq!(
        sorted(seen),
        sorted(events.iter().chain(&batch).cloned().collect())
    );
    assert!(requests < expected_total, "the batched app shared requests");

    // The validator is not a rubber stamp: a charset in Content-Type, or a body changed
    // after signing, is refused.
    let (endpoint, _) = endpoint::Endpoint::prepare(&target(&url)).unwrap();
    let good = payload::build_request(
        &endpoint,
        KEY,
        SECRET,
        payload::unix_time_ms(),
        &events[..1],
    )
    .unwrap();
    let mut charset = good.clone();
    charset.headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let mut tampered = good.clone();
    tampered.body = Bytes::from(
        String::from_utf8(good.body.to_vec())
            .unwrap()
            .replace("ch-", "xx-"),
    );
    let transport = transport::HyperTransport::new(1, None).unwrap();
    for request in [&charset, &tampered] {
        let status = transport.post(request).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let line = stdout.next_line().await.unwrap().unwrap();
        let verdict: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(verdict["valid"], false, "{line}");
    }
    eprintln!("node validator accepted {requests} requests carrying {expected_total} events");
    webhooks.shutdown(Duration::from_secs(1)).await;
    let _ = child.kill().await;
}
