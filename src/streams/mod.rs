//! Redis stream sinks: each app may have events written to Redis streams for backend workers
//! (`XREADGROUP`/`XACK` consumers) — client events, presence and occupancy transitions,
//! subscription counts and events published through the HTTP API, filtered per sink by kind
//! and channel pattern, into a key made from the app id and channel name, trimmed by
//! `MAXLEN ~`.
//!
//! [`Streams::emit`] never blocks a socket: it filters, then pushes into the app's queue,
//! bounded in bytes (`streams.queue_bytes`; overflow policy: the newest event is dropped and
//! counted, `{prefix}_dropped_total{reason="queue_full"}`, with a rate-limited warn). One task
//! per app (`writer.rs`) holds removals for the removal delay exactly as webhooks do (the same
//! `EventGate`, and the same cluster-wide verdict through `SettleOnce`), then writes what is
//! released in pipelines of `XADD`s. While Redis is unreachable the entries stay queued
//! (still charged to the bound) and are written, in order, once it answers again.
//!
//! Not owned here: deciding that an event happened once per cluster (the callers report what
//! their node decided: the node that received a client event or an API request, the node
//! whose script made a transition).
//!
//! Guarantees: one app's entries are written in the order they were released, so one
//! channel's entries are in order in its stream; nothing is persisted across restarts; a
//! pipeline cut off by a lost connection is written again, so a consumer may then see an
//! entry twice (at-least-once in that case, exactly once otherwise).

mod config;
mod entry;
mod metrics;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use config::{AppStreams, SinkSettings, StreamKind, StreamSink, DEFAULT_KEY, DEFAULT_MAXLEN};
pub use entry::StreamEvent;

use crate::webhooks::Journal;
use metrics::{AppMetrics, DropReason, StreamMetrics};

/// Why the sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error("redis_url: {0}")]
    Url(#[from] redis::RedisError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("no tokio runtime")]
    NoRuntime,
}

/// The stream sinks' handle: cheap to clone, shared by everything that emits.
#[derive(Clone)]
pub struct Streams {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    runtime: Handle,
    settings: SinkSettings,
    client: redis::Client,
    metrics: StreamMetrics,
    /// The cluster's verdicts on held removals (shared with the webhooks).
    settle: Option<Arc<dyn Journal>>,
    /// One entry per app that has emitted. Read-locked on every emit, written when an app
    /// emits for the first time and at shutdown; never held across `.await`.
    apps: RwLock<HashMap<String, AppQueue>>,
    shutdown: watch::Sender<bool>,
    closing: AtomicBool,
}

/// The sending side of one app's queue.
struct AppQueue {
    intake: Arc<Intake>,
    task: Option<JoinHandle<()>>,
}

/// One emitted event waiting for the app's writer.
pub(crate) struct Item {
    pub(crate) app: Arc<AppStreams>,
    pub(crate) event: StreamEvent,
    /// The token of a removal's cluster-wide hold.
    pub(crate) hold: Option<u64>,
    pub(crate) time_ms: u64,
    /// What the item is charged to the queue's bound.
    pub(crate) bytes: usize,
}

/// An app's queue: what `emit` pushed and the writer has not taken yet. Its bytes, together
/// with what the writer took and has not written yet, stay within `bound`.
pub(crate) struct Intake {
    state: Mutex<IntakeState>,
    pub(crate) notify: Notify,
    bound: usize,
    pub(crate) metrics: AppMetrics,
    overflow_warn: Mutex<Option<std::time::Instant>>,
}

#[derive(Default)]
struct IntakeState {
    items: VecDeque<Item>,
    /// Bytes charged: queued here plus taken by the writer and not yet written.
    bytes: usize,
    entries: usize,
}

