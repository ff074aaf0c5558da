//! The per-socket task. One task per WebSocket owns the socket and the session state (its
//! subscriptions, its signed-in user): it reads frames and, beside them, drains the bounded
//! outbound queue into the socket (`writer.rs`). A wake-up for a delivery polls only the output
//! side; the input side (the read and the liveness timer) is polled when the socket or the
//! timer woke it (`ConnHandle`'s `Wake`).
//!
//! Lifecycle: handshake result → `connection_established` (or `pusher:error` + close) → read
//! loop with the liveness timer → on any end, the session leaves every channel and the writer
//! sends the close frame.
//!
//! The seam for other transports is [`Established`]: registration, `connection_established`,
//! the `Session` and the departure are the same for every transport; a transport only moves
//! bytes (complete messages in, the `ConnHandle`'s queue out).

pub mod deflate;
pub(crate) mod frames;
pub mod handle;
mod session;
mod slot;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, Instrument};

use crate::app::App;
use crate::config::ServerConfig;
use crate::hub::AppHub;
use crate::metrics::Metrics;
use crate::protocol::{message, ErrorKind, SocketId};
use crate::state::ServerState;
use crate::tap::Entry;
use frames::{Frame, FrameError, OpCode, PartialBudget, PartialHold};
use handle::{ConnHandle, ConnRef, Outbound, OutboundBudget, QueueBounds};
use session::Session;
pub use slot::{ConnectionSlot, MemoryWatch, PerIp};

pub(crate) type Io = TokioIo<Upgraded>;

/// What the handshake checks decided before the socket was upgraded (protocol.md 1.2).
pub enum Admission {
    /// Checks passed; the node and app connection slots are reserved.
    Accepted { app: Arc<App>, slot: ConnectionSlot },
    /// Send `pusher:error` with this kind and close with its code.
    Refused(ErrorKind),
}

/// The node-wide budgets every connection of the node draws on, and the admission limits
/// checked before a WebSocket is accepted.
pub struct Budgets {
    partial: Arc<PartialBudget>,
    queue: QueueBounds,
    /// Open WebSockets per client address.
    pub per_ip: PerIp,
    /// The process's memory, against which new WebSockets are admitted.
    pub memory: MemoryWatch,
}

impl Budgets {
    /// The budgets `server` configures, reported through `metrics`.
    pub fn new(server: &ServerConfig, metrics: &Metrics) -> Budgets {
        Budgets {
            partial: PartialBudget::new(
                server.partial_message_node_bytes,
                metrics.partial_message_bytes.clone(),
                metrics.partial_budget_disconnects.clone(),
            ),
            queue: QueueBounds {
                frames: server.outbound_queue_size,
                bytes: server.outbound_queue_bytes,
                node: Some(OutboundBudget::new(
                    server.outbound_node_bytes,
                    metrics.outbound_reserved_bytes.clone(),
                    metrics.outbound_budget_disconnects.clone(),
                )),
            },
            per_ip: PerIp::new(server.max_connections_per_ip),
            memory: MemoryWatch::new(server.max_memory_bytes),
        }
    }

    /// The bounds of one connection's outbound queue, with the node's budget.
    pub fn queue_bounds(&self) -> QueueBounds {
        self.queue.clone()
    }

    /// Bytes of `server.outbound_node_bytes` reserved now by connections with long queues.
    pub fn outbound_reserved_bytes(&self) -> usize {
        self.queue.node.as_ref().map_or(0, |n| n.reserved())
    }

    /// Bytes held now in partially received messages, by every connection of the node.
    pub fn partial_message_bytes(&self) -> usize {
        self.partial.held()
    }

    /// The part of those charged to `server.partial_message_node_bytes` (what each connection
    /// holds beyond its allowance).
    pub fn partial_message_charged(&self) -> usize {
        self.partial.charged()
    }
}

