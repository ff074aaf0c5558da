//! The boundary to other nodes.
//!
//! - `Adapter` carries encoded events between nodes (fan-out), with interest-based routing: a
//!   node only receives traffic for channels and users it has local sockets for.
//! - `ClusterState` answers what is true cluster-wide: subscription and connection counts,
//!   occupied channels, the last event of cache channels.
//! - Presence rosters live behind `presence::PresenceStore`.
//!
//! The local implementations serve one node (the embedded default); `redis` serves a cluster.
//! `cluster` knows nothing of sockets: what arrives from other nodes is handed to the server as
//! `Inbound` values and applied by the owner of the state (`server::apply_inbound`).

pub mod redis;
pub mod wire;

use async_trait::async_trait;
use bytes::Bytes;

use crate::app::AppId;
use crate::channels::CachedEvent;
use crate::protocol::SocketId;
use crate::state::AppHub;
use crate::webhooks::RemovalHold;

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Subscribers of a channel.
    Channel(String),
    /// Every connection signed in as a user (`#server-to-user-`).
    User(String),
    /// Every connection watching a user (watchlist events, spec 3.8).
    Watchers(String),
}

/// An encoded event for the other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEvent {
    pub app: AppId,
    pub target: Target,
    pub frame: Bytes,
    pub except: Option<SocketId>,
}

/// What other nodes ask this node to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Deliver to local sockets.
    Event(RemoteEvent),
    /// Close every local connection signed in as `user` (and, with `presence`, every connection
    /// present as `user`).
    Terminate {
        app: AppId,
        user: String,
        presence: bool,
    },
    /// A dead node's member left a presence channel: tell the local subscribers (already
    /// encoded) and, on the node that reaped it, queue the webhook.
    MemberGone {
        app: AppId,
        channel: String,
        user: String,
        frame: Bytes,
    },
    /// A dead node's last subscriber of a channel is gone cluster-wide (webhook only).
    ChannelGone { app: AppId, channel: String },
    /// A dead node held a user's last signed-in connection: the user is offline.
    UserGone { app: AppId, user: String },
    /// This node's shared state may be lost or stale (it was reaped, Redis restarted, or
    /// changes were lost while Redis was unreachable): publish it again. `announce` when other
    /// nodes saw this node's members leave.
    Resync { announce: bool },
    /// Webhook requests taken over from a dead node's journal, to deliver in order.
    Replay(Vec<crate::webhooks::Replay>),
}

/// A cluster backend failure: the one error type of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The backend is known to be unreachable: the call was not attempted (and the change
    /// it would have recorded is repaired by a resync).
    #[error("cluster backend unreachable")]
    Unreachable,
    /// A command or script failed.
    #[error("cluster backend command failed: {0}")]
    Command(#[from] ::redis::RedisError),
    /// Connecting or starting failed (configuration, addresses, start-up timeouts).
    #[error("cluster backend: {0}")]
    Setup(String),
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Cross-node fan-out; at-most-once.
#[async_trait]
pub trait Adapter: Send + Sync {
    /// Hands an encoded event to the other nodes that have an interest in its target. Returns
    /// at once (queued).
    fn publish(&self, event: RemoteEvent);
    /// A local socket now wants `target`'s events (one call per socket). When this returns,
    /// events published anywhere reach this node.
    async fn acquire(&self, app: &AppId, target: &Target);
    /// The matching release of `acquire`.
    async fn release(&self, app: &AppId, target: &Target);
    /// Asks every other node to terminate `user`'s connections (returns at once).
    fn terminate(&self, app: &AppId, user: &str, presence: bool);
    /// Whether the backend is reachable (`/ready`).
    fn is_healthy(&self) -> bool;
    /// Whether there are other nodes at all (when not, publishers skip building
    /// `RemoteEvent`s).
    fn has_peers(&self) -> bool {
        true
    }
}

/// A subscription counted cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The channel's subscriptions after it.
    pub total: u64,
    /// It made the channel occupied again while its `channel_vacated` was held: neither
    /// webhook is sent (see `RemovalHold`).
    pub rejoined: bool,
}

