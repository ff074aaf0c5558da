//! The boundary to other nodes.
//!
//! - `Adapter` carries encoded events between nodes (fan-out), with interest-based routing: a
//!   node only receives traffic for channels and users it has local sockets for.
//! - `ClusterState` answers what is true cluster-wide: subscription and connection counts,
//!   occupied channels, the last event of cache channels.
//! - Presence rosters live behind `presence::PresenceStore`.
//!
//! `Local` is the adapter of one node (the embedded default), which has no shared store; `redis`
//! serves a cluster. `cluster` knows nothing of sockets, channels or the Pusher protocol's
//! frames: it takes app ids and plain values, and what arrives from other nodes (`Inbound`)
//! or what the backend finds (`Control`: departures of dead nodes' members, repairs) is handed
//! to the owner of the node's state as values (`inbound::apply`), which encodes and delivers
//! through the one delivery path.

pub mod redis;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::app::AppId;
use crate::protocol::{MemberChange, PresenceMember, SocketId};
use crate::webhooks::RemovalHold;

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Subscribers of a channel.
    Channel(String),
    /// Every connection signed in as a user (`#server-to-user-`).
    User(String),
    /// Every connection watching a user (watchlist events, protocol.md 3.8).
    Watchers(String),
}

/// What a publication is: its kind travels with it from the publisher to every node's
/// registry, so nothing downstream reads the frame to find out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An event: every subscriber (but `except`) receives it.
    Event,
    /// A presence member event (`member_added` / `member_removed`): it reaches only the
    /// subscribers whose roster it changes.
    Member(MemberChange),
}

/// One publication: who it is for, what it is, the encoded Pusher frame (encoded once,
/// shared by every recipient) and the socket it skips. The one value that goes through the
/// `Broadcaster`, the registries and the `Adapter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub target: Target,
    pub kind: Kind,
    pub frame: Bytes,
    pub except: Option<SocketId>,
    /// An event of a channel with a shared history: its position there (already written
    /// into `frame`), the same on every node.
    pub stamp: Option<Stamp>,
}

/// A position in a channel's shared history: the history's epoch and the event's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: String,
    pub offset: u64,
}

impl Publication {
    /// An event on `target`.
    pub fn event(target: Target, frame: Bytes, except: Option<SocketId>) -> Publication {
        Publication {
            target,
            kind: Kind::Event,
            frame,
            except,
            stamp: None,
        }
    }
}

/// A publication of an app, for or from the other nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEvent {
    pub app: AppId,
    pub publication: Publication,
}

/// What other nodes send this node: data, on the bounded events queue (overflow drops the
/// newest and counts it, like every delivery).
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
}

/// What the backend itself asks of the owner of the node's state: repairs and departures, on
/// the control queue, which never drops. It is unbounded but naturally bounded: at most one
/// pending `Resync` (coalesced by the backend), departures bounded by a dead node's state,
/// journal replays by a dead node's journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// A dead node's member left a presence channel cluster-wide: tell the local subscribers
    /// and the other nodes (`member_removed`) and queue the webhook (this node reaped it).
    MemberGone {
        app: AppId,
        channel: String,
        user: String,
    },
    /// A dead node's last subscriber of a channel is gone cluster-wide (webhook only).
    ChannelGone { app: AppId, channel: String },
    /// A dead node held a user's last signed-in connection: the user is offline.
    UserGone { app: AppId, user: String },
    /// This node's shared state may be lost or stale (it was reaped, Redis restarted, or
    /// changes were lost while Redis was unreachable): build a `NodeSnapshot` and hand it to
    /// `ClusterState::resync`. `announce` when other nodes saw this node's members leave.
    Resync { announce: bool },
    /// Webhook requests taken over from a dead node's journal, to deliver in order.
    Replay(Vec<crate::webhooks::Replay>),
}

/// The receiving ends a backend hands the owner of the node's state.
pub struct InboundQueues {
    pub events: mpsc::Receiver<Inbound>,
    pub control: mpsc::UnboundedReceiver<Control>,
}

