//! The per-app dispatcher task and its delivery lanes.
//!
//! One [`AppDispatcher`] task per app reads the app's bounded queue, passes each event
//! through the [`EventGate`] (removal delay, de-duplication), filters it per target, batches
//! it, and hands finished batches to the target's lanes. Each target has
//! [`LANES_PER_TARGET`] lanes; a lane is a task with a bounded backlog that builds, signs and
//! delivers one request at a time (with retries), so at most `LANES_PER_TARGET` requests are
//! in flight per target, and a slow receiver fills only its own backlogs, whose overflow is
//! dropped and counted. Targets and apps never wait for each other.
//!
//! Journal: when the node has one (cluster mode), a lane records each request before its
//! first attempt and forgets it when finished; requests waiting behind a slow one are
//! recorded as they arrive, so a node that dies leaves them for another node to replay.
//! Replays (requests taken over from a dead node) enter through the app's queue like events,
//! skip the gate and batching, and go to the lane their first channel maps to.
//!
//! Order: without batching, a channel always maps to the same lane, so one channel's events
//! reach a URL in the order they were released while different channels go concurrently.
//! With batching, all of a target's events share one batch (so one request carries every
//! channel's events of the window) and one lane, which keeps batches in order.
//!
//! This file owns the task structure and routing; the rules themselves live in `gate.rs`,
//! `batch.rs`, `payload.rs` and `delivery.rs`.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::batch::Batch;
use super::config::{AppWebhooks, WebhookTarget};
use super::delivery::{deliver, DeliveryPolicy, Outcome};
use super::endpoint::Endpoint;
use super::event::WebhookEvent;
use super::gate::{Admission, EventGate};
use super::journal::{Journal, JournalEntry, JournalId, Replay};
use super::metrics::{AppMetrics, DropReason, JournalOp};
use super::payload::{build_request, unix_time_ms};
use super::transport::Transport;

/// Concurrent requests per target (and pooled connections per receiver).
pub(crate) const LANES_PER_TARGET: usize = 4;
/// Requests that may wait per lane before new ones are dropped: this many in the lane's
/// queue, and as many again taken from it (and journaled) behind the request in flight.
pub(crate) const LANE_BACKLOG: usize = 256;
/// Repeated warnings of one kind are logged at most this often (with a count of the rest).
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// One emitted event (or replayed request) with the configuration it came under.
pub(crate) struct Queued {
    pub(crate) app: Arc<AppWebhooks>,
    pub(crate) item: Item,
}

pub(crate) enum Item {
    /// An event, with the token of its cluster-wide hold for a held removal.
    Event(WebhookEvent, Option<u64>),
    Replay(Replay),
}

/// What every lane needs to deliver: the transport, the retry policy and the journal.
pub(crate) struct Delivery {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) journal: Option<Arc<dyn Journal>>,
    /// Who hears how each request ended (the debug console), if anyone.
    pub(crate) watch: std::sync::OnceLock<Arc<dyn super::DeliveryWatch>>,
}

impl Delivery {
    /// Drops a replayed request that cannot be delivered here (`why`): counted as an invalid
    /// target, logged, and forgotten by the journal.
    pub(crate) fn abandon(&self, metrics: &AppMetrics, replay: Replay, why: &'static str) {
        let events = replay.entry.events.len() as u64;
        metrics.dropped(DropReason::InvalidTarget).inc_by(events);
        tracing::warn!(app_id = %replay.entry.app_id, events, why, "replayed webhook request dropped");
        self.discard(replay.id);
    }

    /// Forgets a journaled request that will not be delivered, without waiting.
    pub(crate) fn discard(&self, id: JournalId) {
        if let Some(journal) = &self.journal {
            let journal = Arc::clone(journal);
            tokio::spawn(async move { journal.forget(&id).await });
        }
    }
}