/// Runs one WebSocket connection to completion, from the end of the HTTP handshake: waits
/// for the upgrade, then refuses or serves the socket. `deflate`: the handshake negotiated
/// `permessage-deflate` (see `deflate::negotiate`). The socket's whole task is this one
/// future, with as few layers as possible: each layer's arguments stay in the task's memory
/// for the connection's life.
// Not an `async fn` (see below), on purpose.
#[allow(clippy::manual_async_fn)]
pub fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    admission: Admission,
    deflate: bool,
    state: Arc<ServerState>,
) -> impl Future<Output = ()> + Send {
    // Not an `async fn`, nor is `serve`: an `async fn` keeps its arguments twice (as passed and
    // as its body's bindings) for as long as it runs.
    async move {
        // The upgrade's result is not kept across an await (the task would carry its 144
        // bytes for the connection's life): only the socket leaves this statement.
        let io = match upgrade.await {
            Ok(ws) => Some(ws.into_inner()),
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                None
            }
        };
        let Some(io) = io else {
            if let Admission::Accepted { slot, .. } = admission {
                slot.release().await;
            }
            return;
        };
        match admission {
            Admission::Refused(kind) => writer::refuse(io, &kind).await,
            Admission::Accepted { app, slot } => {
                let socket_id = SocketId::random();
                let io = IoSide::shared(io);
                // A debug-level span, made only when debug logging is on (a live span with its
                // formatted fields costs ~390 bytes per connection), and then around a boxed
                // task: without it, the task carries no span at all.
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let span = tracing::debug_span!("connection", app_id = %app.id, socket_id = %socket_id);
                    Box::pin(serve(io, socket_id, deflate, app, slot, state).instrument(span))
                        .await;
                } else {
                    serve(io, socket_id, deflate, app, slot, state).await;
                }
            }
        }
    }
}

enum Step {
    Frame(Result<Frame, FrameError>),
    Closed,
}

/// Which transport carries a connection's bytes (the `transport` label of its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    XhrStreaming,
    XhrPolling,
    EventSource,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::XhrStreaming => "xhr_streaming",
            Transport::XhrPolling => "xhr_polling",
            Transport::EventSource => "sse",
        }
    }
}

/// An admitted connection, whichever transport carries it: registered in its app's hub and
/// counted, told `connection_established`, its messages handled by the one `Session`. The
/// transport hands it complete text messages and drains `conn()`; `finish` is the departure
/// (every channel left: `member_removed`, webhooks, counts) and must be awaited once.
pub struct Established {
    session: Session,
    conn: ConnRef,
    hub: Arc<AppHub>,
    transport: Transport,
}

impl Established {
    /// Registers `conn` and enqueues `connection_established` (protocol.md 1.3).
    pub fn open(
        state: Arc<ServerState>,
        app: Arc<App>,
        hub: Arc<AppHub>,
        conn: ConnRef,
        transport: Transport,
    ) -> Established {
        let socket_id = conn.socket_id;
        hub.connections.insert(socket_id, conn.clone());
        hub.metrics.connected.inc();
        hub.metrics.new_connections.inc();
        state.metrics.transport_connected(transport.label(), 1);
        conn.deliver(&message::connection_established(
            socket_id,
            app.settings.activity_timeout.as_secs(),
        ));
        debug!(transport = transport.label(), "connected");
        hub.tap.record(|| Entry::ConnectionOpened {
            socket_id: socket_id.to_string(),
            transport: transport.label(),
        });
        let session = Session::new(state, app, hub.clone(), conn.clone());
        Established {
            session,
            conn,
            hub,
            transport,
        }
    }

    pub fn conn(&self) -> &ConnRef {
        &self.conn
    }

    /// Signed in, or subscribed to a channel that needed a signature.
    pub fn is_authorized(&self) -> bool {
        self.session.is_authorized()
    }

    /// Handles one complete text message (valid UTF-8: the transport checked it).
    pub async fn handle(&mut self, payload: &[u8]) {
        // Boxed so an idle connection's task does not carry the handler's state.
        Box::pin(self.session.handle(payload)).await;
    }

    /// The departure: leaves every channel, unregisters, stops the transport's tasks and
    /// counts the close code. Returns the reason the connection closed with, if any.
    pub async fn finish(mut self, state: &ServerState) -> Option<ErrorKind> {
        self.session.leave_all().await;
        let hub = &self.hub;
        hub.connections.remove(&self.conn.socket_id);
        hub.metrics.connected.dec();
        state
            .metrics
            .transport_connected(self.transport.label(), -1);
        // Make sure the transport stops even when the client left on its own.
        self.conn.stop();
        let reason = self.conn.close_reason();
        if reason == Some(ErrorKind::SlowConsumer) {
            hub.metrics.slow_consumers.inc();
        }
        let code = reason.as_ref().map_or(1000, ErrorKind::code);
        hub.metrics.disconnected(code);
        hub.tap.record(|| Entry::ConnectionClosed {
            socket_id: self.conn.socket_id.to_string(),
            code,
        });
        reason
    }
}