/// At most one overflow warning per app in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl Intake {
    fn new(bound: usize, metrics: AppMetrics) -> Intake {
        Intake {
            state: Mutex::new(IntakeState::default()),
            notify: Notify::new(),
            bound,
            metrics,
            overflow_warn: Mutex::new(None),
        }
    }

    /// Queues `item` unless that would pass the bound (then it is dropped and counted).
    fn push(&self, item: Item, app_id: &str) {
        let bytes = item.bytes;
        let first = {
            let mut s = self.state.lock();
            if s.bytes.saturating_add(bytes) > self.bound {
                drop(s);
                self.metrics.dropped(DropReason::QueueFull).inc();
                self.warn_overflow(app_id);
                return;
            }
            s.bytes += bytes;
            s.entries += 1;
            s.items.push_back(item);
            self.publish(&s);
            s.items.len() == 1
        };
        // The writer takes everything at once: only the first item after a take wakes it.
        if first {
            self.notify.notify_one();
        }
    }

    fn warn_overflow(&self, app_id: &str) {
        let now = std::time::Instant::now();
        let mut last = self.overflow_warn.lock();
        if last.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL) {
            *last = Some(now);
            drop(last);
            tracing::warn!(app_id, "stream sink queue full; dropping the newest events");
        }
    }

    /// Takes everything queued; its bytes stay charged until [`Intake::release`].
    pub(crate) fn take(&self) -> VecDeque<Item> {
        std::mem::take(&mut self.state.lock().items)
    }

    /// Gives back the charge of `entries` items of `bytes` (written, suppressed or dropped).
    pub(crate) fn release(&self, entries: usize, bytes: usize) {
        let mut s = self.state.lock();
        s.bytes = s.bytes.saturating_sub(bytes);
        s.entries = s.entries.saturating_sub(entries);
        self.publish(&s);
    }

    fn publish(&self, s: &IntakeState) {
        self.metrics
            .queue_bytes
            .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        self.metrics
            .queue_entries
            .set(i64::try_from(s.entries).unwrap_or(i64::MAX));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Streams {
    /// No sink on this node: every emit returns at once.
    pub fn off() -> Streams {
        Streams { shared: None }
    }

    /// Registers the metrics (`{metric_prefix}_written_total`, `_dropped_total`,
    /// `_queue_bytes`, `_queue_entries`, `_write_seconds`, `_write_failures_total`) and
    /// prepares the writers on the current runtime (one per app, spawned when the app first
    /// emits; nothing connects until then). `settle`: the cluster's verdicts on held
    /// removals, the same `SettleOnce` the webhooks use.
    pub fn start(
        settings: SinkSettings,
        registry: &prometheus::Registry,
        metric_prefix: &str,
        settle: Option<Arc<dyn Journal>>,
    ) -> Result<Streams, StreamsError> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let metrics = StreamMetrics::register(registry, metric_prefix)?;
        let runtime = Handle::try_current().map_err(|_| StreamsError::NoRuntime)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Streams {
            shared: Some(Arc::new(Shared {
                runtime,
                settings,
                client,
                metrics,
                settle,
                apps: RwLock::new(HashMap::new()),
                shutdown,
                closing: AtomicBool::new(false),
            })),
        })
    }

    /// Whether any sink of `app` could want an event of `kind` on `channel` (lets a caller
    /// skip building an event nobody writes).
    pub fn wants(&self, app: Option<&Arc<AppStreams>>, kind: StreamKind, channel: &str) -> bool {
        self.shared.is_some() && app.is_some_and(|a| a.wants(kind, channel))
    }

    /// Queues `event` for `app`'s sinks. Never blocks or awaits. Does nothing when no sink of
    /// the app wants the event's kind on its channel; drops it (counted) when the app's
    /// queue is full. `hold`: the token of a removal's cluster-wide hold.
    pub fn emit(&self, app: &Arc<AppStreams>, event: StreamEvent, hold: Option<u64>) {
        let Some(shared) = &self.shared else {
            return;
        };
        if !app.wants(event.kind(), event.channel()) {
            return;
        }
        let item = Item {
            app: Arc::clone(app),
            bytes: event.size(),
            event,
            hold,
            time_ms: now_ms(),
        };
        {
            let apps = shared.apps.read();
            if let Some(queue) = apps.get(&app.app_id) {
                queue.intake.push(item, &app.app_id);
                return;
            }
        }
        let mut apps = shared.apps.write();
        if shared.closing.load(Ordering::Acquire) {
            drop(apps);
            shared
                .metrics
                .for_app(&app.app_id)
                .dropped(DropReason::Shutdown)
                .inc();
            return;
        }
        let queue = apps
            .entry(app.app_id.clone())
            .or_insert_with(|| shared.open_app(&app.app_id));
        queue.intake.push(item, &app.app_id);
    }

    /// Stops accepting events and lets every app's writer write what it holds (held
    /// removals are released at once) until `grace` ends; what is left then is dropped and
    /// counted. Idempotent.
    pub async fn shutdown(&self, grace: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        let deadline = tokio::time::Instant::now() + grace;
        let tasks: Vec<(String, Arc<Intake>, JoinHandle<()>)> = {
            let mut apps = shared.apps.write();
            shared.closing.store(true, Ordering::Release);
            apps.iter_mut()
                .filter_map(|(id, q)| q.task.take().map(|t| (id.clone(), q.intake.clone(), t)))
                .collect()
        };
        shared.shutdown.send_replace(true);
        for (app_id, intake, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let left = {
                    let mut s = intake.state.lock();
                    let left = s.entries;
                    *s = IntakeState::default();
                    intake.publish(&s);
                    left
                };
                intake
                    .metrics
                    .dropped(DropReason::Shutdown)
                    .inc_by(u64::try_from(left).unwrap_or(u64::MAX));
                tracing::warn!(app_id = %app_id, left, "stream sink did not finish within the shutdown grace; unwritten entries dropped");
            }
        }
    }
}

