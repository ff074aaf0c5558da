//! The worker process: runs one `JobSpec`'s share of client connections on a single-threaded
//! runtime, measures what they receive, and answers the coordinator's commands.
//!
//! One task per connection reads and accounts every message it receives; connections that send
//! client events get a second task that owns the write half. All state is process-local
//! (`Rc`/`Cell`/`RefCell`, no locks): the worker is one thread, and parallelism comes from
//! running several worker processes, which also keeps each under the per-process file limit.
//! What it does not do: publish over HTTP or decide phases; the coordinator does both.

use anyhow::{Context, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{spawn_local, LocalSet};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::ipc::{
    ChannelKind, CloseMode, Command, Event, JobSpec, ReadyReport, StormReport, WorkerResult,
};
use crate::payload::{self, now_ns, Control, Stamp};
use crate::sign;
use crate::stats::{loss, Latency, Seen, SeqTracker};
use crate::wsclient::{self, Incoming, Reader, Writer};

/// Publisher id of a client-event sender: high bit set so it never collides with the HTTP
/// publishers' small numbers.
pub fn sender_id(index: u64) -> u64 {
    (1 << 32) | index
}

/// Entry point of the hidden `worker` subcommand.
pub fn run() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let local = LocalSet::new();
    local.block_on(&runtime, main_loop())
}

fn emit(event: &Event) {
    let line = match serde_json::to_string(event) {
        Ok(line) => line,
        Err(e) => format!(r#"{{"type":"failed","error":"encode: {e}"}}"#),
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        // The coordinator is gone; nobody is left to report to.
        std::process::exit(0);
    }
}

async fn main_loop() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let Some(first) = lines.next_line().await.context("read job")? else {
        return Ok(());
    };
    let job: JobSpec = serde_json::from_str(&first).context("parse job")?;
    let deadline = Duration::from_millis(job.deadline_ms);
    spawn_local(async move {
        sleep(deadline).await;
        eprintln!("resound-bench worker: deadline reached, exiting");
        std::process::exit(2);
    });

    let worker = Rc::new(Worker::new(job));
    spawn_local(connect_all(worker.clone()));
    while worker.settled.get() < worker.job.count {
        sleep(Duration::from_millis(20)).await;
    }
    emit(&Event::Ready(worker.ready_report()));

    while let Some(line) = lines.next_line().await.context("read command")? {
        let command: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                emit(&Event::Failed {
                    error: format!("bad command: {e}"),
                });
                continue;
            }
        };
        match command {
            Command::Start => {
                let _ = worker.start_tx.send(true);
            }
            Command::Storm { at_ns } => {
                worker.begin_storm(at_ns);
                spawn_local(report_storm_done(worker.clone()));
            }
            Command::StormEnd => worker.phase.set(2),
            Command::Stop => {
                let _ = worker.stop_tx.send(true);
                // Let senders that were mid-write finish and count.
                sleep(Duration::from_millis(50)).await;
                emit(&Event::Stopped {
                    sent: worker.sent_per_channel(),
                    errors: worker.server_errors.get(),
                });
            }
            Command::Finish { expected } => {
                let _ = worker.stop_tx.send(true);
                worker.drain().await;
                emit(&Event::Result(Box::new(worker.result(&expected))));
            }
        }
    }
    // stdin closed: the coordinator has what it needs (or is gone).
    std::process::exit(0);
}

/// One connection's identity and what it has received.
struct Conn {
    index: u64,
    channels: Vec<u64>,
    storm: bool,
    subscribed: Cell<bool>,
    streams: RefCell<Vec<Stream>>,
    /// Client events sent, per entry of `channels`.
    sent: RefCell<Vec<u64>>,
}

struct Stream {
    channel: u64,
    publisher: u64,
    tracker: SeqTracker,
}

