//! Webhooks (protocol.md section 6): the server reports channel occupancy, presence membership,
//! client events, cache misses and subscription counts to each app's configured URLs.
//!
//! [`Webhooks`] is the handle the rest of the server holds. [`Webhooks::emit`] never blocks:
//! it filters, then `try_send`s into the app's bounded queue (overflow: the newest event is
//! dropped, counted in `{prefix}_dropped_total{reason="queue_full"}` and logged at a
//! rate-limited warn). Replays adopted from a dead node are not dropped when the queue is
//! full: they wait, in order, in the app's replay backlog (bounded by [`REPLAY_BACKLOG`];
//! overflow: left in this node's journal, counted as `reason="replay_backlog_full"`) and a
//! task moves them into the queue as room frees. Behind the queue, one task per app (`dispatcher.rs`) delays removals,
//! de-duplicates, filters per target, batches, and hands requests to per-target lanes that
//! sign, POST and retry.
//!
//! Codemap: `event.rs` wire shapes · `config.rs` targets, app and dispatcher settings, the
//! per-target filter · `endpoint.rs` URL/header validation · `gate.rs` removal delay and
//! de-duplication · `batch.rs` batching · `payload.rs` body and signature · `delivery.rs`
//! timeout, back-off and status verdicts · `transport.rs` the HTTP client · `metrics.rs`
//! Prometheus handles · `dispatcher.rs` the tasks.
//!
//! Not owned here: deciding that a channel became occupied or a member left (the callers do,
//! from cluster-wide state).
//!
//! Guarantees: a request never mixes apps or targets; each URL receives only the events its
//! filter selects; one channel's events reach a URL in release order; delivery is
//! at-least-once while the retry window lasts and nothing is persisted across restarts.

mod batch;
mod config;
mod delivery;
mod dispatcher;
mod endpoint;
mod error;
mod event;
mod gate;
mod journal;
mod metrics;
mod observer;
mod payload;
mod transport;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{
    AppWebhooks, DispatcherSettings, WebhookTarget, DEFAULT_BATCH_MAX_EVENTS, DEFAULT_BATCH_WINDOW,
    DEFAULT_REMOVAL_DELAY,
};
pub use endpoint::{redact_url, validate_target_url};
pub use error::WebhookError;
pub use event::{WebhookEvent, WebhookKind};
pub(crate) use gate::{Admission, EventGate};
pub use gate::{CACHE_MISS_WINDOW, SUBSCRIPTION_COUNT_BUSY, SUBSCRIPTION_COUNT_INTERVAL};
pub use journal::{Journal, JournalEntry, JournalId, MemoryJournal, Replay, SettleOnce};
pub use observer::{DeliveryReport, DeliveryWatch};

/// A `channel_vacated` or `member_removed` held cluster-wide for the removal delay: the
/// transition's script leaves a marker holding `token` (for `ttl`, longer than the delay), a
/// re-add on any node takes it away (and sends no `channel_occupied`/`member_added`), and the
/// node that holds the removal sends it only if the marker is still there when it falls due
/// ([`Journal::settle`]). So a page reload that lands on another node sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalHold {
    pub token: u64,
    pub ttl: std::time::Duration,
}

/// How much longer a hold's marker lives than the removal delay, so that it is still there when
/// its removal falls due on a busy node.
const HOLD_SLACK: std::time::Duration = std::time::Duration::from_secs(30);

impl RemovalHold {
    /// A new hold for a removal delayed by `delay`; `None` when removals are not delayed.
    pub fn new(delay: std::time::Duration) -> Option<RemovalHold> {
        (!delay.is_zero()).then(|| RemovalHold {
            token: rand::random::<u64>() | 1,
            ttl: delay + HOLD_SLACK,
        })
    }
}

use delivery::DeliveryPolicy;
use dispatcher::{
    AppDispatcher, Delivery, Item, Queued, WarnLimiter, LANES_PER_TARGET, WARN_INTERVAL,
};
use metrics::{AppMetrics, DropReason, WebhookMetrics};
use transport::{HyperTransport, Transport};

/// The webhooks handle: cheap to clone, shared by every part of the server that emits.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Handle,
    queue_capacity: usize,
    delivery: Arc<Delivery>,
    metrics: WebhookMetrics,
    /// One entry per app that has emitted at least once. Read-locked on every emit, written
    /// only when an app emits for the first time and at shutdown; never held across `.await`.
    apps: RwLock<HashMap<String, AppQueue>>,
    shutdown: watch::Sender<bool>,
    closing: AtomicBool,
}

/// Replayed requests that may wait per app for room in its queue: as many as a dead node's
/// journal keeps, so a whole adopted journal fits.
pub const REPLAY_BACKLOG: usize = 100_000;

/// The sending side of one app's queue.
struct AppQueue {
    tx: mpsc::Sender<Queued>,
    task: Option<JoinHandle<()>>,
    metrics: AppMetrics,
    overflow_warn: WarnLimiter,
    replays: Arc<Mutex<ReplayBacklog>>,
}

