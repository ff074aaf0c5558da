//! The Redis backend of the cluster (`RedisBackend`): one type for a standalone Redis, a
//! Sentinel-managed one and a Redis Cluster. It implements `Adapter` (fan-out over pub/sub
//! with interest-based routing), `ClusterState` (counts and cache channels as shared state with
//! per-node leases), `PresenceStore` and the webhook `Journal`.
//!
//! By job: `keys.rs` (the one key table), `scripts.rs` (the Lua scripts), `pubsub.rs`
//! (publishing and receiving in the three topologies: `endpoint.rs` finds a standalone or
//! Sentinel master, `shards.rs` connects to a Redis Cluster), `lease.rs` (heartbeat, reaping
//! of dead nodes, resync), `shared.rs` (`ClusterState`), `presence.rs` (`PresenceStore`),
//! `journal.rs` (`Journal`), `idempotency.rs` (`SharedKeys`), `history.rs` (`SharedHistory`),
//! `metrics.rs`.
//!
//! Every membership and count change is one Lua script, so first/last transitions are decided
//! atomically cluster-wide: `member_added`, `member_removed`, `channel_occupied` and
//! `channel_vacated` happen once per cluster, on the node that made the transition. A node
//! whose lease expires (it died) is reaped by the first survivor that claims it (`ZREM` returns
//! 1 to one node only): its counts are subtracted and its members removed, with the matching
//! `member_removed` broadcasts and webhooks. Bound: `LEASE` + `HEARTBEAT` (12 s).
//!
//! Delivery is at-most-once, like Pusher: events published while a node is not subscribed
//! (Redis down, or between a first local subscribe and the `SUBSCRIBE` reply) are not replayed.

mod endpoint;
mod history;
mod idempotency;
mod journal;
mod keys;
mod lease;
mod metrics;
mod presence;
mod pubsub;
mod quiet;
mod scripts;
mod shards;
mod shared;
mod shares;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::Registry;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use self::endpoint::{Commands, Endpoint};
use self::keys::Keys;
use self::metrics::Metrics;
use self::scripts::Scripts;
use self::shares::Shares;
use super::{ClusterError, Control, Inbound, InboundQueues};
use crate::config::ScalingConfig;
use crate::webhooks::RemovalHold;

/// How long a node's lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long start-up waits for the pub/sub connection's first subscription.
const PUBSUB_START: Duration = Duration::from_secs(10);
/// Heartbeat and reaper period.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Outgoing publishes queued before new ones are dropped (counted); the bytes they hold are
/// bounded too (`[scaling] publish_backlog_bytes`).
const PUBLISH_QUEUE: usize = 65_536;
/// Inbound messages queued for the server before new ones are dropped (counted).
pub const INBOUND_QUEUE: usize = 65_536;

/// One topic this node listens to, with its local references.
struct Interest {
    refs: usize,
    /// Orders this topic's `SUBSCRIBE`/`UNSUBSCRIBE` round trips (only this topic's: no
    /// other topic waits for them); holds whether the topic is subscribed or asked to be.
    gate: Arc<tokio::sync::Mutex<bool>>,
}

