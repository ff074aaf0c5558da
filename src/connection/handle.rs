//! `ConnHandle`: what the rest of the server holds of a connection. It can only enqueue frames
//! (never write to the socket: the connection's own tasks do that) and ask the connection to
//! close.
//!
//! Also owned here: the bounds of the outbound queue. A queue is bounded in frames and in bytes
//! (counted from enqueue until the writer has written them, so frames in the writer's hands
//! count too), and the node bounds the bytes all queues hold beyond a free allowance each
//! ([`OutboundBudget`]). The allowance keeps ordinary traffic off the shared counter: the
//! delivery path touches it only for a connection already behind by [`FREE_QUEUE_BYTES`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Wake;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};
use tokio_util::sync::CancellationToken;

use super::deflate::SharedFrame;
use crate::protocol::{ErrorKind, SocketId, UserId};

/// A frame waiting in a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A complete JSON message, sent as one text frame.
    Text(Bytes),
    /// A JSON message compressed with `permessage-deflate`, sent as one text frame with RSV1.
    Deflated(Bytes),
    /// The answer to a WebSocket Ping.
    Pong(Bytes),
}

impl Outbound {
    /// Payload bytes, as the queue's byte bound counts them.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Text(b) | Outbound::Deflated(b) | Outbound::Pong(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shared by the registries, the users index and the connection's tasks.
pub type ConnRef = Arc<ConnHandle>;

/// Bytes each connection may have queued without drawing on the node's [`OutboundBudget`]: a
/// burst of ordinary events at any fan-out stays within it.
pub const FREE_QUEUE_BYTES: usize = 64 * 1024;
/// The unit in which a connection reserves from the node's budget beyond its allowance, so a
/// long queue touches the shared counter once per 64 KiB, not once per frame.
const RESERVE_CHUNK: usize = 64 * 1024;

/// The node's budget of outbound bytes queued beyond each connection's [`FREE_QUEUE_BYTES`]
/// (`server.outbound_node_bytes`). Frames shared by several queues count once per queue: what
/// is bounded is what a slow reader pins.
pub struct OutboundBudget {
    reserved: AtomicUsize,
    limit: usize,
    gauge: IntGauge,
    refused: IntCounter,
}

impl OutboundBudget {
    /// A budget of `limit` bytes; `gauge` follows what is reserved, `refused` counts
    /// connections closed for want of it.
    pub fn new(limit: usize, gauge: IntGauge, refused: IntCounter) -> Arc<OutboundBudget> {
        Arc::new(OutboundBudget {
            reserved: AtomicUsize::new(0),
            limit,
            gauge,
            refused,
        })
    }