/// Lets one warning through per interval and counts the ones it held back.
pub(crate) struct WarnLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        WarnLimiter {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held_back_since_last)` when this warning should be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (last, held_back) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *held_back = held_back.saturating_add(1);
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held_back))
            }
        }
    }
}

/// A batch of one target's events on its way to a lane; `journal` is set for a replay,
/// which is already recorded.
struct Job {
    app: Arc<AppWebhooks>,
    events: Vec<WebhookEvent>,
    journal: Option<JournalId>,
}

struct Lane {
    batch: Batch,
    tx: mpsc::Sender<Job>,
}

/// One configured target: its filter, and its lanes (none when its URL is unusable).
struct TargetState {
    target: WebhookTarget,
    lanes: Vec<Lane>,
    host: Arc<str>,
    warn: Arc<WarnLimiter>,
}

/// The lane a channel's events always take.
fn lane_index(channel: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    // The modulo keeps the value below `lanes`, which is a usize.
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// The lane a request about `channel` takes: with batching every request takes lane 0 (a batch
/// mixes channels, and one lane keeps batches in order); otherwise the channel's own lane.
fn lane_for(app: &AppWebhooks, channel: &str, lanes: usize) -> usize {
    if app.batching {
        0
    } else {
        lane_index(channel, lanes)
    }
}

/// The task that owns one app's webhook state; see the module docs.
pub(crate) struct AppDispatcher {
    app: Arc<AppWebhooks>,
    rx: mpsc::Receiver<Queued>,
    shutdown: watch::Receiver<bool>,
    gate: EventGate,
    targets: Vec<TargetState>,
    lane_tasks: JoinSet<()>,
    delivery: Arc<Delivery>,
    metrics: AppMetrics,
}

impl AppDispatcher {
    pub(crate) fn new(
        app: Arc<AppWebhooks>,
        rx: mpsc::Receiver<Queued>,
        shutdown: watch::Receiver<bool>,
        delivery: Arc<Delivery>,
        metrics: AppMetrics,
    ) -> Self {
        AppDispatcher {
            app,
            rx,
            shutdown,
            gate: EventGate::new(),
            targets: Vec::new(),
            lane_tasks: JoinSet::new(),
            delivery,
            metrics,
        }
    }

    /// Runs until shutdown is signalled (or every `Webhooks` handle is gone), then drains:
    /// queued events are admitted, held removals released, open batches sent, and the lanes
    /// finish their backlogs. The caller bounds that with its grace period by aborting.
    pub(crate) async fn run(mut self) {
        // Lanes are spawned here, on the runtime, rather than in `new`, which may run on
        // whatever thread called `emit`.
        let app = Arc::clone(&self.app);
        self.targets = app
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| self.open_target(index, target))
            .collect();
        if !*self.shutdown.borrow_and_update() {
            loop {
                let wake = self.next_wake();
                tokio::select! {
                    _ = self.shutdown.changed() => break,
                    queued = self.rx.recv() => match queued {
                        Some(queued) => self.accept(queued),
                        None => break,
                    },
                    () = sleep_until(wake) => {}
                }
                self.fire_due(Instant::now()).await;
            }
        }
        self.drain().await;
    }

    /// The held events to send, in order: those held cluster-wide only if their hold is still
    /// there (a re-add on some node took it away otherwise).
    async fn settle(&self, due: Vec<(WebhookEvent, Option<u64>)>) -> Vec<WebhookEvent> {
        let held: Vec<(&WebhookEvent, u64)> = due
            .iter()
            .filter_map(|(event, hold)| hold.map(|token| (event, token)))
            .collect();
        let mut verdicts = match &self.delivery.journal {
            Some(journal) if !held.is_empty() => {
                journal.settle(&self.app.app_id, &held).await.into_iter()
            }
            _ => Vec::new().into_iter(),
        };
        due.into_iter()
            .filter(|(_, hold)| hold.is_none() || verdicts.next().unwrap_or(true))
            .map(|(event, _)| event)
            .collect()
    }

    fn next_wake(&self) -> Option<Instant> {
        let batches = self
            .targets
            .iter()
            .flat_map(|state| state.lanes.iter())
            .filter_map(|lane| lane.batch.deadline());
        batches.chain(self.gate.next_due()).min()
    }

    fn accept(&mut self, queued: Queued) {
        self.metrics.queue_depth.dec();
        if !Arc::ptr_eq(&queued.app, &self.app) {
            if *queued.app == *self.app {
                self.app = queued.app;
            } else {
                self.reconfigure(queued.app);
            }
        }
        let now = Instant::now();
        let (event, hold) = match queued.item {
            Item::Event(event, hold) => (event, hold),
            Item::Replay(replay) => return self.replay(replay),
        };
        match self.gate.admit(event, hold, self.app.removal_delay, now) {
            Admission::Release(event) => self.route(event, now),
            Admission::Held => {}
            Admission::Suppressed(why) => {
                tracing::trace!(app_id = %self.app.app_id, reason = why.as_str(), "webhook event suppressed");
            }
        }
    }

    async fn fire_due(&mut self, now: Instant) {
        let due: Vec<_> = std::iter::from_fn(|| self.gate.pop_due(now)).collect();
        for event in self.settle(due).await {
            self.route(event, now);
        }
        for state in &mut self.targets {
            for lane in &mut state.lanes {
                if let Some(events) = lane.batch.take_due(now) {
                    offer_job(
                        lane,
                        Job::fresh(&self.app, events),
                        &state.host,
                        &state.warn,
                        &self.metrics,
                        &self.delivery,
                    );
                }
            }
        }
    }

    /// Sends `event` towards every target that wants it (filtering happens here, before
    /// anything is serialised or signed).
    fn route(&mut self, event: WebhookEvent, now: Instant) {
        let app = &self.app;
        for state in &mut self.targets {
            if !state.target.wants(&event) {
                continue;
            }
            if state.lanes.is_empty() {
                self.metrics.dropped(DropReason::InvalidTarget).inc();
                continue;
            }
            let index = lane_for(app, event.channel(), state.lanes.len());
            let Some(lane) = state.lanes.get_mut(index) else {
                continue;
            };
            let events = if app.batching {
                lane.batch
                    .push(event.clone(), now, app.batch_window, app.batch_max_events)
            } else {
                Some(vec![event.clone()])
            };
            if let Some(events) = events {
                offer_job(
                    lane,
                    Job::fresh(app, events),
                    &state.host,
                    &state.warn,
                    &self.metrics,
                    &self.delivery,
                );
            }
        }
    }

    /// Sends a request taken over from a dead node to the target with its URL, as it was:
    /// its events passed the gate and were batched on the node that recorded them.
    fn replay(&mut self, replay: Replay) {
        self.metrics.journal(JournalOp::Replayed).inc();
        let state = self
            .targets
            .iter()
            .find(|state| state.target.url == replay.entry.url && !state.lanes.is_empty());
        let Some(state) = state else {
            self.delivery
                .abandon(&self.metrics, replay, "it has no matching target any more");
            return;
        };
        let Replay { id, entry } = replay;
        let channel = entry.events.first().map_or("", WebhookEvent::channel);
        let index = lane_for(&self.app, channel, state.lanes.len());
        let Some(lane) = state.lanes.get(index) else {
            return;
        };
        let job = Job {
            app: Arc::clone(&self.app),
            events: entry.events,
            journal: Some(id),
        };
        offer_job(
            lane,
            job,
            &state.host,
            &state.warn,
            &self.metrics,
            &self.delivery,
        );
    }

    /// Applies a changed configuration: targets that are unchanged keep their lanes and open
    /// batches; removed or changed ones send what they hold and close.
    fn reconfigure(&mut self, app: Arc<AppWebhooks>) {
        let mut old: Vec<Option<TargetState>> = std::mem::take(&mut self.targets)
            .into_iter()
            .map(Some)
            .collect();
        let mut next = Vec::with_capacity(app.targets.len());
        for (index, target) in app.targets.iter().enumerate() {
            let kept = old
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|state| state.target == *target))
                .and_then(Option::take);
            match kept {
                Some(state) => next.push(state),
                None => next.push(self.open_target(index, target)),
            }
        }
        for mut state in old.into_iter().flatten() {
            flush_target(&mut state, &self.app, &self.metrics, &self.delivery);
        }
        self.targets = next;
        self.app = app;
        while self.lane_tasks.try_join_next().is_some() {}
    }

    fn open_target(&mut self, index: usize, target: &WebhookTarget) -> TargetState {
        let app_id = &self.app.app_id;
        let warn = Arc::new(WarnLimiter::new(WARN_INTERVAL));
        let (endpoint, skipped) = match Endpoint::prepare(target) {
            Ok(prepared) => prepared,
            Err(err) => {
                // The URL may carry a token, so only the kind of problem is logged.
                let reason = match err {
                    super::WebhookError::InvalidUrl { .. } => "not an absolute http(s):// URL",
                    _ => "unusable",
                };
                tracing::error!(app_id = %app_id, target = index, reason, "webhook target unusable; its events are dropped");
                return TargetState {
                    target: target.clone(),
                    lanes: Vec::new(),
                    host: Arc::from(""),
                    warn,
                };
            }
        };
        let host: Arc<str> = Arc::from(endpoint.host.as_str());
        for err in skipped {
            tracing::warn!(app_id = %app_id, target = index, host = %host, error = %err, "webhook header skipped");
        }
        let endpoint = Arc::new(endpoint);
        let url: Arc<str> = Arc::from(target.url.as_str());
        let lanes = (0..LANES_PER_TARGET)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_BACKLOG);
                self.lane_tasks.spawn(run_lane(
                    rx,
                    Arc::clone(&endpoint),
                    Arc::clone(&url),
                    Arc::clone(&self.delivery),
                    self.metrics.clone(),
                    Arc::clone(&warn),
                ));
                Lane {
                    batch: Batch::new(),
                    tx,
                }
            })
            .collect();
        TargetState {
            target: target.clone(),
            lanes,
            host,
            warn,
        }
    }

    async fn drain(mut self) {
        self.rx.close();
        while let Some(queued) = self.rx.recv().await {
            self.accept(queued);
        }
        let held = self.gate.drain();
        let now = Instant::now();
        for event in self.settle(held).await {
            self.route(event, now);
        }
        for state in &mut self.targets {
            flush_target(state, &self.app, &self.metrics, &self.delivery);
        }
        // Closing the lane queues lets each lane finish its backlog and stop.
        self.targets.clear();
        while self.lane_tasks.join_next().await.is_some() {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends every open batch of `state` regardless of its deadline.
fn flush_target(
    state: &mut TargetState,
    app: &Arc<AppWebhooks>,
    metrics: &AppMetrics,
    delivery: &Delivery,
) {
    let TargetState {
        lanes, host, warn, ..
    } = state;
    for lane in lanes.iter_mut() {
        if let Some(events) = lane.batch.take() {
            offer_job(lane, Job::fresh(app, events), host, warn, metrics, delivery);
        }
    }
}

impl Job {
    /// A request made on this node (not yet journaled).
    fn fresh(app: &Arc<AppWebhooks>, events: Vec<WebhookEvent>) -> Job {
        Job {
            app: Arc::clone(app),
            events,
            journal: None,
        }
    }
}

/// Hands a batch to a lane without waiting: a full backlog drops the batch (newest) and
/// counts its events, so a slow receiver never stalls the app's other targets. A dropped
/// replay is forgotten by the journal too.
fn offer_job(
    lane: &Lane,
    job: Job,
    host: &str,
    warn: &WarnLimiter,
    metrics: &AppMetrics,
    delivery: &Delivery,
) {
    let count = job.events.len() as u64;
    if let Err(err) = lane.tx.try_send(job) {
        metrics.dropped(DropReason::BacklogFull).inc_by(count);
        let full = matches!(err, TrySendError::Full(_));
        let job = err.into_inner();
        if let Some(id) = job.journal {
            delivery.discard(id);
        }
        if full {
            if let Some(held_back) = warn.allow() {
                tracing::warn!(app_id = %job.app.app_id, host = %host, dropped = count, held_back, "webhook receiver is not keeping up; dropping newest events");
            }
        }
    }
}

/// One lane: delivers its jobs one at a time, in order, while it keeps taking (and
/// journaling) the jobs that queue up behind the one in flight, up to [`LANE_BACKLOG`].
async fn run_lane(
    mut rx: mpsc::Receiver<Job>,
    endpoint: Arc<Endpoint>,
    url: Arc<str>,
    delivery: Arc<Delivery>,
    metrics: AppMetrics,
    warn: Arc<WarnLimiter>,
) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut current: Option<BoxFuture<'static, Option<JournalId>>> = None;
    let mut open = true;
    loop {
        if current.is_none() {
            match waiting.pop_front() {
                Some(job) => {
                    current = Some(Box::pin(send(
                        job,
                        Arc::clone(&endpoint),
                        Arc::clone(&delivery),
                        metrics.clone(),
                        Arc::clone(&warn),
                    )));
                }
                None if !open => break,
                None => {}
            }
        }
        let busy = current.is_some();
        let in_flight = async {
            match current.as_mut() {
                Some(request) => request.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            job = rx.recv(), if open && waiting.len() < LANE_BACKLOG => match job {
                Some(mut job) => {
                    if job.journal.is_none() {
                        job.journal = record(&delivery, &job, &url, &metrics).await;
                    }
                    waiting.push_back(job);
                }
                None => open = false,
            },
            finished = in_flight, if busy => {
                current = None;
                if let (Some(journal), Some(id)) = (&delivery.journal, finished) {
                    journal.forget(&id).await;
                }
            }
            else => break,
        }
    }
}

/// Journals a job made on this node (nothing without a journal).
async fn record(
    delivery: &Delivery,
    job: &Job,
    url: &str,
    metrics: &AppMetrics,
) -> Option<JournalId> {
    let journal = delivery.journal.as_ref()?;
    let entry = JournalEntry {
        app_id: job.app.app_id.clone(),
        url: url.to_owned(),
        events: job.events.clone(),
    };
    let id = journal.record(&entry).await;
    let op = if id.is_some() {
        JournalOp::Recorded
    } else {
        JournalOp::Unrecorded
    };
    metrics.journal(op).inc();
    id
}

/// Builds, signs and delivers one job; returns its journal id once it is finished. The body
/// is built (and `time_ms` taken) just before the first attempt so the retry window and
/// `time_ms` start together.
async fn send(
    job: Job,
    endpoint: Arc<Endpoint>,
    delivery: Arc<Delivery>,
    metrics: AppMetrics,
    warn: Arc<WarnLimiter>,
) -> Option<JournalId> {
    let app_id = &job.app.app_id;
    let request = match build_request(
        &endpoint,
        &job.app.key,
        &job.app.secret,
        unix_time_ms(),
        &job.events,
    ) {
        Ok(request) => request,
        Err(err) => {
            metrics.failed.inc();
            tracing::error!(app_id = %app_id, host = %endpoint.host, error = %err, "webhook request could not be built");
            report(
                &delivery,
                &job,
                &endpoint,
                "not_built",
                None,
                0,
                Some(err.to_string()),
            );
            return job.journal;
        }
    };
    let outcome = deliver(&*delivery.transport, &request, &delivery.policy, &metrics).await;
    match outcome {
        Outcome::Delivered { attempts } => {
            tracing::debug!(app_id = %app_id, host = %endpoint.host, events = request.events, attempts, "webhook delivered");
            report(
                &delivery,
                &job,
                &endpoint,
                "delivered",
                None,
                attempts,
                None,
            );
        }
        Outcome::Rejected { status, attempts } => {
            if let Some(held_back) = warn.allow() {
                tracing::warn!(app_id = %app_id, host = %endpoint.host, status = status.as_u16(), events = request.events, attempts, held_back, "webhook rejected by receiver; not retried");
            }
            let status = Some(status.as_u16());
            report(
                &delivery, &job, &endpoint, "rejected", status, attempts, None,
            );
        }
        Outcome::Exhausted {
            last_failure,
            attempts,
        } => {
            if let Some(held_back) = warn.allow() {
                tracing::warn!(app_id = %app_id, host = %endpoint.host, failure = %last_failure, events = request.events, attempts, held_back, "webhook given up after its retry window");
            }
            let failure = Some(last_failure);
            report(
                &delivery, &job, &endpoint, "gave_up", None, attempts, failure,
            );
        }
    }
    job.journal
}

/// Tells the delivery watcher, if one is set and watching the app, how `job` ended.
fn report(
    delivery: &Delivery,
    job: &Job,
    endpoint: &Endpoint,
    outcome: &'static str,
    status: Option<u16>,
    attempts: u32,
    failure: Option<String>,
) {
    let Some(watch) = delivery.watch.get() else {
        return;
    };
    if !watch.watching(&job.app.app_id) {
        return;
    }
    watch.finished(super::DeliveryReport {
        app_id: job.app.app_id.clone(),
        host: endpoint.host.clone(),
        events: job
            .events
            .iter()
            .map(|e| format!("{}:{}", e.kind(), e.channel()))
            .collect(),
        outcome,
        status,
        attempts,
        failure,
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_always_maps_to_the_same_lane() {
        for lanes in 1..=8 {
            for channel in ["a", "presence-room", "private-chat", ""] {
                let first = lane_index(channel, lanes);
                assert!(first < lanes);
                assert_eq!(lane_index(channel, lanes), first);
            }
        }
        assert_eq!(lane_index("x", 0), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn warn_limiter_lets_one_through_per_interval() {
        let limiter = WarnLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limiter.allow(), Some(2));
        assert_eq!(limiter.allow(), None);
    }
}
