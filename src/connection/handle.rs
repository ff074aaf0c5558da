//! `ConnHandle`: what the rest of the server holds of a connection. It can only enqueue frames
//! (never write to the socket: the connection's own tasks do that) and ask the connection to
//! close.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
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

pub struct ConnHandle {
    pub socket_id: SocketId,
    tx: mpsc::Sender<Outbound>,
    close_reason: Mutex<Option<ErrorKind>>,
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
    pub fn new(socket_id: SocketId, queue_size: usize) -> (ConnRef, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue_size);
        let handle = ConnHandle {
            socket_id,
            tx,
            close_reason: Mutex::new(None),
            cancel: CancellationToken::new(),
            signed_in: Mutex::new(None),
            presence_users: Mutex::new(Vec::new()),
        };
        (Arc::new(handle), rx)
    }

    /// Enqueues a shared frame without waiting. Overflow policy: a full queue means the client
    /// stopped reading; it is disconnected (4100, back off and reconnect) so it cannot slow
    /// anyone else down.
    pub fn deliver(&self, frame: &Bytes) -> Delivery {
        self.enqueue(Outbound::Text(frame.clone()))
    }

    pub fn enqueue(&self, out: Outbound) -> Delivery {
        match self.tx.try_send(out) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(ErrorKind::SlowConsumer);
                Delivery::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Asks the connection to close with `kind` (the first reason wins).
    pub fn close(&self, kind: ErrorKind) {
        {
            let mut reason = self.close_reason.lock();
            if reason.is_none() {
                *reason = Some(kind);
            }
        }
        self.cancel.cancel();
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