    /// Bytes reserved now by every connection of the node.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        let before = self.reserved.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.limit {
            self.reserved.fetch_sub(n, Ordering::AcqRel);
            self.refused.inc();
            return false;
        }
        self.gauge.add(i64::try_from(n).unwrap_or(i64::MAX));
        true
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.reserved.fetch_sub(n, Ordering::AcqRel);
            self.gauge.sub(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// How much one connection's outbound queue may hold.
#[derive(Clone)]
pub struct QueueBounds {
    /// Frames queued (`server.outbound_queue_size`).
    pub frames: usize,
    /// Bytes queued or being written (`server.outbound_queue_bytes`). A single frame larger
    /// than this is still accepted into an empty queue.
    pub bytes: usize,
    /// The node's budget beyond the allowance; none: unbounded.
    pub node: Option<Arc<OutboundBudget>>,
}

/// The outbound queue. A `VecDeque` behind a lock rather than a channel: an idle connection's
/// queue holds no allocation at all (the writer takes the whole deque each time it wakes).
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
    /// Bytes enqueued and not yet written (queued, or taken by the writer).
    bytes: usize,
    /// Bytes reserved from the node's budget, a multiple of `RESERVE_CHUNK`.
    reserved: usize,
}

impl Queue {
    /// Gives back the reserved chunks that `bytes` no longer needs.
    fn release_unneeded(&mut self, node: Option<&OutboundBudget>) {
        let needed = self
            .bytes
            .saturating_sub(FREE_QUEUE_BYTES)
            .div_ceil(RESERVE_CHUNK)
            * RESERVE_CHUNK;
        if self.reserved > needed {
            if let Some(node) = node {
                node.give_back(self.reserved - needed);
            }
            self.reserved = needed;
        }
    }
}

pub struct ConnHandle {
    pub socket_id: SocketId,
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
    node_budget: Option<Arc<OutboundBudget>>,
    /// Wakes the writer: a waker slot and a flag instead of a `Notify` (no lock on the
    /// delivery path; at most one wake per batch).
    writer: AtomicWaker,
    pending: AtomicBool,
    close_reason: Mutex<Option<ErrorKind>>,
    /// Set by `stop`; read on the hot path without a lock.
    closing: AtomicBool,
    /// The socket became readable, or the timer fired, since the WebSocket task last polled
    /// them (see the `Wake` impl): a wake-up for a delivery does not poll the input side.
    read_woken: AtomicBool,
    /// The client already closed its side (EOF): no close frame is sent back.
    peer_gone: AtomicBool,
    /// The connection negotiated `permessage-deflate`: shared frames go out compressed.
    deflate: AtomicBool,
    /// Made on first use, by an HTTP fallback's session task (a WebSocket's one task is woken
    /// through `writer`): an idle WebSocket holds no token.
    cancel: OnceLock<CancellationToken>,
    /// The signed-in user (protocol.md 3.5), for `terminate_connections` and `#server-to-user-`.
    signed_in: Mutex<Option<UserId>>,
    /// Users this connection is present as (for Reverb-style termination by presence id).
    presence_users: Mutex<Vec<UserId>>,
}

/// What happened to a frame handed to `deliver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full (in frames or bytes), or the node's outbound budget was spent: the
    /// connection is being closed as a slow consumer.
    Overflow,
    /// The connection is already gone.
    Closed,
}

impl ConnHandle {
    /// A handle whose queue is bounded in frames only (for tests of other modules).
    pub fn new(socket_id: SocketId, queue_size: usize) -> ConnRef {
        ConnHandle::bounded(
            socket_id,
            QueueBounds {
                frames: queue_size,
                bytes: usize::MAX,
                node: None,
            },
        )
    }

    /// A handle whose queue holds at most what `bounds` allow.
    pub fn bounded(socket_id: SocketId, bounds: QueueBounds) -> ConnRef {
        Arc::new(ConnHandle {
            socket_id,
            queue: Mutex::new(Queue::default()),
            capacity: bounds.frames.max(1),
            max_bytes: bounds.bytes.max(1),
            node_budget: bounds.node,
            writer: AtomicWaker::new(),
            pending: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            read_woken: AtomicBool::new(true),
            peer_gone: AtomicBool::new(false),
            deflate: AtomicBool::new(false),
            cancel: OnceLock::new(),
            signed_in: Mutex::new(None),
            presence_users: Mutex::new(Vec::new()),
        })
    }

    /// Enqueues a shared frame without waiting. Overflow policy: a full queue (in frames or
    /// bytes) means the client stopped reading; it is disconnected (4100, back off and
    /// reconnect) so it cannot slow anyone else down or pin the node's memory. The same when
    /// the node's outbound budget is spent and this connection, already behind by its
    /// allowance, needs more.
    pub fn deliver(&self, frame: &Bytes) -> Delivery {
        self.enqueue(Outbound::Text(frame.clone()))
    }

    /// Marks the connection as having negotiated `permessage-deflate`, before it is shared:
    /// [`ConnHandle::deliver_shared`] then enqueues the compressed form of large frames.
    pub fn accept_deflate(&self) {
        self.deflate.store(true, Ordering::Release);
    }

    /// Enqueues a broadcast frame as [`ConnHandle::deliver`] does: compressed (made once for
    /// every subscriber, on the first that asks) for a connection that negotiated
    /// `permessage-deflate` when the frame is large enough, as it is otherwise.
    pub fn deliver_shared(&self, frame: &SharedFrame<'_>) -> Delivery {
        if self.deflate.load(Ordering::Relaxed) {
            if let Some(z) = frame.deflated() {
                return self.enqueue(Outbound::Deflated(z.clone()));
            }
        }
        self.deliver(frame.plain())
    }