#[derive(Default)]
struct StormState {
    at_ns: Cell<u64>,
    started: Cell<Option<Instant>>,
    to_reconnect: Cell<u64>,
    dropped: Cell<u64>,
    reconnected: Cell<u64>,
    gave_up: Cell<u64>,
    failed_attempts: Cell<u64>,
    first_established_ns: Cell<u64>,
    last_ready_ns: Cell<u64>,
    reconnect_latency: RefCell<Latency>,
}

struct Worker {
    job: JobSpec,
    conns: RefCell<Vec<Rc<Conn>>>,
    settled: Cell<u64>,
    connected: Cell<u64>,
    failed: Cell<u64>,
    first_ready_ns: Cell<u64>,
    last_ready_ns: Cell<u64>,
    connect_latency: RefCell<Latency>,
    failure_samples: RefCell<Vec<String>>,

    deliveries: Cell<u64>,
    misrouted: Cell<u64>,
    first_delivery_ns: Cell<u64>,
    last_delivery_ns: Cell<u64>,
    /// Index into `latency`: 0 normal / before the storm, 1 during, 2 after.
    phase: Cell<usize>,
    latency: RefCell<[Latency; 3]>,
    server_errors: Cell<u64>,
    disconnects: Cell<u64>,
    finishing: Cell<bool>,

    start_tx: watch::Sender<bool>,
    stop_tx: watch::Sender<bool>,
    storm_tx: watch::Sender<u64>,
    storm: StormState,
    reconnect_permits: Semaphore,
}

impl Worker {
    fn new(job: JobSpec) -> Self {
        let reconnect = job
            .storm
            .as_ref()
            .map_or(1, |s| s.reconnect_inflight.max(1));
        Self {
            job,
            conns: RefCell::new(Vec::new()),
            settled: Cell::new(0),
            connected: Cell::new(0),
            failed: Cell::new(0),
            first_ready_ns: Cell::new(0),
            last_ready_ns: Cell::new(0),
            connect_latency: RefCell::new(Latency::new()),
            failure_samples: RefCell::new(Vec::new()),
            deliveries: Cell::new(0),
            misrouted: Cell::new(0),
            first_delivery_ns: Cell::new(0),
            last_delivery_ns: Cell::new(0),
            phase: Cell::new(0),
            latency: RefCell::new([Latency::new(), Latency::new(), Latency::new()]),
            server_errors: Cell::new(0),
            disconnects: Cell::new(0),
            finishing: Cell::new(false),
            start_tx: watch::channel(false).0,
            stop_tx: watch::channel(false).0,
            storm_tx: watch::channel(0).0,
            storm: StormState::default(),
            reconnect_permits: Semaphore::new(reconnect),
        }
    }

    fn note_failure(&self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        let mut samples = self.failure_samples.borrow_mut();
        if samples.len() < 5 && !samples.contains(&text) {
            samples.push(text);
        }
    }

    fn ready_report(&self) -> ReadyReport {
        ReadyReport {
            connected: self.connected.get(),
            failed: self.failed.get(),
            first_ready_ns: self.first_ready_ns.get(),
            last_ready_ns: self.last_ready_ns.get(),
            connect_latency: self.connect_latency.borrow().encode(),
            failure_samples: self.failure_samples.borrow().clone(),
        }
    }

    fn begin_storm(&self, at_ns: u64) {
        let live = self
            .conns
            .borrow()
            .iter()
            .filter(|c| c.storm && c.subscribed.get())
            .count() as u64;
        self.storm.to_reconnect.set(live);
        self.storm.at_ns.set(at_ns);
        self.storm.started.set(Some(Instant::now()));
        self.phase.set(1);
        self.storm_tx.send_modify(|generation| *generation += 1);
    }