/// This node's presence memberships, built by its owner for `ClusterState::resync`. (The
/// counts are not in it: a store records every count change this node asks for as it is
/// asked, and a resync writes those, so none is lost or counted twice by a change racing the
/// snapshot.)
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    pub apps: Vec<AppSnapshot>,
}

/// One app's presence memberships on this node.
#[derive(Debug, Clone)]
pub struct AppSnapshot {
    pub app: AppId,
    /// Presence memberships, one per local connection.
    pub members: Vec<SnapshotMember>,
}

/// One local connection's presence membership.
#[derive(Debug, Clone)]
pub struct SnapshotMember {
    pub channel: String,
    pub socket: SocketId,
    pub member: PresenceMember,
}

/// What a resync found, for the owner to announce through the delivery path.
#[derive(Debug, Clone, Default)]
pub struct Resynced {
    /// Members that are back after other nodes saw them leave (announce `member_added` to
    /// everyone but `socket`).
    pub back: Vec<(AppId, SnapshotMember)>,
    /// Members who left while their departure could not be recorded and whom no node has
    /// any longer (announce `member_removed`; no webhook).
    pub gone: Vec<MemberLeft>,
}

/// A presence member who left a channel cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberLeft {
    pub app: AppId,
    pub channel: String,
    pub user: String,
}

/// A cache channel's last event as the shared store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEvent {
    /// The encoded Pusher frame.
    pub frame: Bytes,
    /// The publisher's `data`, for the HTTP API.
    pub data: Arc<str>,
    /// How long it stays.
    pub ttl: Duration,
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

/// Cluster-wide facts kept in a shared store, keyed by app id. One node has no shared store:
/// its owner (`state::SharedState`) answers from the local registries instead.
#[async_trait]
pub trait ClusterState: Send + Sync {
    /// A local subscription is about to be added. It is counted now, before the client is told
    /// it is subscribed, so every node's HTTP API agrees from then on; returns the
    /// cluster-wide count after it.
    async fn subscribing(&self, app: &AppId, channel: &str) -> Result<Counted, ClusterError>;
    /// A local subscription was removed; returns the cluster-wide count after it. When that
    /// is 0, `hold` (if any) holds the channel's `channel_vacated` cluster-wide.
    async fn unsubscribed(
        &self,
        app: &AppId,
        channel: &str,
        hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError>;
    /// Cluster-wide subscription count of one channel.
    async fn subscription_count(&self, app: &AppId, channel: &str) -> Result<u64, ClusterError>;
    /// Occupied channels whose name starts with `prefix`, with their subscription counts.
    async fn occupied(&self, app: &AppId, prefix: &str)
        -> Result<Vec<(String, u64)>, ClusterError>;
    /// Reserves a connection slot under `max` cluster-wide; `false` when full. Unless it
    /// answers `false`, the connection is counted (an error included: the store records it
    /// at its next resync), and `close_connection` must follow.
    async fn open_connection(&self, app: &AppId, max: Option<u64>) -> Result<bool, ClusterError>;
    async fn close_connection(&self, app: &AppId) -> Result<(), ClusterError>;
    /// Open connections of the app, cluster-wide.
    async fn connections(&self, app: &AppId) -> Result<u64, ClusterError>;
    /// Remembers the last event of a cache channel for every node, before the event is
    /// published (so a subscriber anywhere that misses it live finds it cached, and one
    /// publisher's successive events are stored in order). Failures are logged: a node-local
    /// copy would later hide newer events that other nodes stored.
    async fn store_cache(&self, app: &AppId, channel: &str, event: &SharedEvent);
    /// The last event of a cache channel, wherever it was published.
    async fn cached(&self, app: &AppId, channel: &str)
        -> Result<Option<SharedEvent>, ClusterError>;
    /// A connection signed in as `user` (`delta` 1) or went away (-1); returns the user's
    /// signed-in connections cluster-wide after it.
    async fn signed_in(&self, app: &AppId, user: &str, delta: i64) -> Result<u64, ClusterError>;
    /// Which of `users` have a signed-in connection anywhere.
    async fn online(&self, app: &AppId, users: &[String]) -> Result<Vec<bool>, ClusterError>;
    /// Replaces this node's shares of the shared state: the counts with the ones it was asked
    /// to record, the presence memberships with `snapshot` (see `Control::Resync`); returns the
    /// presence changes for the owner to announce.
    async fn resync(
        &self,
        snapshot: &NodeSnapshot,
        announce: bool,
    ) -> Result<Resynced, ClusterError>;
}

/// What claiming an idempotency key found (see `SharedKeys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now held by this request: publish, then `complete` or
    /// `release` it.
    New,
    /// A request with this key and fingerprint was answered within the window: its answer.
    Done(Bytes),
    /// A request with this key is still being handled.
    InProgress,
    /// The key was used for a different request (another fingerprint).
    Mismatch,
}