    pub fn enqueue(&self, out: Outbound) -> Delivery {
        {
            let mut q = self.queue.lock();
            if q.closed {
                return Delivery::Closed;
            }
            let bytes = q.bytes.saturating_add(out.len());
            let fits = q.items.len() < self.capacity && (bytes <= self.max_bytes || q.bytes == 0);
            if !fits || !self.reserve(&mut q, bytes) {
                drop(q);
                self.close(ErrorKind::SlowConsumer);
                return Delivery::Overflow;
            }
            q.bytes = bytes;
            q.items.push_back(out);
        }
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.writer.wake();
        }
        Delivery::Queued
    }

    /// Reserves from the node's budget what a queue of `bytes` needs beyond the allowance.
    fn reserve(&self, q: &mut Queue, bytes: usize) -> bool {
        let Some(node) = &self.node_budget else {
            return true;
        };
        let over = bytes.saturating_sub(FREE_QUEUE_BYTES);
        if over <= q.reserved {
            return true;
        }
        let more = (over - q.reserved).div_ceil(RESERVE_CHUNK) * RESERVE_CHUNK;
        if !node.take(more) {
            return false;
        }
        q.reserved += more;
        true
    }

    /// The writer wrote `n` payload bytes of what it took: they no longer count against the
    /// bounds.
    pub(crate) fn written(&self, n: usize) {
        let mut q = self.queue.lock();
        q.bytes = q.bytes.saturating_sub(n);
        q.release_unneeded(self.node_budget.as_deref());
    }

    /// Takes everything queued (for the writer); empty when nothing is.
    pub fn take_queued(&self) -> VecDeque<Outbound> {
        // Cleared before taking: a frame queued after the take sets it again and wakes.
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut self.queue.lock().items)
    }

    /// Completes when something was queued since the last `take_queued`, or the connection
    /// is closing. For the writer task only (one waker slot): the WebSocket writer, or the one
    /// HTTP fallback request draining the queue at a time.
    pub(crate) async fn queued(&self) {
        self.writer_wait(true).await;
    }

    /// Completes when the connection is closing. For the writer task only: it shares the
    /// waker slot with `queued`, and neither takes a lock (the cancellation token would).
    pub(crate) async fn closing(&self) {
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

    /// Refuses further frames (the writer is gone) and gives back what the queue reserved.
    pub(crate) fn close_queue(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
        q.release_unneeded(self.node_budget.as_deref());
    }

    /// Frames waiting to be written.
    pub fn queued_len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Payload bytes queued or being written.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
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

    /// Stops the connection's tasks (without setting a reason).
    pub fn stop(&self) {
        // SeqCst with `cancelled`: a token made concurrently is cancelled by one side or the other.
        self.closing.store(true, Ordering::SeqCst);
        self.writer.wake();
        if let Some(token) = self.cancel.get() {
            token.cancel();
        }
    }

    /// The client closed the TCP connection: nothing more can be written to it.
    pub(crate) fn mark_peer_gone(&self) {
        self.peer_gone.store(true, Ordering::Release);
    }

    pub(crate) fn is_peer_gone(&self) -> bool {
        self.peer_gone.load(Ordering::Acquire)
    }

    /// Whether the connection is closing (cheap; for loops between awaits).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<ErrorKind> {
        self.close_reason.lock().clone()
    }

    /// A token cancelled when the connection closes, for a task other than the one woken
    /// through the writer slot (an HTTP fallback's session task).
    pub fn cancelled(&self) -> &CancellationToken {
        let token = self.cancel.get_or_init(CancellationToken::new);
        if self.closing.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    /// Whether the socket may have become readable since the last call (cleared by it), with
    /// `task` registered first in the waker slot the read's wake-ups go through: a wake-up
    /// after the check finds the task there, one before it is seen by the check. Set when the
    /// handle is made, so a new read is always polled once.
    pub(crate) fn take_read_woken(&self, task: &std::task::Waker) -> bool {
        self.writer.register(task);
        self.read_woken.swap(false, Ordering::AcqRel)
    }

    /// A new read or timer starts: poll the input side at least once (bytes may wait that no
    /// wake-up announces).
    pub(crate) fn arm_read(&self) {
        self.read_woken.store(true, Ordering::Release);
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

/// The waker a WebSocket's reads register with the socket, and its timer with the clock: it
/// marks the input side as woken, then wakes the connection's task through the writer slot
/// (where that task keeps its waker). A wake-up for a delivery then polls only the output side.
impl Wake for ConnHandle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.read_woken.store(true, Ordering::Release);
        self.writer.wake();
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        // A handle dropped without its writer having closed the queue (tests, a failed spawn).
        let q = self.queue.get_mut();
        q.bytes = 0;
        q.release_unneeded(self.node_budget.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    fn node(limit: usize) -> Arc<OutboundBudget> {
        let gauge = IntGauge::new("reserved", "reserved").unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        OutboundBudget::new(limit, gauge, refused)
    }

    fn conn(id: u32, bytes: usize, node: Option<Arc<OutboundBudget>>) -> ConnRef {
        ConnHandle::bounded(
            SocketId::from_parts(id, id),
            QueueBounds {
                frames: 1000,
                bytes,
                node,
            },
        )
    }

    #[test]
    fn a_queue_over_its_byte_bound_closes_the_connection_as_a_slow_consumer() {
        let c = conn(1, 1000, None);
        assert_eq!(c.deliver(&frame(400)), Delivery::Queued);
        assert_eq!(c.deliver(&frame(400)), Delivery::Queued);
        assert_eq!(c.deliver(&frame(400)), Delivery::Overflow);
        assert_eq!(c.close_reason(), Some(ErrorKind::SlowConsumer));
        assert_eq!(
            c.deliver(&frame(1)),
            Delivery::Queued,
            "closing is the writer's job"
        );
    }

    #[test]
    fn taken_frames_count_until_written() {
        let c = conn(1, 1000, None);
        c.deliver(&frame(600));
        assert_eq!(c.take_queued().len(), 1);
        assert_eq!(c.queued_bytes(), 600, "in the writer's hands");
        assert_eq!(c.deliver(&frame(600)), Delivery::Overflow);

        let c = conn(2, 1000, None);
        c.deliver(&frame(600));
        let _ = c.take_queued();
        c.written(600);
        assert_eq!(c.queued_bytes(), 0);
        assert_eq!(c.deliver(&frame(600)), Delivery::Queued);
        assert_eq!(c.close_reason(), None);
    }

    #[test]
    fn one_frame_larger_than_the_bound_passes_an_empty_queue() {
        let c = conn(1, 1000, None);
        assert_eq!(c.deliver(&frame(5000)), Delivery::Queued);
        assert_eq!(c.deliver(&frame(1)), Delivery::Overflow);
    }

    #[test]
    fn the_node_budget_is_drawn_on_only_beyond_the_allowance_and_given_back() {
        let node = node(RESERVE_CHUNK);
        let a = conn(1, usize::MAX, Some(node.clone()));
        let b = conn(2, usize::MAX, Some(node.clone()));
        // Within the allowance: the shared counter is not touched.
        a.deliver(&frame(FREE_QUEUE_BYTES));
        b.deliver(&frame(FREE_QUEUE_BYTES));
        assert_eq!(node.reserved(), 0);
        // One byte beyond it reserves a whole chunk: the budget's only one.
        assert_eq!(a.deliver(&frame(1)), Delivery::Queued);
        assert_eq!(node.reserved(), RESERVE_CHUNK);
        assert_eq!(b.deliver(&frame(1)), Delivery::Overflow);
        assert_eq!(b.close_reason(), Some(ErrorKind::SlowConsumer));
        assert_eq!(node.refused.get(), 1);
        // Written, the chunk goes back and another connection can have it.
        let _ = a.take_queued();
        a.written(FREE_QUEUE_BYTES + 1);
        assert_eq!(node.reserved(), 0);
        let c = conn(3, usize::MAX, Some(node.clone()));
        c.deliver(&frame(FREE_QUEUE_BYTES + 1));
        assert_eq!(node.reserved(), RESERVE_CHUNK);
        // A closed queue, or a dropped handle, gives back what it held.
        c.close_queue();
        assert_eq!(node.reserved(), 0);
        let d = conn(4, usize::MAX, Some(node.clone()));
        d.deliver(&frame(FREE_QUEUE_BYTES + 1));
        drop(d);
        assert_eq!(node.reserved(), 0);
        assert_eq!(node.gauge.get(), 0);
    }
}
