//! `ConnHandle`: what the rest of the server holds of a connection. It can only enqueue frames
//! (never write to the socket: the connection's own tasks do that) and ask the connection to
//! close.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ErrorKind, SocketId, UserId};

/// A frame waiting in a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A complete JSON message, sent as one text frame.
    Text(Bytes),
    /// The answer to a WebSocket Ping.
    Pong(Bytes),
}

/// Shared by the registries, the users index and the connection's tasks.
pub type ConnRef = Arc<ConnHandle>;

/// The outbound queue. A `VecDeque` behind a lock rather than a channel: an idle connection's
/// queue holds no allocation at all (the writer takes the whole deque each time it wakes).
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
}

pub struct ConnHandle {
    pub socket_id: SocketId,
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the writer: a waker slot and a flag instead of a `Notify` (no lock on the
    /// delivery path; at most one wake per batch).
    writer: AtomicWaker,
    pending: AtomicBool,
    close_reason: Mutex<Option<ErrorKind>>,
    /// Set with `cancel`; read on the hot path without the token's lock.
    closing: AtomicBool,
    /// The client already closed its side (EOF): no close frame is sent back.
    peer_gone: AtomicBool,
    cancel: CancellationToken,
    /// The signed-in user (spec 3.5), for `terminate_connections` and `#server-to-user-`.
    signed_in: Mutex<Option<UserId>>,
    /// Users this connection is present as (for Reverb-style termination by presence id).
    presence_users: Mutex<Vec<UserId>>,
}

/// What happened to a frame handed to `deliver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full: the connection is being closed as a slow consumer.
    Overflow,
    /// The connection is already gone.
    Closed,
}

impl ConnHandle {
    pub fn new(socket_id: SocketId, queue_size: usize) -> ConnRef {
        Arc::new(ConnHandle {
            socket_id,
            queue: Mutex::new(Queue::default()),
            capacity: queue_size.max(1),
            writer: AtomicWaker::new(),
            pending: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            peer_gone: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            signed_in: Mutex::new(None),
            presence_users: Mutex::new(Vec::new()),
        })
    }

    /// Enqueues a shared frame without waiting. Overflow policy: a full queue means the client
    /// stopped reading; it is disconnected (4100, back off and reconnect) so it cannot slow
    /// anyone else down.
    pub fn deliver(&self, frame: &Bytes) -> Delivery {
        self.enqueue(Outbound::Text(frame.clone()))
    }

    pub fn enqueue(&self, out: Outbound) -> Delivery {
        {
            let mut q = self.queue.lock();
            if q.closed {
                return Delivery::Closed;
            }
            if q.items.len() >= self.capacity {
                drop(q);
                self.close(ErrorKind::SlowConsumer);
                return Delivery::Overflow;
            }
            q.items.push_back(out);
        }
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.writer.wake();
        }
        Delivery::Queued
    }

    /// Takes everything queued (for the writer); empty when nothing is.
    pub fn take_queued(&self) -> VecDeque<Outbound> {
        // Cleared before taking: a frame queued after the take sets it again and wakes.
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut self.queue.lock().items)
    }

    /// Completes when something was queued since the last `take_queued`, or the connection
    /// is closing. For the writer task only (one waker slot).
    pub(super) async fn queued(&self) {
        self.writer_wait(true).await;
    }

    /// Completes when the connection is closing. For the writer task only: it shares the
    /// waker slot with `queued`, and neither takes a lock (the cancellation token would).
    pub(super) async fn closing(&self) {
        self.writer_wait(false).await;
    }

    async fn writer_wait(&self, or_queued: bool) {
        std::future::poll_fn(|cx| {
            self.writer.register(cx.waker());
            let queued = or_queued && self.pending.load(Ordering::Acquire);
            if queued || self.closing.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }

    /// Refuses further frames (the writer is gone).
    pub(super) fn close_queue(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.items.clear();
    }

    /// Frames waiting to be written.
    pub fn queued_len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Asks the connection to close with `kind` (the first reason wins).
    pub fn close(&self, kind: ErrorKind) {
        {
            let mut reason = self.close_reason.lock();
            if reason.is_none() {
                *reason = Some(kind);
            }
        }
        self.stop();
    }

    /// Stops both tasks of the connection (without setting a reason).
    pub fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        self.writer.wake();
        self.cancel.cancel();
    }

    /// The client closed the TCP connection: nothing more can be written to it.
    pub(super) fn mark_peer_gone(&self) {
        self.peer_gone.store(true, Ordering::Release);
    }

    pub(super) fn is_peer_gone(&self) -> bool {
        self.peer_gone.load(Ordering::Acquire)
    }

    /// Whether the connection is closing (cheap; for loops between awaits).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<ErrorKind> {
        self.close_reason.lock().clone()
    }

    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn signed_in_user(&self) -> Option<UserId> {
        self.signed_in.lock().clone()
    }

    pub fn set_signed_in_user(&self, user: UserId) {
        *self.signed_in.lock() = Some(user);
    }

    /// This connection is no longer present as `user` on any presence channel.
    pub fn remove_presence_user(&self, user: &UserId) {
        self.presence_users.lock().retain(|u| u != user);
    }

    pub fn add_presence_user(&self, user: &UserId) {
        let mut users = self.presence_users.lock();
        if !users.contains(user) {
            users.push(user.clone());
        }
    }

    pub fn is_present_as(&self, user: &str) -> bool {
        self.presence_users
            .lock()
            .iter()
            .any(|u| u.as_str() == user)
    }
}
