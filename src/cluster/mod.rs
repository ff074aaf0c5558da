//! `Adapter`: the boundary to other nodes. A publish is delivered locally by the broadcaster
//! and handed to the adapter already encoded; the adapter carries it to the other nodes, whose
//! broadcasters deliver it to their own sockets. The local adapter (the embedded default) has
//! no other nodes.
//!
//! `cluster` knows nothing of channels beyond their names: what arrives from other nodes is
//! applied by the owner of the state.

use bytes::Bytes;

use crate::app::AppId;
use crate::protocol::SocketId;

/// An encoded event for the other nodes.
#[derive(Debug, Clone)]
pub struct RemoteEvent {
    pub app: AppId,
    pub channel: String,
    pub frame: Bytes,
    pub except: Option<SocketId>,
}

pub trait Adapter: Send + Sync {
    /// Hands an encoded event to the other nodes. Never blocks; at-most-once.
    fn publish(&self, event: RemoteEvent);
    /// Whether the adapter can currently reach the other nodes (for `/ready`).
    fn is_healthy(&self) -> bool;
}

/// One node, no peers.
#[derive(Debug, Default)]
pub struct LocalAdapter;

impl Adapter for LocalAdapter {
    fn publish(&self, _event: RemoteEvent) {}
    fn is_healthy(&self) -> bool {
        true
    }
}
