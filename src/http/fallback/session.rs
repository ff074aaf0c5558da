//! One HTTP session (protocol.md 1.9): what its requests share, and the session task.
//!
//! The session task owns the connection's `Established` (the same `Session` a WebSocket has)
//! and hands it the messages `xhr_send` requests bring, in arrival order. The receiving
//! request (a stream, or one poll) is the session's writer: it drains the same bounded
//! `ConnHandle` queue into frames. At most one receiving request is current; a newer one
//! replaces it. The session ends like a socket does when the client closes it: when no
//! receiving request has been open for `disconnect_delay`; or when the server closes it, and
//! then the close sequence waits (for at most the same delay) for a request to carry it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::frames;
use crate::app::App;
use crate::connection::handle::ConnRef;
use crate::connection::{ConnectionSlot, Established};
use crate::protocol::ErrorKind;
use crate::state::ServerState;

/// Bodies of `xhr_send` waiting for the session task: at most this many, and at most
/// [`INBOUND_BODIES_BYTES`] times `max_send_bytes` in bytes.
pub(super) const INBOUND_BODIES: usize = 8;
/// What the waiting bodies may hold together, in units of `server.fallback.max_send_bytes`.
pub(super) const INBOUND_BODIES_BYTES: usize = 2;

/// Which receiving requests the session answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Streaming,
    Polling,
    /// Server-Sent Events (protocol.md 1.10): one stream for the session's life.
    EventStream,
}

struct Attach {
    /// Bumped by every receiving request; only the latest one drains the queue.
    generation: u64,
    /// The current receiving request is still open.
    open: bool,
    /// When the last receiving request ended.
    since: Instant,
}

/// What a session's requests and its task share.
pub(super) struct Shared {
    pub key: String,
    pub app: Arc<App>,
    pub kind: Kind,
    pub conn: ConnRef,
    pub inbound: mpsc::Sender<Vec<String>>,
    /// Bytes of the messages in `inbound` (counted by `forward` before sending).
    pub inbound_bytes: AtomicUsize,
    attach: Mutex<Attach>,
    /// Wakes the session task when a receiving request ends or carried the close.
    detached: Notify,
    /// Wakes a receiving request that a newer one replaced.
    superseded: Notify,
    close_sent: AtomicBool,
    /// An event stream's positions, written as each history event's `id:` (only its one
    /// receiving request touches them, never across an await).
    pub positions: Mutex<frames::StreamPositions>,
}

impl Shared {
    pub fn new(
        key: String,
        app: Arc<App>,
        kind: Kind,
        conn: ConnRef,
        inbound: mpsc::Sender<Vec<String>>,
    ) -> Shared {
        Shared {
            key,
            app,
            kind,
            conn,
            inbound,
            inbound_bytes: AtomicUsize::new(0),
            attach: Mutex::new(Attach {
                generation: 0,
                open: false,
                since: Instant::now(),
            }),
            detached: Notify::new(),
            superseded: Notify::new(),
            close_sent: AtomicBool::new(false),
            positions: Mutex::new(frames::StreamPositions::default()),
        }
    }

    /// Makes a new receiving request the current one (the previous one ends).
    pub fn attach(self: &Arc<Self>) -> Receiver {
        let generation = {
            let mut a = self.attach.lock();
            a.generation += 1;
            a.open = true;
            a.generation
        };
        self.superseded.notify_waiters();
        Receiver {
            shared: self.clone(),
            generation,
        }
    }

    /// When the session expires for want of a receiving request; none while one is open.
    fn idle_deadline(&self, delay: Duration) -> Option<Instant> {
        let a = self.attach.lock();
        (!a.open).then(|| a.since + delay)
    }
}

/// The current receiving request of a session, while it lives.
pub(super) struct Receiver {
    pub shared: Arc<Shared>,
    generation: u64,
}

impl Receiver {
    fn is_current(&self) -> bool {
        self.shared.attach.lock().generation == self.generation
    }

    /// Completes when a newer receiving request replaced this one.
    async fn superseded(&self) {
        loop {
            let notified = self.shared.superseded.notified();
            if !self.is_current() {
                return;
            }
            notified.await;
        }
    }