impl Shared {
    /// Creates an app's queue and spawns its writer (under the `apps` write lock, which is
    /// fine: spawning does not block).
    fn open_app(&self, app_id: &str) -> AppQueue {
        let intake = Arc::new(Intake::new(
            self.settings.queue_bytes,
            self.metrics.for_app(app_id),
        ));
        let writer = writer::Writer::new(
            app_id.to_string(),
            intake.clone(),
            self.client.clone(),
            self.settings.clone(),
            self.settle.clone(),
            self.shutdown.subscribe(),
        );
        AppQueue {
            intake,
            task: Some(self.runtime.spawn(writer.run())),
        }
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("on", &self.shared.is_some())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::webhooks::WebhookEvent;

    /// The value of `name{labels}` in the registry's text exposition.
    fn gauge(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let series = format!("{name}{{{}}}", labels.join(","));
        String::from_utf8(text)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")).map(str::to_string))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    fn client_event(i: usize) -> StreamEvent {
        StreamEvent::Webhook(WebhookEvent::ClientEvent {
            channel: "private-a".into(),
            event: "client-x".into(),
            data: format!("{i:0>100}"),
            socket_id: "1.1".into(),
            user_id: None,
        })
    }

    #[tokio::test]
    async fn an_unreachable_redis_fills_the_queue_to_its_bound_then_drops_the_newest() {
        let registry = prometheus::Registry::new();
        // Nothing listens on port 1: every connection attempt fails at once.
        let settings = SinkSettings {
            redis_url: "redis://127.0.0.1:1/0".into(),
            queue_bytes: 2_000,
            ..SinkSettings::default()
        };
        let streams = Streams::start(settings, &registry, "t_stream", None).unwrap();
        let app = Arc::new(AppStreams {
            app_id: "1".into(),
            sinks: vec![StreamSink::new("k")],
            removal_delay: Duration::ZERO,
        });
        let size = client_event(0).size();
        for i in 0..20 {
            streams.emit(&app, client_event(i), None);
        }
        let fit = 2_000 / size;
        let app_label = [("app_id", "1")];
        assert_eq!(
            gauge(&registry, "t_stream_queue_entries", &app_label) as usize,
            fit
        );
        assert_eq!(
            gauge(&registry, "t_stream_queue_bytes", &app_label) as usize,
            fit * size
        );
        let dropped = [("app_id", "1"), ("reason", "queue_full")];
        assert_eq!(
            gauge(&registry, "t_stream_dropped_total", &dropped) as usize,
            20 - fit
        );
        // Events nobody's sink wants cost nothing.
        let none = Arc::new(AppStreams {
            sinks: vec![StreamSink {
                events: vec![StreamKind::ApiEvent],
                ..StreamSink::new("k")
            }],
            ..(*app).clone()
        });
        streams.emit(&none, client_event(99), None);
        assert_eq!(
            gauge(&registry, "t_stream_dropped_total", &dropped) as usize,
            20 - fit
        );
        // A shutdown whose grace ends with entries unwritten counts them as dropped.
        streams.shutdown(Duration::from_millis(200)).await;
        let shutdown = [("app_id", "1"), ("reason", "shutdown")];
        assert_eq!(
            gauge(&registry, "t_stream_dropped_total", &shutdown) as usize,
            fit
        );
        assert_eq!(gauge(&registry, "t_stream_queue_entries", &app_label), 0.0);
    }

    #[test]
    fn off_does_nothing() {
        let streams = Streams::off();
        let app = Arc::new(AppStreams {
            app_id: "1".into(),
            sinks: vec![StreamSink::new("k")],
            removal_delay: Duration::ZERO,
        });
        assert!(!streams.wants(Some(&app), StreamKind::ApiEvent, "a"));
        streams.emit(&app, client_event(0), None);
    }
}