/// Serves an admitted WebSocket. One task reads and writes: the socket (`io`, made by
/// [`IoSide::shared`]) is shared by a lock that is never held across an await (each side takes
/// it for one poll), so neither side waits for the other.
// Not an `async fn`, on purpose (see `run`).
#[allow(clippy::manual_async_fn)]
fn serve(
    io: Mutex<Io>,
    socket_id: SocketId,
    deflate: bool,
    app: Arc<App>,
    slot: ConnectionSlot,
    state: Arc<ServerState>,
) -> impl Future<Output = ()> + Send {
    async move {
        let hub = slot.hub().clone();
        let conn = ConnHandle::bounded(socket_id, state.budgets.queue.clone());
        if deflate {
            conn.accept_deflate();
        }
        // Registered by every read with the socket, and by the timer (see the handle's `Wake`):
        // a wake-up for a delivery polls only the output side.
        let input_waker = Waker::from(conn.clone());
        let pump = writer::pump(IoSide(&io), &conn, &hub.metrics);
        tokio::pin!(pump);
        // `Some(clean)` once the output side ended: the connection is closing.
        let mut pumped: Option<bool> = None;
        let mut reader = IoSide(&io);

        let mut session = Established::open(
            state.clone(),
            app.clone(),
            hub.clone(),
            conn.clone(),
            Transport::WebSocket,
        );
        let settings = &app.settings;
        let max = settings.max_message_size;
        let mut deadline = Instant::now() + settings.ping_interval;
        let mut pinged = false;
        let mut auth_deadline = settings
            .require_authorization
            .then(|| Instant::now() + settings.authorization_timeout);
        // A message being assembled: its opcode, whether it is compressed, the bytes so far.
        let mut fragments: Option<(OpCode, bool, Vec<u8>)> = None;
        // The bytes of messages not yet handled, charged to the node's budget as they arrive.
        let mut hold = PartialHold::new(state.budgets.partial.clone());

        loop {
            // What the previous message held is handled or dropped; fragments are still held.
            hold.lower_to(fragments.as_ref().map_or(0, |(_, _, buf)| buf.capacity()));
            let step = {
                let read = frames::read_frame(&mut reader, max, deflate, &mut hold);
                tokio::pin!(read);
                loop {
                    // One timer for both deadlines: the liveness check and, until the connection
                    // is authorized, the authorization timeout.
                    let next = auth_deadline.map_or(deadline, |a| a.min(deadline));
                    let timer = sleep_until(next);
                    tokio::pin!(timer);
                    // The input side (the read and the timer) is polled only when it woke, or
                    // once when either is new: a delivery's wake-up polls the output side alone.
                    conn.arm_read();
                    let input = std::future::poll_fn(|cx| {
                        poll_input(&conn, &input_waker, cx, |input| {
                            if let Poll::Ready(r) = read.as_mut().poll(input) {
                                return Poll::Ready(Some(r));
                            }
                            timer.as_mut().poll(input).map(|()| None)
                        })
                    });
                    tokio::select! {
                        // The output side first: a closing connection (a deadline passed, say)
                        // stops here, before the input side is asked again.
                        biased;
                        clean = &mut pump, if pumped.is_none() => {
                            pumped = Some(clean);
                            break Step::Closed;
                        }
                        got = input => {
                            if let Some(r) = got {
                                break Step::Frame(r);
                            }
                            let now = Instant::now();
                            if deadline <= now {
                                if pinged {
                                    conn.close(ErrorKind::PongTimeout);
                                } else {
                                    conn.deliver(&message::ping());
                                    pinged = true;
                                    deadline = now + settings.pong_timeout;
                                }
                            }
                            if auth_deadline.is_some_and(|a| a <= now) {
                                if session.is_authorized() {
                                    auth_deadline = None;
                                } else {
                                    conn.close(ErrorKind::AuthorizationTimeout);
                                }
                            }
                        }
                    }
                }
            };
            let frame = match step {
                Step::Closed => break,
                Step::Frame(Ok(f)) => f,
                Step::Frame(Err(e)) => {
                    debug!(error = %e, "read ended");
                    match e {
                        FrameError::TooBig(_) => conn.close(ErrorKind::MessageTooBig),
                        FrameError::Protocol(_) => conn.close(ErrorKind::WebSocketProtocol),
                        // Back off and come back when the node has room (counted by the budget).
                        FrameError::OverBudget => conn.close(ErrorKind::OverCapacity),
                        // Nothing can be written to a client that is gone: skip the close frame (a
                        // mass disconnect then costs no write per socket).
                        FrameError::Eof | FrameError::Io(_) => conn.mark_peer_gone(),
                    }
                    break;
                }
            };
            // Any inbound frame is activity (protocol.md 1.6), except a Pong frame: the server never sends
            // a Ping frame, so every Pong is unsolicited (RFC 6455 5.5.3), and a client that never
            // reads could otherwise keep itself alive with them, its queue filling for nothing.
            // Traffic that asks for an answer (`pusher:ping`, a Ping frame) still counts: its
            // answers fill the queue of a client that does not read, which is then closed.
            if frame.opcode != OpCode::Pong {
                deadline = Instant::now() + settings.ping_interval;
                pinged = false;
            }
            hub.metrics
                .socket_received_bytes
                .inc_by(frame.payload.len() as u64);
            let complete = match frame.opcode {
                OpCode::Close => {
                    if !valid_close_payload(&frame.payload) {
                        conn.close(ErrorKind::WebSocketProtocol);
                    }
                    break;
                }
                OpCode::Ping => {
                    conn.enqueue(Outbound::Pong(frame.payload));
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Text | OpCode::Binary => {
                    if fragments.is_some() {
                        conn.close(ErrorKind::WebSocketProtocol);
                        break;
                    }
                    if frame.fin {
                        Some((frame.opcode, frame.compressed, frame.payload))
                    } else {
                        fragments =
                            Some((frame.opcode, frame.compressed, Vec::from(frame.payload)));
                        None
                    }
                }
                OpCode::Continuation => {
                    let Some((first, compressed, mut buf)) = fragments.take() else {
                        conn.close(ErrorKind::WebSocketProtocol);
                        break;
                    };
                    // Each frame is capped by the reader; the message total is capped here.
                    if buf.len() + frame.payload.len() > max {
                        conn.close(ErrorKind::MessageTooBig);
                        break;
                    }
                    // Exactly: the charge for this frame's buffer covers the growth.
                    buf.reserve_exact(frame.payload.len());
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        Some((first, compressed, Bytes::from(buf)))
                    } else {
                        fragments = Some((first, compressed, buf));
                        None
                    }
                }
            };
            let Some((opcode, compressed, payload)) = complete else {
                continue;
            };
            // The message limit applies to what the message inflates to (RFC 7692 7.2.2).
            let payload = if compressed {
                match deflate::inflate(&payload, max, &mut hold) {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(error = %e, "inflating a message failed");
                        conn.close(match e {
                            FrameError::OverBudget => ErrorKind::OverCapacity,
                            FrameError::TooBig(_) => ErrorKind::MessageTooBig,
                            _ => ErrorKind::WebSocketProtocol,
                        });
                        break;
                    }
                }
            } else {
                payload
            };
            hub.metrics.ws_messages_received.inc();
            if opcode == OpCode::Binary {
                conn.deliver(&message::error(&ErrorKind::InvalidMessageFormat, None));
                continue;
            }
            if std::str::from_utf8(&payload).is_err() {
                conn.close(ErrorKind::InvalidPayload);
                break;
            }
            {
                // The output side keeps going while the message is handled (a subscription may
                // wait on the cluster): what is queued meanwhile is written, not held.
                let handled = session.handle(&payload);
                tokio::pin!(handled);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut handled => break,
                        clean = &mut pump, if pumped.is_none() => pumped = Some(clean),
                    }
                }
            }
            if conn.is_closing() || pumped.is_some() {
                break;
            }
        }

        // The departure and the close sequence go on together, as they would on two tasks: the
        // client is told at once, and a client that does not read cannot delay the departure
        // beyond the close's bounded steps. Boxed, as a message's handling is: an idle
        // connection's task does not carry the departure's state.
        let departure = async {
            let close = async {
                let clean = match pumped {
                    Some(clean) => clean,
                    // The departure stops the connection, which ends the pump.
                    None => pump.await,
                };
                writer::close(IoSide(&io), &conn, clean).await;
            };
            let (reason, _) = tokio::join!(
                session.finish(&state),
                tokio::time::timeout(Duration::from_secs(5), close)
            );
            reason
        };
        let reason = Box::pin(departure).await;
        debug!(
            code = reason.as_ref().map_or(1000, ErrorKind::code),
            "disconnected"
        );
        slot.release().await;
    }
}