    fn record_delivery(&self, conn: &Conn, stamp: Stamp, received_ns: u64) {
        if !self.job.count_deliveries {
            return;
        }
        self.deliveries.set(self.deliveries.get() + 1);
        if self.first_delivery_ns.get() == 0 {
            self.first_delivery_ns.set(received_ns);
        }
        self.last_delivery_ns.set(received_ns);
        if !conn.channels.contains(&stamp.channel) {
            self.misrouted.set(self.misrouted.get() + 1);
            return;
        }
        let mut streams = conn.streams.borrow_mut();
        let position = streams
            .iter()
            .position(|s| s.channel == stamp.channel && s.publisher == stamp.publisher);
        let stream = match position {
            Some(i) => &mut streams[i],
            None => {
                streams.push(Stream {
                    channel: stamp.channel,
                    publisher: stamp.publisher,
                    tracker: SeqTracker::default(),
                });
                let last = streams.len() - 1;
                &mut streams[last]
            }
        };
        if stream.tracker.record(stamp.seq) == Seen::New {
            let phase = self.phase.get().min(2);
            self.latency.borrow_mut()[phase].record_between(stamp.sent_ns, received_ns);
        }
    }

    fn sent_per_channel(&self) -> Vec<u64> {
        let total = usize::try_from(self.job.channels.total).unwrap_or(0);
        let mut sent = vec![0u64; total];
        for conn in self.conns.borrow().iter() {
            for (slot, &channel) in conn.channels.iter().enumerate() {
                let n = conn.sent.borrow().get(slot).copied().unwrap_or(0);
                if let Some(entry) = usize::try_from(channel).ok().and_then(|c| sent.get_mut(c)) {
                    *entry += n;
                }
            }
        }
        sent
    }