/// Replays waiting for room in an app's queue, oldest first.
#[derive(Default)]
struct ReplayBacklog {
    waiting: VecDeque<Queued>,
    /// A task is moving `waiting` into the queue; while it is, later replays wait behind.
    moving: bool,
}

impl AppQueue {
    fn offer(&self, app: &Arc<AppWebhooks>, item: Item, shared: &Shared) {
        // Counted before the send so the dispatcher's decrement can never run first.
        self.metrics.queue_depth.inc();
        let queued = Queued {
            app: Arc::clone(app),
            item,
        };
        if matches!(queued.item, Item::Replay(_)) {
            return self.offer_replay(queued, shared);
        }
        let Err(err) = self.tx.try_send(queued) else {
            return;
        };
        self.metrics.queue_depth.dec();
        match err {
            TrySendError::Full(_) => {
                self.metrics.dropped(DropReason::QueueFull).inc();
                if let Some(held_back) = self.overflow_warn.allow() {
                    tracing::warn!(app_id = %app.app_id, held_back, "webhook queue full; dropping the newest events");
                }
            }
            TrySendError::Closed(_) => self.metrics.dropped(DropReason::Shutdown).inc(),
        }
    }

    /// A replay is never dropped for a full queue: its events were released by a node that
    /// died and exist nowhere else but the journal. It waits behind earlier replays.
    fn offer_replay(&self, queued: Queued, shared: &Shared) {
        let mut backlog = self.replays.lock();
        if !backlog.moving {
            match self.tx.try_send(queued) {
                Ok(()) => return,
                Err(TrySendError::Full(queued)) => {
                    backlog.waiting.push_back(queued);
                    backlog.moving = true;
                    shared.runtime.spawn(move_replays(
                        self.tx.clone(),
                        Arc::clone(&self.replays),
                        shared.shutdown.subscribe(),
                        self.metrics.clone(),
                    ));
                }
                // A replay refused at shutdown stays journaled for the node that outlives
                // this one.
                Err(TrySendError::Closed(_)) => {
                    self.metrics.queue_depth.dec();
                    self.metrics.dropped(DropReason::Shutdown).inc();
                }
            }
            return;
        }
        if backlog.waiting.len() >= REPLAY_BACKLOG {
            drop(backlog);
            // Left in this node's journal: adopted again if this node dies.
            self.metrics.queue_depth.dec();
            self.metrics.dropped(DropReason::ReplayBacklogFull).inc();
            if let Some(held_back) = self.overflow_warn.allow() {
                tracing::warn!(app_id = %queued.app.app_id, held_back, "webhook replay backlog full; replays left in the journal");
            }
            return;
        }
        backlog.waiting.push_back(queued);
    }
}

/// Moves waiting replays into the app's queue, oldest first, as room frees; stops when none
/// is left, or at shutdown (what still waits stays in the journal for the node that outlives
/// this one).
async fn move_replays(
    tx: mpsc::Sender<Queued>,
    backlog: Arc<Mutex<ReplayBacklog>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: AppMetrics,
) {
    loop {
        let permit = tokio::select! {
            permit = tx.reserve() => permit.ok(),
            _ = shutdown.wait_for(|closing| *closing) => None,
        };
        let mut waiting = backlog.lock();
        let Some(permit) = permit else {
            let left = std::mem::take(&mut waiting.waiting).len();
            waiting.moving = false;
            drop(waiting);
            let left = i64::try_from(left).unwrap_or(i64::MAX);
            metrics.queue_depth.sub(left);
            metrics
                .dropped(DropReason::Shutdown)
                .inc_by(left.unsigned_abs());
            return;
        };
        match waiting.waiting.pop_front() {
            Some(queued) => permit.send(queued),
            None => {
                waiting.moving = false;
                return;
            }
        }
    }
}