    /// The next frames for the client: whatever is queued (`a[...]`), the close sequence
    /// when the connection is closing, or a heartbeat after `heartbeat` of nothing. `None`
    /// when a newer request replaced this one. Returns the payload bytes it took from the
    /// queue, to report as written once the frames left.
    pub async fn next(&self, heartbeat: Duration) -> Option<(Vec<u8>, usize)> {
        let conn = &self.shared.conn;
        let deadline = Instant::now() + heartbeat;
        let mut buf = Vec::new();
        loop {
            let sse = self.shared.kind == Kind::EventStream;
            if conn.is_closing() {
                // Queued messages are dropped, as a WebSocket's writer drops them.
                if sse {
                    frames::push_sse_close(&mut buf, conn.close_reason().as_ref());
                } else {
                    frames::push_close(&mut buf, conn.close_reason().as_ref());
                }
                self.shared.close_sent.store(true, Ordering::Release);
                self.shared.detached.notify_one();
                return Some((buf, 0));
            }
            if !self.is_current() {
                return None;
            }
            let items = conn.take_queued();
            if !items.is_empty() {
                let taken = if sse {
                    frames::push_sse_messages(&mut buf, items, &mut self.shared.positions.lock())
                } else {
                    frames::push_messages(&mut buf, items)
                };
                if !buf.is_empty() {
                    return Some((buf, taken));
                }
                conn.written(taken);
                continue;
            }
            tokio::select! {
                () = conn.queued() => {}
                () = self.superseded() => return None,
                () = sleep_until(deadline) => {
                    buf.extend_from_slice(if sse { frames::SSE_HEARTBEAT } else { frames::HEARTBEAT });
                    return Some((buf, 0));
                }
            }
        }
    }

    /// The close sequence was sent: nothing more follows.
    pub fn is_closed(&self) -> bool {
        self.shared.close_sent.load(Ordering::Acquire)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        {
            let mut a = self.shared.attach.lock();
            if a.generation != self.generation {
                return;
            }
            a.open = false;
            a.since = Instant::now();
        }
        self.shared.detached.notify_one();
    }
}

/// The session task: hands `xhr_send` messages to the session, watches for the client's
/// departure and, once the connection ended, gives the close sequence time to be collected.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut est: Established,
    slot: ConnectionSlot,
    mut inbound: mpsc::Receiver<Vec<String>>,
    state: Arc<ServerState>,
) {
    let conn = shared.conn.clone();
    // An event stream cannot be reopened (EventSource's retry opens a new session): its end
    // is the client's departure.
    let delay = match shared.kind {
        Kind::EventStream => Duration::ZERO,
        Kind::Streaming | Kind::Polling => {
            Duration::from_secs(state.server.fallback.disconnect_delay)
        }
    };
    let settings = &shared.app.settings;
    let max = settings.max_message_size;
    let mut auth_deadline = settings
        .require_authorization
        .then(|| Instant::now() + settings.authorization_timeout);
    let cancelled = conn.cancelled().cancelled();
    tokio::pin!(cancelled);
    let hub = slot.hub().clone();
    loop {
        let idle = shared.idle_deadline(delay);
        tokio::select! {
            batch = inbound.recv() => {
                // The sender lives in `shared`: the channel never closes while we run.
                let Some(batch) = batch else { break };
                let held: usize = batch.iter().map(String::len).sum();
                shared.inbound_bytes.fetch_sub(held, Ordering::AcqRel);
                for msg in batch {
                    if conn.is_closing() {
                        break;
                    }
                    hub.metrics.socket_received_bytes.inc_by(msg.len() as u64);
                    hub.metrics.ws_messages_received.inc();
                    if msg.len() > max {
                        conn.close(ErrorKind::MessageTooBig);
                        break;
                    }
                    est.handle(msg.as_bytes()).await;
                }
                if conn.is_closing() {
                    break;
                }
            }
            () = &mut cancelled => break,
            () = shared.detached.notified() => {}
            () = sleep_until(idle.unwrap_or_else(far_future)), if idle.is_some() => {
                if shared.idle_deadline(delay).is_some_and(|d| d <= Instant::now()) {
                    debug!("no receiving request: the client is gone");
                    conn.mark_peer_gone();
                    break;
                }
            }
            () = sleep_until(auth_deadline.unwrap_or_else(far_future)), if auth_deadline.is_some() => {
                if est.is_authorized() {
                    auth_deadline = None;
                } else {
                    conn.close(ErrorKind::AuthorizationTimeout);
                }
            }
        }
    }
    let reason = est.finish(&state).await;
    slot.release().await;
    // The close sequence waits for the client's next receiving request (a poll), briefly.
    if !conn.is_peer_gone() {
        let end = Instant::now() + delay;
        while !shared.close_sent.load(Ordering::Acquire) && Instant::now() < end {
            tokio::select! {
                () = shared.detached.notified() => {}
                () = sleep_until(end) => {}
            }
        }
    }
    conn.close_queue();
    state.fallback.remove(&shared);
    debug!(
        code = reason.as_ref().map_or(1000, ErrorKind::code),
        "disconnected"
    );
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