    /// Waits until deliveries stop arriving (or the drain limit passes).
    async fn drain(&self) {
        self.finishing.set(true);
        let limit = Instant::now() + Duration::from_millis(self.job.drain_ms);
        let quiet = Duration::from_millis(self.job.drain_ms.min(500));
        let mut last = self.deliveries.get();
        let mut last_change = Instant::now();
        while Instant::now() < limit {
            sleep(Duration::from_millis(20)).await;
            let now = self.deliveries.get();
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
    }

    fn result(&self, expected: &[u64]) -> WorkerResult {
        let conns = self.conns.borrow();
        // Client events sent from inside this worker reach the other subscribers here.
        let mut local_sent: HashMap<u64, u64> = HashMap::new();
        let mut sent_total = 0;
        for conn in conns.iter() {
            for (slot, &channel) in conn.channels.iter().enumerate() {
                let n = conn.sent.borrow().get(slot).copied().unwrap_or(0);
                *local_sent.entry(channel).or_default() += n;
                sent_total += n;
            }
        }
        let mut result = WorkerResult {
            deliveries: self.deliveries.get(),
            misrouted: self.misrouted.get(),
            server_errors: self.server_errors.get(),
            disconnects: self.disconnects.get(),
            sent: sent_total,
            first_delivery_ns: self.first_delivery_ns.get(),
            last_delivery_ns: self.last_delivery_ns.get(),
            ..WorkerResult::default()
        };
        for conn in conns.iter() {
            let streams = conn.streams.borrow();
            let unique: u64 = streams.iter().map(|s| s.tracker.unique()).sum();
            result.unique += unique;
            result.duplicates += streams.iter().map(|s| s.tracker.duplicates()).sum::<u64>();
            // Storm connections miss messages by design; only the others are accounted.
            if !self.job.count_deliveries || conn.storm || !conn.subscribed.get() {
                continue;
            }
            for (slot, &channel) in conn.channels.iter().enumerate() {
                let own = conn.sent.borrow().get(slot).copied().unwrap_or(0);
                let remote = usize::try_from(channel)
                    .ok()
                    .and_then(|c| expected.get(c))
                    .copied()
                    .unwrap_or(0);
                // Senders never receive their own events (the server does not echo them).
                let local = local_sent
                    .get(&channel)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(own);
                let want = remote + local;
                let got: u64 = streams
                    .iter()
                    .filter(|s| s.channel == channel)
                    .map(|s| s.tracker.unique())
                    .sum();
                let (lost, surplus) = loss(want, got);
                result.expected += want;
                result.lost += lost;
                result.surplus += surplus;
            }
        }
        let latency = self.latency.borrow();
        result.latency = [
            latency[0].encode(),
            latency[1].encode(),
            latency[2].encode(),
        ];
        result
    }

    fn storm_report(&self) -> StormReport {
        let s = &self.storm;
        StormReport {
            dropped: s.dropped.get(),
            reconnected: s.reconnected.get(),
            gave_up: s.gave_up.get(),
            failed_attempts: s.failed_attempts.get(),
            first_established_ns: s.first_established_ns.get(),
            last_ready_ns: s.last_ready_ns.get(),
            reconnect_latency: s.reconnect_latency.borrow().encode(),
        }
    }
}

async fn report_storm_done(worker: Rc<Worker>) {
    let Some(spec) = worker.job.storm.clone() else {
        emit(&Event::StormDone(StormReport::default()));
        return;
    };
    // Every reconnection either succeeds or gives up by then; the margin covers a last attempt.
    let limit = Instant::now()
        + Duration::from_millis(spec.timeout_ms + worker.job.connect_timeout_ms + 1_000);
    loop {
        let s = &worker.storm;
        if s.reconnected.get() + s.gave_up.get() >= s.to_reconnect.get() || Instant::now() >= limit
        {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    emit(&Event::StormDone(worker.storm_report()));
}

async fn connect_all(worker: Rc<Worker>) {
    let permits = std::sync::Arc::new(Semaphore::new(worker.job.max_inflight.max(1)));
    let start = Instant::now();
    let job = &worker.job;
    let steady = job.storm.as_ref().map_or(0, |s| s.steady);
    for k in 0..job.count {
        let index = job.first + k;
        let conn = Rc::new(Conn {
            index,
            channels: job.channels.channels_of(index),
            storm: job.storm.is_some() && k >= steady,
            subscribed: Cell::new(false),
            streams: RefCell::new(Vec::new()),
            sent: RefCell::new(vec![0; job.channels.channels_of(index).len()]),
        });
        worker.conns.borrow_mut().push(conn.clone());
        if job.connect_rate > 0.0 {
            sleep_until(start + Duration::from_secs_f64(k as f64 / job.connect_rate)).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        spawn_local(conn_task(worker.clone(), conn, permit));
    }
}

/// A connection that is established and subscribed to all its channels.
struct Session {
    reader: Reader,
    writer: Writer,
    established_ns: u64,
}

/// Connects, waits for `connection_established`, subscribes and waits for every
/// `subscription_succeeded`. Deliveries that arrive meanwhile are accounted.
async fn establish(worker: &Worker, conn: &Conn) -> Result<Session> {
    let job = &worker.job;
    let zero_linger = conn.storm && job.storm.as_ref().map(|s| s.close) == Some(CloseMode::Rst);
    let source = wsclient::source_for(&job.source_ips, conn.index);
    let deflate = wsclient::offers_deflate(job.deflate_share, conn.index);
    let (mut reader, mut writer) =
        wsclient::connect(&job.target, source, zero_linger, deflate).await?;
    let (socket_id, established_ns) = loop {
        match wsclient::next(&mut reader)
            .await
            .context("read handshake")?
        {
            Incoming::Text(text) => match payload::classify(&text) {
                Control::Established { socket_id } => break (socket_id, now_ns()),
                Control::Error { code, message, .. } => {
                    anyhow::bail!("refused: {} {message}", code.unwrap_or_default())
                }
                _ => {}
            },
            Incoming::Ping(p) => wsclient::send_pong(&mut writer, p).await?,
            Incoming::Close => anyhow::bail!("closed before connection_established"),
            Incoming::Ignored => {}
        }
    };
    for &channel in &conn.channels {
        let name = job.channels.name(channel);
        let message = match job.channels.kind {
            ChannelKind::Public => payload::subscribe_message(&name, None, None),
            ChannelKind::Private => {
                let auth = sign::channel_auth(
                    &job.target.key,
                    &job.target.secret,
                    &socket_id,
                    &name,
                    None,
                );
                payload::subscribe_message(&name, Some(&auth), None)
            }
            ChannelKind::Presence => {
                let data = payload::presence_channel_data(conn.index);
                let auth = sign::channel_auth(
                    &job.target.key,
                    &job.target.secret,
                    &socket_id,
                    &name,
                    Some(&data),
                );
                payload::subscribe_message(&name, Some(&auth), Some(&data))
            }
        };
        wsclient::send_text(&mut writer, message)
            .await
            .context("send subscribe")?;
    }
    let mut pending = conn.channels.len();
    while pending > 0 {
        match wsclient::next(&mut reader)
            .await
            .context("read subscribe")?
        {
            Incoming::Text(text) => {
                if let Some(stamp) = payload::find_stamp(&text) {
                    worker.record_delivery(conn, stamp, now_ns());
                    continue;
                }
                match payload::classify(&text) {
                    Control::Subscribed { .. } => pending -= 1,
                    Control::Error { code, message, .. } => {
                        anyhow::bail!(
                            "subscription refused: {} {message}",
                            code.unwrap_or_default()
                        )
                    }
                    Control::Ping => {
                        wsclient::send_text(&mut writer, payload::PONG.to_string()).await?
                    }
                    _ => {}
                }
            }
            Incoming::Ping(p) => wsclient::send_pong(&mut writer, p).await?,
            Incoming::Close => anyhow::bail!("closed while subscribing"),
            Incoming::Ignored => {}
        }
    }
    Ok(Session {
        reader,
        writer,
        established_ns,
    })
}

async fn establish_within(worker: &Worker, conn: &Conn) -> Result<Session> {
    let limit = Duration::from_millis(worker.job.connect_timeout_ms);
    match timeout(limit, establish(worker, conn)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("timed out after {} ms", worker.job.connect_timeout_ms),
    }
}

async fn conn_task(worker: Rc<Worker>, conn: Rc<Conn>, permit: OwnedSemaphorePermit) {
    let started = now_ns();
    let session = establish_within(&worker, &conn).await;
    drop(permit);
    let mut session = match session {
        Ok(session) => {
            let now = now_ns();
            worker.connected.set(worker.connected.get() + 1);
            if worker.first_ready_ns.get() == 0 {
                worker.first_ready_ns.set(now);
            }
            worker
                .last_ready_ns
                .set(worker.last_ready_ns.get().max(now));
            worker
                .connect_latency
                .borrow_mut()
                .record_between(started, now);
            worker.settled.set(worker.settled.get() + 1);
            session
        }
        Err(e) => {
            worker.note_failure(&e);
            worker.failed.set(worker.failed.get() + 1);
            worker.settled.set(worker.settled.get() + 1);
            return;
        }
    };
    loop {
        match run_session(&worker, &conn, session).await {
            SessionEnd::Closed => return,
            SessionEnd::Killed => match reconnect(&worker, &conn).await {
                Some(next) => session = next,
                None => return,
            },
        }
    }
}

/// After a storm drop: reconnect until it works or the storm timeout passes.
async fn reconnect(worker: &Rc<Worker>, conn: &Conn) -> Option<Session> {
    let storm = &worker.storm;
    storm.dropped.set(storm.dropped.get() + 1);
    let timeout_ms = worker.job.storm.as_ref().map_or(0, |s| s.timeout_ms);
    let give_up_at =
        storm.started.get().unwrap_or_else(Instant::now) + Duration::from_millis(timeout_ms);
    loop {
        let Ok(permit) = worker.reconnect_permits.acquire().await else {
            return None;
        };
        let result = establish_within(worker, conn).await;
        drop(permit);
        match result {
            Ok(session) => {
                let now = now_ns();
                let first = storm.first_established_ns.get();
                if first == 0 || session.established_ns < first {
                    storm.first_established_ns.set(session.established_ns);
                }
                storm.last_ready_ns.set(storm.last_ready_ns.get().max(now));
                storm
                    .reconnect_latency
                    .borrow_mut()
                    .record_between(storm.at_ns.get(), now);
                storm.reconnected.set(storm.reconnected.get() + 1);
                return Some(session);
            }
            Err(e) => {
                storm.failed_attempts.set(storm.failed_attempts.get() + 1);
                worker.note_failure(&e);
                if Instant::now() >= give_up_at {
                    storm.gave_up.set(storm.gave_up.get() + 1);
                    return None;
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum SessionEnd {
    /// The server (or the network) ended it.
    Closed,
    /// The storm asked for it.
    Killed,
}

/// What the read loop asks the write side to send.
enum Outgoing {
    Text(String),
    Pong(Vec<u8>),
    Close,
}

/// The write side as seen from the read loop: owned directly, or by a sender task.
enum Outbox {
    Direct(Writer),
    Queue(mpsc::Sender<Outgoing>),
}

impl Outbox {
    async fn send(&mut self, message: Outgoing) {
        match self {
            Outbox::Direct(writer) => {
                let _ = write_outgoing(writer, message).await;
            }
            Outbox::Queue(tx) => {
                let _ = tx.send(message).await;
            }
        }
    }
}

async fn write_outgoing(
    writer: &mut Writer,
    message: Outgoing,
) -> Result<(), fastwebsockets::WebSocketError> {
    match message {
        Outgoing::Text(text) => wsclient::send_text(writer, text).await,
        Outgoing::Pong(payload) => wsclient::send_pong(writer, payload).await,
        Outgoing::Close => wsclient::send_close(writer).await,
    }
}

async fn storm_signal(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

async fn run_session(worker: &Rc<Worker>, conn: &Rc<Conn>, session: Session) -> SessionEnd {
    let Session {
        mut reader, writer, ..
    } = session;
    conn.subscribed.set(true);
    let mut outbox = match worker.job.sender.clone() {
        Some(_) => {
            let (tx, rx) = mpsc::channel(16);
            spawn_local(sender_task(worker.clone(), conn.clone(), writer, rx));
            Outbox::Queue(tx)
        }
        None => Outbox::Direct(writer),
    };
    let mut storm_rx = if conn.storm {
        let mut rx = worker.storm_tx.subscribe();
        rx.borrow_and_update();
        Some(rx)
    } else {
        None
    };
    loop {
        tokio::select! {
            biased;
            _ = storm_signal(&mut storm_rx) => {
                conn.subscribed.set(false);
                let mode = worker.job.storm.as_ref().map_or(CloseMode::Fin, |s| s.close);
                if mode == CloseMode::Ws {
                    outbox.send(Outgoing::Close).await;
                }
                return SessionEnd::Killed;
            }
            incoming = wsclient::next(&mut reader) => match incoming {
                Ok(Incoming::Text(text)) => {
                    let received = now_ns();
                    if let Some(stamp) = payload::find_stamp(&text) {
                        worker.record_delivery(conn, stamp, received);
                        continue;
                    }
                    match payload::classify(&text) {
                        Control::Error { .. } => {
                            worker.server_errors.set(worker.server_errors.get() + 1);
                        }
                        Control::Ping => outbox.send(Outgoing::Text(payload::PONG.to_string())).await,
                        _ => {}
                    }
                }
                Ok(Incoming::Ping(p)) => outbox.send(Outgoing::Pong(p)).await,
                Ok(Incoming::Ignored) => {}
                Ok(Incoming::Close) | Err(_) => {
                    conn.subscribed.set(false);
                    if !worker.finishing.get() {
                        worker.disconnects.set(worker.disconnects.get() + 1);
                    }
                    return SessionEnd::Closed;
                }
            }
        }
    }
}

/// Owns the write half of a sending connection: relays the read loop's replies and, between
/// the start and stop commands, sends stamped client events at the configured rate.
async fn sender_task(
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    mut writer: Writer,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let Some(spec) = worker.job.sender.clone() else {
        return;
    };
    let mut start_rx = worker.start_tx.subscribe();
    let mut stop_rx = worker.stop_tx.subscribe();
    while !*start_rx.borrow_and_update() {
        tokio::select! {
            message = rx.recv() => match message {
                Some(m) => {
                    if write_outgoing(&mut writer, m).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            changed = start_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
    if spec.rate > 0.0 && !conn.channels.is_empty() {
        let interval = Duration::from_secs_f64(1.0 / spec.rate);
        let phase = interval.mul_f64(rand::random::<f64>());
        let begin = Instant::now();
        let end = begin + Duration::from_millis(spec.duration_ms);
        let mut k: u32 = 0;
        let publisher = sender_id(conn.index);
        loop {
            let at = begin + phase + interval * k;
            if at >= end || *stop_rx.borrow_and_update() {
                break;
            }
            tokio::select! {
                biased;
                message = rx.recv() => match message {
                    Some(m) => {
                        if write_outgoing(&mut writer, m).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = stop_rx.changed() => break,
                _ = sleep_until(at) => {
                    let slot = k as usize % conn.channels.len();
                    let channel = conn.channels[slot];
                    let seq = conn.sent.borrow().get(slot).copied().unwrap_or(0);
                    let stamp = Stamp { publisher, channel, seq, sent_ns: now_ns() };
                    let name = worker.job.channels.name(channel);
                    let text = payload::client_event_message(&spec.event, &name, stamp, spec.pad);
                    if wsclient::send_text(&mut writer, text).await.is_err() {
                        return;
                    }
                    if let Some(n) = conn.sent.borrow_mut().get_mut(slot) {
                        *n += 1;
                    }
                    k = k.saturating_add(1);
                }
            }
        }
    }
    while let Some(message) = rx.recv().await {
        if write_outgoing(&mut writer, message).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ipc::{Assignment, ChannelPlan, SenderSpec, TargetSpec};
    use std::net::Ipv4Addr;

    fn job(sender: bool, storm: bool) -> JobSpec {
        JobSpec {
            worker: 0,
            target: TargetSpec {
                ip: Ipv4Addr::LOCALHOST,
                port: 1,
                prefix: String::new(),
                key: "k".into(),
                secret: "s".into(),
            },
            first: 0,
            count: 3,
            channels: ChannelPlan {
                prefix: "presence-room-".into(),
                kind: ChannelKind::Presence,
                total: 2,
                assignment: Assignment::Rooms { size: 3 },
            },
            connect_rate: 0.0,
            max_inflight: 1,
            connect_timeout_ms: 1,
            source_ips: vec![],
            sender: sender.then(|| SenderSpec {
                event: "client-typing".into(),
                rate: 1.0,
                pad: 0,
                duration_ms: 1,
            }),
            count_deliveries: true,
            deflate_share: 0.0,
            storm: storm.then_some(crate::ipc::StormSpec {
                steady: 1,
                close: CloseMode::Fin,
                reconnect_inflight: 1,
                timeout_ms: 1,
            }),
            drain_ms: 1,
            deadline_ms: 1,
        }
    }

    fn conn(index: u64, storm: bool) -> Rc<Conn> {
        Rc::new(Conn {
            index,
            channels: vec![0],
            storm,
            subscribed: Cell::new(true),
            streams: RefCell::new(Vec::new()),
            sent: RefCell::new(vec![0]),
        })
    }

    fn stamp(publisher: u64, seq: u64) -> Stamp {
        Stamp {
            publisher,
            channel: 0,
            seq,
            sent_ns: 1_000_000,
        }
    }

    #[test]
    fn room_accounting_counts_roommates_typing_and_http_but_not_own_events() {
        let worker = Worker::new(job(true, false));
        let members: Vec<Rc<Conn>> = (0..3).map(|i| conn(i, false)).collect();
        worker.conns.borrow_mut().extend(members.iter().cloned());
        // Member 0 typed 4 times, member 1 twice, member 2 never; HTTP published 5.
        *members[0].sent.borrow_mut() = vec![4];
        *members[1].sent.borrow_mut() = vec![2];
        // Member 2 got everything: 4 + 2 typing, 5 HTTP.
        for seq in 0..4 {
            worker.record_delivery(&members[2], stamp(sender_id(0), seq), 2_000_000);
        }
        for seq in 0..2 {
            worker.record_delivery(&members[2], stamp(sender_id(1), seq), 2_000_000);
        }
        for seq in 0..5 {
            worker.record_delivery(&members[2], stamp(0, seq), 2_000_000);
        }
        // Member 0 should see 2 typing + 5 HTTP; it lost one HTTP message and got one twice.
        for seq in 0..2 {
            worker.record_delivery(&members[0], stamp(sender_id(1), seq), 2_000_000);
        }
        for seq in [0, 1, 2, 3, 3] {
            worker.record_delivery(&members[0], stamp(0, seq), 2_000_000);
        }
        // Member 1 should see 4 typing + 5 HTTP and saw all of it.
        for seq in 0..4 {
            worker.record_delivery(&members[1], stamp(sender_id(0), seq), 2_000_000);
        }
        for seq in 0..5 {
            worker.record_delivery(&members[1], stamp(0, seq), 2_000_000);
        }
        let result = worker.result(&[5, 0]);
        assert_eq!(result.expected, 11 + 7 + 9);
        assert_eq!(result.lost, 1);
        assert_eq!(result.duplicates, 1);
        assert_eq!(result.surplus, 0);
        assert_eq!(result.deliveries, 11 + 7 + 9 + 1 - 1);
        assert_eq!(result.sent, 6);
        let mut latency = Latency::new();
        latency.merge_encoded(&result.latency[0]);
        assert_eq!(latency.summary().count, result.unique);
    }

    #[test]
    fn storm_connections_are_not_accounted_and_misrouting_is_noticed() {
        let worker = Worker::new(job(false, true));
        let steady = conn(0, false);
        let stormy = conn(1, true);
        worker
            .conns
            .borrow_mut()
            .extend([steady.clone(), stormy.clone()]);
        for seq in 0..3 {
            worker.record_delivery(&steady, stamp(0, seq), 2_000_000);
        }
        worker.record_delivery(&stormy, stamp(0, 2), 2_000_000);
        let wrong = Stamp {
            channel: 1,
            ..stamp(0, 0)
        };
        worker.record_delivery(&steady, wrong, 2_000_000);
        let result = worker.result(&[4, 0]);
        assert_eq!(result.expected, 4);
        assert_eq!(result.lost, 1);
        assert_eq!(result.misrouted, 1);
        assert_eq!(result.deliveries, 5);
    }

    #[test]
    fn phases_split_latency() {
        let worker = Worker::new(job(false, false));
        let c = conn(0, false);
        worker.conns.borrow_mut().push(c.clone());
        worker.record_delivery(&c, stamp(0, 0), 2_000_000);
        worker.phase.set(1);
        worker.record_delivery(&c, stamp(0, 1), 3_000_000);
        worker.record_delivery(&c, stamp(0, 1), 3_000_000);
        worker.phase.set(2);
        worker.record_delivery(&c, stamp(0, 2), 4_000_000);
        let result = worker.result(&[3, 0]);
        let counts: Vec<u64> = result
            .latency
            .iter()
            .map(|b| b.iter().map(|(_, n)| n).sum())
            .collect();
        assert_eq!(counts, vec![1, 1, 1]);
        assert_eq!(result.duplicates, 1);
        assert_eq!(result.lost, 0);
    }
}