impl Webhooks {
    /// Registers the metrics (`{metric_prefix}_sent_total`, `_failed_total`,
    /// `_retried_total`, `_dropped_total`, `_queue_depth`, `_journal_total`) and prepares the dispatcher on the
    /// current tokio runtime. Each app's dispatcher task is spawned on that runtime when the
    /// app first emits. With a `journal`, released requests are recorded until finished
    /// (see `journal.rs`). Fails outside a runtime, on unusable settings, or when the metrics
    /// cannot be registered.
    pub fn start(
        settings: DispatcherSettings,
        registry: &prometheus::Registry,
        metric_prefix: &str,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<Self, WebhookError> {
        settings.check()?;
        let metrics = WebhookMetrics::register(registry, metric_prefix)?;
        let transport = Arc::new(HyperTransport::new(
            LANES_PER_TARGET,
            settings.ca_file.as_deref(),
        )?);
        Webhooks::start_with(settings, metrics, transport, journal)
    }

    pub(crate) fn start_with(
        settings: DispatcherSettings,
        metrics: WebhookMetrics,
        transport: Arc<dyn Transport>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<Self, WebhookError> {
        settings.check()?;
        let runtime = Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let (shutdown, _) = watch::channel(false);
        let shared = Shared {
            runtime,
            queue_capacity: settings.queue_capacity,
            delivery: Arc::new(Delivery {
                transport,
                policy: DeliveryPolicy::from_settings(&settings),
                journal,
                watch: std::sync::OnceLock::new(),
            }),
            metrics,
            apps: RwLock::new(HashMap::new()),
            shutdown,
            closing: AtomicBool::new(false),
        };
        Ok(Webhooks {
            shared: Arc::new(shared),
        })
    }

    /// Tells `watch` how every request ends from now on (the first watcher set stays).
    pub fn watch(&self, watch: Arc<dyn DeliveryWatch>) {
        let _ = self.shared.delivery.watch.set(watch);
    }

    /// Queues `event` for `app`. Never blocks or awaits, and may be called from any thread.
    ///
    /// Returns at once, doing nothing, when no target of `app` wants the event's kind on its
    /// channel. Otherwise the event joins the app's bounded queue; when that is full the
    /// event is dropped (counted and logged). Removals are held and may be cancelled by a
    /// quick re-add (protocol.md 6.4); repeated cache misses are de-duplicated. Callers report each
    /// state change once and in order; this module does the delaying and de-duplication.
    ///
    /// Keep passing the same `Arc` while the app's configuration is unchanged: a different
    /// `Arc` is compared with the previous one and, if its contents differ, applied from this
    /// event on (unchanged targets keep their open batches).
    pub fn emit(&self, app: &Arc<AppWebhooks>, event: WebhookEvent) {
        self.emit_held(app, event, None);
    }

    /// Like [`Webhooks::emit`], for a removal held cluster-wide under `hold`'s token.
    pub fn emit_held(&self, app: &Arc<AppWebhooks>, event: WebhookEvent, hold: Option<u64>) {
        if !app.wants(&event) {
            return;
        }
        self.offer(app, Item::Event(event, hold));
    }

    /// Delivers a request taken over from a node that died (see `journal.rs`) to the target
    /// of `app` with the recorded URL, and forgets it once finished. Without `app` (it, or its
    /// webhooks, are not configured here) the request is dropped, counted and forgotten.
    /// Never blocks.
    pub fn replay(&self, app: Option<&Arc<AppWebhooks>>, replay: Replay) {
        let Some(app) = app else {
            let metrics = self.shared.metrics.for_app(&replay.entry.app_id);
            self.shared
                .delivery
                .abandon(&metrics, replay, "its app has no webhooks here");
            return;
        };
        self.offer(app, Item::Replay(replay));
    }

    fn offer(&self, app: &Arc<AppWebhooks>, item: Item) {
        let shared = &*self.shared;
        {
            let apps = shared.apps.read();
            if let Some(queue) = apps.get(&app.app_id) {
                queue.offer(app, item, shared);
                return;
            }
        }
        let mut apps = shared.apps.write();
        if shared.closing.load(Ordering::Acquire) {
            drop(apps);
            let metrics = shared.metrics.for_app(&app.app_id);
            metrics.dropped(DropReason::Shutdown).inc();
            return;
        }
        let queue = apps
            .entry(app.app_id.clone())
            .or_insert_with(|| shared.open_app(app));
        queue.offer(app, item, shared);
    }

    /// Stops accepting events, then lets every app's dispatcher send what it holds: queued
    /// events, held removals (released at once: the server is going away), open batches and
    /// the lanes' backlogs, retries included. Whatever is still unsent after `grace` is
    /// abandoned. Later `emit` calls are counted as dropped. Idempotent.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let tasks: Vec<(String, JoinHandle<()>)> = {
            let mut apps = self.shared.apps.write();
            self.shared.closing.store(true, Ordering::Release);
            apps.iter_mut()
                .filter_map(|(app_id, queue)| queue.task.take().map(|task| (app_id.clone(), task)))
                .collect()
        };
        self.shared.shutdown.send_replace(true);
        for (app_id, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                // The aborted dispatcher can no longer drain its queue.
                self.shared.metrics.for_app(&app_id).queue_depth.set(0);
                tracing::warn!(app_id = %app_id, "webhook dispatcher did not finish within the shutdown grace; unsent webhooks abandoned");
            }
        }
    }
}

impl Shared {
    /// Creates an app's queue and spawns its dispatcher. Called under the `apps` write lock,
    /// which is fine: spawning does not block.
    fn open_app(&self, app: &Arc<AppWebhooks>) -> AppQueue {
        let metrics = self.metrics.for_app(&app.app_id);
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let dispatcher = AppDispatcher::new(
            Arc::clone(app),
            rx,
            self.shutdown.subscribe(),
            Arc::clone(&self.delivery),
            metrics.clone(),
        );
        let task = self.runtime.spawn(dispatcher.run());
        AppQueue {
            tx,
            task: Some(task),
            metrics,
            overflow_warn: WarnLimiter::new(WARN_INTERVAL),
            replays: Arc::default(),
        }
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("apps", &self.shared.apps.read().len())
            .field("closing", &self.shared.closing.load(Ordering::Relaxed))
            .finish()
    }
}