/// Cluster-wide facts. `local` arguments are this node's figures after the change, which is all
/// the local implementation needs.
#[async_trait]
pub trait ClusterState: Send + Sync {
    /// A local subscription is about to be added. A shared store counts it now, before the
    /// client is told it is subscribed, so every node's HTTP API agrees from then on; returns
    /// the cluster-wide count after it. `None`: the count is the local registry's, known once
    /// the subscription is added (one node).
    async fn subscribing(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<Counted>, ClusterError>;
    /// A local subscription was removed; returns the cluster-wide count after it. When that
    /// is 0, `hold` (if any) holds the channel's `channel_vacated` cluster-wide.
    async fn unsubscribed(
        &self,
        hub: &AppHub,
        channel: &str,
        local: usize,
        hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError>;
    /// Cluster-wide subscription count of one channel.
    async fn subscription_count(&self, hub: &AppHub, channel: &str) -> Result<u64, ClusterError>;
    /// Occupied channels whose name starts with `prefix`, with their subscription counts.
    async fn occupied(
        &self,
        hub: &AppHub,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, ClusterError>;
    /// Reserves a connection slot under `max` cluster-wide; `false` when full.
    async fn open_connection(&self, hub: &AppHub, max: Option<u64>) -> Result<bool, ClusterError>;
    async fn close_connection(&self, hub: &AppHub) -> Result<(), ClusterError>;
    /// Open connections of the app, cluster-wide.
    async fn connections(&self, hub: &AppHub) -> Result<u64, ClusterError>;
    /// Remembers the last event of a cache channel for every node, before the event is
    /// published (so a subscriber anywhere that misses it live finds it cached, and one
    /// publisher's successive events are stored in order); `false` when it is kept only in the
    /// local registry (one node).
    async fn store_cache(&self, hub: &AppHub, channel: &str, cached: &CachedEvent) -> bool;
    /// The last event of a cache channel, wherever it was published.
    async fn cached(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<CachedEvent>, ClusterError>;
    /// A connection signed in as `user` (`delta` 1) or went away (-1); returns the user's
    /// signed-in connections cluster-wide after it (`local`: this node's, after it).
    async fn signed_in(
        &self,
        hub: &AppHub,
        user: &str,
        delta: i64,
        local: usize,
    ) -> Result<u64, ClusterError>;
    /// Which of `users` have a signed-in connection anywhere.
    async fn online(&self, hub: &AppHub, users: &[String]) -> Result<Vec<bool>, ClusterError>;
}

/// One node, no peers: every answer comes from the local registries.
#[derive(Debug, Default)]
pub struct Local;

#[async_trait]
impl Adapter for Local {
    fn publish(&self, _event: RemoteEvent) {}
    async fn acquire(&self, _app: &AppId, _target: &Target) {}
    async fn release(&self, _app: &AppId, _target: &Target) {}
    fn terminate(&self, _app: &AppId, _user: &str, _presence: bool) {}
    fn is_healthy(&self) -> bool {
        true
    }
    fn has_peers(&self) -> bool {
        false
    }
}

#[async_trait]
impl ClusterState for Local {
    async fn subscribing(
        &self,
        _hub: &AppHub,
        _channel: &str,
    ) -> Result<Option<Counted>, ClusterError> {
        Ok(None)
    }
    async fn unsubscribed(
        &self,
        _hub: &AppHub,
        _channel: &str,
        local: usize,
        _hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError> {
        Ok(local as u64)
    }
    async fn subscription_count(&self, hub: &AppHub, channel: &str) -> Result<u64, ClusterError> {
        Ok(hub.channels.subscription_count(channel) as u64)
    }
    async fn occupied(
        &self,
        hub: &AppHub,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, ClusterError> {
        Ok(hub
            .channels
            .occupied(prefix)
            .into_iter()
            .map(|(c, n)| (c.to_string(), n as u64))
            .collect())
    }
    async fn open_connection(
        &self,
        _hub: &AppHub,
        _max: Option<u64>,
    ) -> Result<bool, ClusterError> {
        // The hub's own reservation already enforced `max` for this node.
        Ok(true)
    }
    async fn close_connection(&self, _hub: &AppHub) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn connections(&self, hub: &AppHub) -> Result<u64, ClusterError> {
        Ok(hub.connection_count())
    }
    async fn store_cache(&self, _hub: &AppHub, _channel: &str, _cached: &CachedEvent) -> bool {
        false
    }
    async fn cached(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<CachedEvent>, ClusterError> {
        Ok(hub.channels.cached(channel))
    }
    async fn signed_in(
        &self,
        _hub: &AppHub,
        _user: &str,
        _delta: i64,
        local: usize,
    ) -> Result<u64, ClusterError> {
        Ok(local as u64)
    }
    async fn online(&self, hub: &AppHub, users: &[String]) -> Result<Vec<bool>, ClusterError> {
        Ok(users.iter().map(|u| hub.users.is_online(u)).collect())
    }
}