/// Polls the input side (`poll`: the read, then the timer) only when it woke or is new, with
/// the waker that marks it; any other wake-up of the task (a delivery) leaves it alone. The
/// task's waker is registered before the check, so a wake-up of the input side is never lost,
/// whether or not the output side is waiting in the same slot.
fn poll_input<T>(
    conn: &ConnHandle,
    input_waker: &Waker,
    task: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    if !conn.take_read_woken(task.waker()) {
        return Poll::Pending;
    }
    poll(&mut Context::from_waker(input_waker))
}

/// One side of a socket shared by the connection's one task: each poll takes the lock for
/// its own duration only.
#[derive(Clone, Copy)]
struct IoSide<'a>(&'a Mutex<Io>);

impl IoSide<'_> {
    fn shared(io: Io) -> Mutex<Io> {
        Mutex::new(io)
    }
}

impl AsyncRead for IoSide<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_read(cx, buf)
    }
}

impl AsyncWrite for IoSide<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.lock()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.lock().is_write_vectored()
    }
}

/// A close frame's payload is empty, or a 2-byte code allowed on the wire plus UTF-8.
fn valid_close_payload(p: &[u8]) -> bool {
    match p.len() {
        0 => true,
        1 => false,
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            allowed && std::str::from_utf8(&p[2..]).is_ok()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::protocol::SocketId;

    /// A task's waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A read that is never ready and keeps the waker it was polled with, as a socket does.
    struct Socket(Option<Waker>);

    impl Future for Socket {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// tokio keeps a task in one allocation: a 32-byte header, the future with 32 bytes of
    /// bookkeeping (the drain's tracker included), a 48-byte trailer, rounded up to 128 bytes.
    fn task_cell_bytes(future: usize) -> usize {
        (32 + future + 32 + 48).div_ceil(128) * 128
    }

    #[tokio::test]
    async fn a_sockets_task_fits_jemallocs_1536_byte_class() {
        let (state, _, _) = crate::state::test_node(
            crate::config::ServerConfig::default(),
            Arc::new(crate::presence::MemoryPresence::default()),
            Arc::new(crate::cluster::Local),
            crate::app::AppSettings::default(),
            None,
        );
        let mut request = http::Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        let (_, upgrade) = fastwebsockets::upgrade::upgrade(&mut request).unwrap();
        let task = run(
            upgrade,
            Admission::Refused(ErrorKind::OverCapacity),
            false,
            state,
        );
        let bytes = std::mem::size_of_val(&task);
        // Every connection pays the class its task falls in (1,536, 1,792, 2,048 bytes): a
        // future grown past it costs 256 bytes per idle connection (BENCHMARKS.md, "Memory
        // per connection").
        assert!(
            task_cell_bytes(bytes) <= 1536,
            "the socket's task is {bytes} bytes, its cell {} (more than 1,536)",
            task_cell_bytes(bytes)
        );
    }

    #[test]
    fn a_wake_up_from_the_socket_reaches_the_task_and_only_it_polls_the_read() {
        let conn = ConnHandle::new(SocketId::from_parts(1, 1), 16);
        let input_waker = Waker::from(conn.clone());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut socket = Socket(None);
        let mut poll = |socket: &mut Socket| {
            poll_input(&conn, &input_waker, &mut cx, |input| {
                Pin::new(&mut *socket).poll(input)
            })
            .is_pending()
        };

        // A new read is polled at once, with the waker that marks the read side.
        assert!(poll(&mut socket));
        let registered = socket.0.take().expect("a new read is polled");
        assert!(registered.will_wake(&input_waker));
        // Another wake-up of the task (a delivery, a timer) leaves the read alone.
        assert!(poll(&mut socket));
        assert!(
            socket.0.is_none(),
            "polled without a wake-up from the socket"
        );
        // The socket's wake-up reaches the task even though nothing else of it waits in the
        // slot (no output side here), and the next poll reads.
        registered.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task was not woken");
        assert!(poll(&mut socket));
        assert!(
            socket.0.is_some(),
            "the read was not polled after its wake-up"
        );
    }
}