impl Interest {
    fn new() -> Interest {
        Interest {
            refs: 0,
            gate: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }
}

/// Pub/sub subscriptions this node needs, with local reference counts. Behind a plain lock,
/// never held across an `.await`: taking or dropping a reference is one map operation.
#[derive(Default)]
struct Interests {
    topics: HashMap<String, Interest>,
    sink: Option<PubSubSink>,
}

impl Interests {
    /// Every topic with a local reference (for a resubscription).
    fn wanted(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|(_, i)| i.refs > 0)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// The Redis backend (see the module docs).
pub struct RedisBackend {
    node: u64,
    keys: Keys,
    /// A standalone or Sentinel-managed Redis; `None` on a Redis Cluster.
    endpoint: Option<Arc<Endpoint>>,
    /// The Redis Cluster connection for sharded pub/sub; `None` otherwise.
    shards: Option<Arc<shards::Shards>>,
    /// On a Redis Cluster: wakes `resubscriber` (a shard connection closed).
    resubscribe: tokio::sync::Notify,
    conn: Commands,
    interests: Mutex<Interests>,
    publish_tx: mpsc::Sender<Queued>,
    /// Bytes of the messages queued for the publisher or in its batch in flight.
    backlog: AtomicUsize,
    /// The bound on `backlog` (`[scaling] publish_backlog_bytes`): beyond it new messages are
    /// dropped and counted.
    backlog_limit: usize,
    /// The wire version this node sends: the oldest any live node reads (`P:wire`).
    send_version: AtomicU8,
    /// Data from other nodes, bounded (overflow dropped and counted).
    inbound: mpsc::Sender<Inbound>,
    /// Repairs and departures for the owner: never dropped (see `Control`).
    control: mpsc::UnboundedSender<Control>,
    /// A `Control::Resync` is queued and not yet applied (requests coalesce).
    resync_pending: AtomicBool,
    /// A coalesced resync request asked to announce returning members.
    announce_pending: AtomicBool,
    /// `pubsub_up` and `beat_ok` both: what `/ready` and the shortcuts while Redis is
    /// unreachable follow.
    healthy: AtomicBool,
    /// The pub/sub connection is subscribed (always on a Redis Cluster, where the heartbeat
    /// alone tells).
    pubsub_up: AtomicBool,
    /// The last heartbeat succeeded: a Redis that stopped answering without closing its
    /// sockets fails it within `HEARTBEAT` + `COMMAND_TIMEOUT`.
    beat_ok: AtomicBool,
    /// Set by `leave`: the heartbeat stops renewing the lease.
    leaving: AtomicBool,
    /// Set after the first heartbeat: a later heartbeat that creates the lease anew means
    /// this node's shared state was lost.
    registered: AtomicBool,
    /// A change of shared state could not be recorded (Redis unreachable or failing): the next
    /// successful heartbeat publishes this node's state again.
    dirty: AtomicBool,
    /// This node's shares of the tallies as it counted them, and the gate a resync takes.
    shares: Shares,
    metrics: Metrics,
    scripts: Scripts,
    /// What no other node hears, held instead of published (`quiet.rs`); `None` when
    /// `[scaling] skip_unheard` is off, or on a Redis Cluster or behind Sentinel.
    quiet: Option<Mutex<quiet::Quiet>>,
    /// Wakes the task that asks Redis who hears a topic (`pubsub::asker`).
    asks: tokio::sync::Notify,
    /// Wakes the task that sends this node's syncs (`pubsub::syncer`).
    syncs: tokio::sync::Notify,
}

/// A message waiting for the publisher task.
struct Queued {
    topic: String,
    payload: Bytes,
    queued: Instant,
}

impl Queued {
    /// What the message holds, as the backlog counts it.
    fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A removal hold as script arguments: its token and lifetime in ms (`""` and 0 for none).
fn hold_args(hold: Option<RemovalHold>) -> (String, u64) {
    hold.map_or((String::new(), 0), |h| {
        let ttl = u64::try_from(h.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        (h.token.to_string(), ttl)
    })
}

impl RedisBackend {
    /// Connects (failing fast when Redis cannot be reached at start-up) and starts the
    /// pub/sub reader, the publisher and the heartbeat/reaper tasks.
    pub async fn connect(
        scaling: &ScalingConfig,
        registry: &Registry,
        metric_prefix: &str,
    ) -> Result<(Arc<RedisBackend>, InboundQueues), ClusterError> {
        let prefix = scaling.channel.as_str();
        let metrics = Metrics::new(registry, metric_prefix)?;
        let (endpoint, shards, pushes, conn, key_prefix) = if scaling.cluster_nodes.is_empty() {
            let endpoint = Endpoint::connect(scaling).await?;
            let conn = endpoint.commands();
            (Some(endpoint), None, None, conn, prefix.to_string())
        } else {
            let overflow = metrics.dropped.with_label_values(&["receive_queue_full"]);
            let (sharded, pushes) = shards::connect(scaling, move || overflow.inc()).await?;
            let conn = Commands::sharded(sharded.clone());
            (
                None,
                Some(sharded),
                Some(pushes),
                conn,
                shards::key_prefix(prefix),
            )
        };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(RedisBackend {
            node: rand::random::<u64>() >> 1,
            keys: Keys::new(prefix, &key_prefix),
            endpoint,
            shards,
            resubscribe: tokio::sync::Notify::new(),
            conn,
            interests: Mutex::new(Interests::default()),
            publish_tx,
            backlog: AtomicUsize::new(0),
            backlog_limit: scaling.publish_backlog_bytes,
            inbound,
            control,
            resync_pending: AtomicBool::new(false),
            announce_pending: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            pubsub_up: AtomicBool::new(true),
            beat_ok: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            shares: Shares::default(),
            metrics,
            send_version: AtomicU8::new(1),
            scripts: Scripts::new(),
            quiet: (scaling.skip_unheard
                && scaling.cluster_nodes.is_empty()
                && scaling.sentinels.is_empty())
            .then(|| Mutex::new(quiet::Quiet::default())),
            asks: tokio::sync::Notify::new(),
            syncs: tokio::sync::Notify::new(),
        });
        cluster.metrics.healthy.set(1);
        cluster.heartbeat().await?;
        tokio::spawn(pubsub::publisher(cluster.clone(), publish_rx));
        match (&cluster.shards, pushes) {
            (Some(shards), Some(pushes)) => {
                shards
                    .subscribe_first(&cluster.keys.control_topic())
                    .await?;
                tokio::spawn(pubsub::shard_reader(cluster.clone(), pushes));
                tokio::spawn(pubsub::resubscriber(cluster.clone(), shards.moved()));
            }
            _ => {
                // Like the sharded path: a node that answers `subscription_succeeded` before
                // its pub/sub connection listens would lose the first events it is sent.
                let (ready_tx, ready_rx) = oneshot::channel();
                tokio::spawn(pubsub::subscriber(cluster.clone(), ready_tx));
                match tokio::time::timeout(PUBSUB_START, ready_rx).await {
                    Ok(Ok(())) => {}
                    _ => {
                        return Err(ClusterError::Setup(format!(
                            "the cluster's pub/sub connection was not subscribed within {} s",
                            PUBSUB_START.as_secs()
                        )))
                    }
                }
            }
        }
        if cluster.quiet.is_some() {
            tokio::spawn(pubsub::asker(cluster.clone()));
            tokio::spawn(pubsub::syncer(cluster.clone()));
        }
        tokio::spawn(lease::heartbeats(cluster.clone()));
        info!(node = cluster.node, prefix, "joined the cluster");
        Ok((
            cluster,
            InboundQueues {
                events: inbound_rx,
                control: control_rx,
            },
        ))
    }

    pub fn node_id(&self) -> u64 {
        self.node
    }

    /// Ends this node's membership at shutdown: the lease stops being renewed and is marked
    /// expired, so the next survivor heartbeat (≤ 2 s) reaps what is left of this node's state
    /// and adopts its webhook journal.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = redis::cmd("ZADD")
            .arg(self.keys.nodes())
            .arg("XX")
            .arg(0)
            .arg(self.node)
            .query_async(&mut conn)
            .await;
        match result {
            Ok(_) => info!(node = self.node, "left the cluster"),
            Err(e) => warn!(error = %e, "could not end this node's lease; it expires on its own"),
        }
    }

    /// The pub/sub connection is (`true`) or is no longer subscribed.
    fn set_pubsub_up(&self, up: bool) {
        self.pubsub_up.store(up, Ordering::Release);
        self.update_health();
    }

    /// A heartbeat succeeded (`true`) or failed.
    fn set_beat_ok(&self, ok: bool) {
        self.beat_ok.store(ok, Ordering::Release);
        self.update_health();
    }

    fn update_health(&self) {
        let ok = self.pubsub_up.load(Ordering::Acquire) && self.beat_ok.load(Ordering::Acquire);
        if self.healthy.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                info!("cluster backend reachable again");
            } else {
                warn!("cluster backend unreachable; serving local clients only");
            }
        }
        self.metrics.healthy.set(i64::from(ok));
    }

    fn check(&self) -> Result<(), ClusterError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.dirty.store(true, Ordering::Release);
            Err(ClusterError::Unreachable)
        }
    }

    /// Records that a state change failed, so it is repaired by a resync.
    fn failed(&self, e: redis::RedisError) -> ClusterError {
        self.dirty.store(true, Ordering::Release);
        ClusterError::Command(e)
    }

    /// The wire version to send (the oldest any live node reads).
    fn send_version(&self) -> u8 {
        self.send_version.load(Ordering::Acquire)
    }
}