/// Idempotency keys of the HTTP API, shared by every node (protocol.md 11.1). A key is held
/// while its request is handled (`PENDING` at most), then remembered with the request's
/// answer for the app's window.
#[async_trait]
pub trait SharedKeys: Send + Sync {
    /// Takes `key` for a request with `fingerprint`, or says what holds it.
    async fn claim_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, ClusterError>;
    /// Remembers the answer of the request that claimed `key`, for `window`.
    async fn complete_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
        answer: &Bytes,
        window: Duration,
    ) -> Result<(), ClusterError>;
    /// Frees a claimed `key` whose request failed (a retry may then publish).
    async fn release_key(
        &self,
        app: &AppId,
        key: &str,
        fingerprint: &str,
    ) -> Result<(), ClusterError>;
}

/// How long a claimed key is held while its request is handled: a node that dies meanwhile
/// leaves it held no longer than this.
pub const PENDING: Duration = Duration::from_secs(30);

/// The bounds of one channel's shared history (the app's `history_max_events` and
/// `history_ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBounds {
    pub max_events: usize,
    pub ttl: Duration,
}

/// One kept event as the shared history returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptEvent {
    pub offset: u64,
    /// The encoded event without its position.
    pub frame: Bytes,
    /// The socket it skipped.
    pub except: Option<SocketId>,
}

/// What reading a channel's shared history found.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedLog {
    pub epoch: String,
    /// The last offset given (0: none yet).
    pub last: u64,
    /// The oldest offset still kept (`last + 1` when none is).
    pub oldest: u64,
    /// The kept events after the offset asked for, oldest first (empty when some of them are
    /// no longer kept, or the offset is not of this history).
    pub events: Vec<KeptEvent>,
}

/// Channel histories kept once for the whole cluster (protocol.md 11.2): every node's
/// events of a channel get their positions from one log, so positions agree on every node
/// and a client resumes on any of them.
#[async_trait]
pub trait SharedHistory: Send + Sync {
    /// Appends an event (its frame without position, and the socket it skips) to the
    /// channel's log, starting a log with a new epoch when there is none, trimmed to
    /// `bounds`; returns the event's position. Called once per event cluster-wide, by the
    /// node it was published on.
    async fn record(
        &self,
        app: &AppId,
        channel: &str,
        frame: &Bytes,
        except: Option<SocketId>,
        bounds: HistoryBounds,
    ) -> Result<Stamp, ClusterError>;
    /// The channel's log: its epoch and last offset and, with `after`, the kept events after
    /// that offset. A channel without a log gets one (with no events), so a client asking for
    /// the current position can resume from it later.
    async fn read(
        &self,
        app: &AppId,
        channel: &str,
        after: Option<u64>,
        bounds: HistoryBounds,
    ) -> Result<SharedLog, ClusterError>;
}

/// One node, no peers: nothing crosses.
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
