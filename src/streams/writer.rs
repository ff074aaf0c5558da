//! One app's writer task: takes what `emit` queued, passes transitions through the webhooks'
//! `EventGate` (removals held for the removal delay, cancelled by a quick re-add; settled
//! cluster-wide when they fall due), renders each released event once per sink that wants
//! it, and writes them in order, `batch_max` `XADD`s per pipeline. A failed pipeline (Redis
//! unreachable, or no answer within `write_timeout`) drops the connection and is retried
//! after a back-off, its entries still first in line; the charge of an entry to the queue's
//! bound is given back only once it is written (or refused by Redis, or suppressed).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::webhooks::{Admission, EventGate, Journal, WebhookEvent};

use super::config::{AppStreams, SinkSettings};
use super::entry::StreamEvent;
use super::metrics::DropReason;
use super::{now_ms, Intake};

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// How long the writer lets events gather after the first one wakes it, so that a busy app's
/// events leave in pipelines of many `XADD`s instead of one round trip (and one wake-up) each.
const LINGER: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One entry to write.
struct Out {
    key: String,
    maxlen: u64,
    fields: Vec<(&'static str, String)>,
    /// The queue charge given back once written: the event's, on the first of its entries.
    entries: usize,
    bytes: usize,
}

pub(super) struct Writer {
    app_id: String,
    intake: Arc<Intake>,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    settings: SinkSettings,
    settle: Option<Arc<dyn Journal>>,
    shutdown: watch::Receiver<bool>,
    gate: EventGate,
    /// The app's sinks as last emitted with (held removals go where they point now).
    app: Option<Arc<AppStreams>>,
    pending: VecDeque<Out>,
    backoff: Duration,
    /// Writing failed and has not succeeded since (logged once per outage).
    down: bool,
}

impl Writer {
    pub(super) fn new(
        app_id: String,
        intake: Arc<Intake>,
        client: redis::Client,
        settings: SinkSettings,
        settle: Option<Arc<dyn Journal>>,
        shutdown: watch::Receiver<bool>,
    ) -> Writer {
        Writer {
            app_id,
            intake,
            client,
            conn: None,
            settings,
            settle,
            shutdown,
            gate: EventGate::new(),
            app: None,
            pending: VecDeque::new(),
            backoff: INITIAL_BACKOFF,
            down: false,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let closing = *self.shutdown.borrow();
            self.take_intake();
            let due = if closing {
                self.gate.drain()
            } else {
                let now = Instant::now();
                std::iter::from_fn(|| self.gate.pop_due(now)).collect()
            };
            if !due.is_empty() {
                self.release_held(due).await;
            }
            if !self.pending.is_empty() {
                if self.write_batch().await {
                    self.backoff = INITIAL_BACKOFF;
                } else {
                    // Shutdown does not cut the wait short: the grace bounds it from outside.
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
            if closing {
                return;
            }
            let next_due = self.gate.next_due();
            tokio::select! {
                () = self.intake.notify.notified() => {
                    if !*self.shutdown.borrow() {
                        tokio::time::sleep(LINGER).await;
                    }
                }
                () = sleep_until(next_due) => {}
                changed = self.shutdown.changed() => {
                    // The handle is gone without a shutdown: nothing can be emitted any more.
                    if changed.is_err() && self.pending.is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Moves what `emit` queued through the gate into `pending`.
    fn take_intake(&mut self) {
        let now = Instant::now();
        for item in self.intake.take() {
            self.app = Some(item.app.clone());
            match item.event {
                StreamEvent::Webhook(event) => {
                    match self
                        .gate
                        .admit(event, item.hold, item.app.removal_delay, now)
                    {
                        Admission::Release(event) => self.route(
                            &item.app,
                            StreamEvent::Webhook(event),
                            item.time_ms,
                            (1, item.bytes),
                        ),
                        // A held removal comes back from the gate uncharged.
                        Admission::Held | Admission::Suppressed(_) => {
                            self.intake.release(1, item.bytes)
                        }
                    }
                }
                api => self.route(&item.app, api, item.time_ms, (1, item.bytes)),
            }
        }
    }

    /// Held removals falling due: those held cluster-wide only if their hold is still there.
    async fn release_held(&mut self, due: Vec<(WebhookEvent, Option<u64>)>) {
        let held: Vec<(&WebhookEvent, u64)> = due
            .iter()
            .filter_map(|(event, hold)| hold.map(|token| (event, token)))
            .collect();
        let mut verdicts = match &self.settle {
            Some(settle) if !held.is_empty() => {
                settle.settle(&self.app_id, &held).await.into_iter()
            }
            _ => Vec::new().into_iter(),
        };
        let Some(app) = self.app.clone() else {
            return;
        };
        let time = now_ms();
        for (event, hold) in due {
            if hold.is_none() || verdicts.next().unwrap_or(true) {
                self.route(&app, StreamEvent::Webhook(event), time, (0, 0));
            }
        }
    }

    /// One entry per sink that wants `event`, the queue charge on the first.
    fn route(
        &mut self,
        app: &AppStreams,
        event: StreamEvent,
        time_ms: u64,
        charge: (usize, usize),
    ) {
        let (kind, channel) = (event.kind(), event.channel());
        let mut charge = Some(charge);
        let mut fields = None;
        for sink in app.sinks.iter().filter(|s| s.wants(kind, channel)) {
            let fields = fields.get_or_insert_with(|| event.fields(time_ms)).clone();
            let (entries, bytes) = charge.take().unwrap_or((0, 0));
            self.pending.push_back(Out {
                key: sink.key_for(&app.app_id, channel),
                maxlen: sink.maxlen,
                fields,
                entries,
                bytes,
            });
        }
        // Wanted only to pair with a removal: nothing to write.
        if let Some((entries, bytes)) = charge {
            self.intake.release(entries, bytes);
        }
    }

    /// Writes the first `batch_max` pending entries in one pipeline; `false` when it failed
    /// (they stay pending).
    async fn write_batch(&mut self) -> bool {
        let timeout = self.settings.write_timeout;
        let mut conn = match self.conn.clone() {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                let connecting = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(conn)) => {
                        self.conn = Some(conn.clone());
                        conn
                    }
                    Ok(Err(e)) => return self.failed(&e.to_string()),
                    Err(_) => return self.failed("connecting timed out"),
                }
            }
        };
        let n = self.pending.len().min(self.settings.batch_max.max(1));
        let mut pipe = redis::pipe();
        for out in self.pending.iter().take(n) {
            pipe.cmd("XADD")
                .arg(&out.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(out.maxlen)
                .arg("*");
            for (name, value) in &out.fields {
                pipe.arg(*name).arg(value.as_str());
            }
        }
        let started = std::time::Instant::now();
        let answers =
            match tokio::time::timeout(timeout, conn.req_packed_commands(&pipe, 0, n)).await {
                Ok(Ok(answers)) => answers,
                Ok(Err(e)) => {
                    self.conn = None;
                    return self.failed(&e.to_string());
                }
                Err(_) => {
                    self.conn = None;
                    return self.failed("no answer within write_timeout");
                }
            };
        let metrics = &self.intake.metrics;
        metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        if self.down {
            self.down = false;
            tracing::info!(app_id = %self.app_id, "stream sink writing again");
        }
        let mut answers = answers.into_iter();
        let (mut entries, mut bytes, mut written, mut rejected) = (0, 0, 0u64, 0u64);
        for out in self.pending.drain(..n) {
            entries += out.entries;
            bytes += out.bytes;
            match answers.next() {
                Some(Value::ServerError(e)) => {
                    rejected += 1;
                    tracing::warn!(app_id = %self.app_id, key = %out.key, error = ?e, "XADD refused; entry dropped");
                }
                _ => written += 1,
            }
        }
        metrics.written.inc_by(written);
        metrics.dropped(DropReason::Rejected).inc_by(rejected);
        self.intake.release(entries, bytes);
        true
    }

    fn failed(&mut self, error: &str) -> bool {
        self.intake.metrics.write_failures.inc();
        if !self.down {
            self.down = true;
            tracing::warn!(app_id = %self.app_id, error, "stream sink cannot write; events wait in its queue");
        }
        false
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
