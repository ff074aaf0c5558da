//! The Redis cluster backend: fan-out over pub/sub with interest-based routing, presence and
//! counts as shared state with per-node leases, cache channels shared through keys.
//!
//! Keys and channels (`P` = `[scaling] channel`, so several deployments can share one Redis):
//!
//! | name | type | content |
//! |---|---|---|
//! | `P#c#{app}#{channel}` | pub/sub | events for a channel; subscribed by nodes with local subscribers |
//! | `P#u#{app}#{user}` | pub/sub | events for a user's connections (`#server-to-user-`) |
//! | `P#ctl` | pub/sub | control messages (terminate), subscribed by every node |
//! | `P:nodes` | zset | node id → lease expiry (ms); refreshed every `HEARTBEAT` |
//! | `P:wire` | hash | node id → newest wire version it reads (absent: 1) |
//! | `P:s:{app}` | hash | channel → cluster-wide subscription count |
//! | `P:c` | hash | app → cluster-wide connection count |
//! | `P:node:{id}:s` / `:c` | hash | this node's share of the two above (to undo when it dies) |
//! | `P:p:{app}:{channel}:m` | hash | presence user → user_info |
//! | `P:p:{app}:{channel}:n` | hash | presence user → connections cluster-wide |
//! | `P:p:{app}:{channel}:o` | hash | `{node}|{user}` → that node's connections of the user |
//! | `P:node:{id}:p` | set | `{app}\n{channel}\n{user}` the node holds (to undo when it dies) |
//! | `P:cache:{app}:{channel}` | hash | `frame`, `data` of a cache channel's last event, with a TTL |
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::PubSubSink;
use redis::{PushInfo, PushKind, Script};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::endpoint::{Commands, Endpoint, COMMAND_TIMEOUT};
use super::shards;
use super::wire::{self, Received, WireMessage};
use super::{Adapter, ClusterError, ClusterState, Counted, Inbound, RemoteEvent, Target};
use crate::app::AppId;
use crate::channels::CachedEvent;
use crate::config::ScalingConfig;
use crate::presence::{Join, PresenceError, PresenceStore};
use crate::protocol::{message, ChannelName, PresenceMember, SocketId, UserId};
use crate::state::AppHub;
use crate::webhooks::RemovalHold;

/// How long a node's lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long start-up waits for the pub/sub connection's first subscription.
const PUBSUB_START: Duration = Duration::from_secs(10);
/// Heartbeat and reaper period.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Outgoing publishes queued before new ones are dropped (counted).
const PUBLISH_QUEUE: usize = 65_536;
/// Inbound messages queued for the server before new ones are dropped (counted).
pub const INBOUND_QUEUE: usize = 65_536;

const JOIN: &str = r"
local total = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if total == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {-1, {}, 0} end
redis.call('HINCRBY', KEYS[3], ARGV[2] .. '|' .. ARGV[1], 1)
total = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('SADD', KEYS[4], ARGV[5])
local first = 0
local rejoined = 0
if total == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]); first = 1
  rejoined = redis.call('DEL', KEYS[5])
end
return {first, redis.call('HGETALL', KEYS[1]), rejoined}
";

const LEAVE: &str = r"
local field = ARGV[2] .. '|' .. ARGV[1]
local c = redis.call('HINCRBY', KEYS[3], field, -1)
if c < 0 then redis.call('HDEL', KEYS[3], field); return 0 end
if c == 0 then redis.call('HDEL', KEYS[3], field); redis.call('SREM', KEYS[4], ARGV[3]) end
local t = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if t <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[4] ~= '' then redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5]) end
  return 1
end
return 0
";

/// Settles held removals falling due: for each hold key, 1 (and the hold is removed) when it
/// still holds the token given, 0 when a re-add took it away (or a newer hold replaced it).
const SETTLE: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then redis.call('DEL', k); out[i] = 1 else out[i] = 0 end
end
return out
";

/// Reaps one dead node's connections of one presence member; 1 when the user left the channel.
const REAP_MEMBER: &str = r"
local field = ARGV[1] .. '|' .. ARGV[2]
local c = tonumber(redis.call('HGET', KEYS[3], field) or '0')
redis.call('HDEL', KEYS[3], field)
if c <= 0 then return 0 end
local t = redis.call('HINCRBY', KEYS[2], ARGV[2], -c)
if t <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]); redis.call('HDEL', KEYS[1], ARGV[2]); return 1 end
return 0
";

/// Records the wire version this node reads and returns the oldest one a live node reads
/// (a node that records none reads only version 1).
const WIRE: &str = r"
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local oldest = tonumber(ARGV[3])
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local v = tonumber(redis.call('HGET', KEYS[2], n) or '1')
  if v < oldest then oldest = v end
end
return oldest
";

/// Adds `delta` (ARGV[3]) to a node's share and to the cluster-wide total; returns
/// `{total, rejoined}`. With a hold key (KEYS[3], a channel's subscriptions): the total going to
/// 0 holds the channel's `channel_vacated` (KEYS[3] set to the token ARGV[4] for ARGV[5] ms,
/// when given); going up from 0 takes the hold away (`rejoined` 1), cancelling both webhooks.
const COUNT: &str = r"
local n = redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
local g = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
local delta = tonumber(ARGV[3])
if g <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if KEYS[3] and delta < 0 and ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
  return {0, 0}
end
local rejoined = 0
if KEYS[3] and delta > 0 and g == delta then rejoined = redis.call('DEL', KEYS[3]) end
return {g, rejoined}
";

/// Reserves a connection under a cluster-wide maximum (ARGV[4], 0 = none); -1 when full.
const OPEN: &str = r"
local g = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local max = tonumber(ARGV[4])
if max > 0 and g >= max then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
";

struct Metrics {
    publishes: IntCounter,
    receives: IntCounter,
    reconnects: IntCounter,
    dropped: IntCounterVec,
    publish_queue: IntGauge,
    healthy: IntGauge,
    reaped: IntCounter,
    publish_lag: Histogram,
    receive_lag: Histogram,
}

/// Buckets of the lag histograms, in seconds.
const LAG_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Metrics {
    fn new(registry: &Registry, prefix: &str) -> Result<Metrics, prometheus::Error> {
        let o = |n: &str, h: &str| Opts::new(n, h).namespace(prefix.to_string());
        let lag = |n: &str, h: &str| {
            HistogramOpts::new(n, h)
                .namespace(prefix.to_string())
                .buckets(LAG_BUCKETS.to_vec())
        };
        let m = Metrics {
            publishes: IntCounter::with_opts(o(
                "cluster_publishes_total",
                "Messages published to other nodes",
            ))?,
            receives: IntCounter::with_opts(o(
                "cluster_receives_total",
                "Messages received from other nodes",
            ))?,
            reconnects: IntCounter::with_opts(o(
                "cluster_reconnects_total",
                "Pub/sub reconnections to the backend",
            ))?,
            dropped: IntCounterVec::new(
                o(
                    "cluster_dropped_total",
                    "Cluster messages not delivered, by reason",
                ),
                &["reason"],
            )?,
            publish_queue: IntGauge::with_opts(o(
                "cluster_publish_queue",
                "Messages waiting to be published",
            ))?,
            healthy: IntGauge::with_opts(o("cluster_healthy", "1 while the backend is reachable"))?,
            reaped: IntCounter::with_opts(o(
                "cluster_reaped_nodes_total",
                "Dead nodes whose state this node removed",
            ))?,
            publish_lag: Histogram::with_opts(lag(
                "cluster_publish_lag_seconds",
                "Time from queueing a message for other nodes to Redis acknowledging its PUBLISH",
            ))?,
            receive_lag: Histogram::with_opts(lag(
                "cluster_receive_lag_seconds",
                "Time from publishing on another node (its wall clock) to receipt here",
            ))?,
        };
        registry.register(Box::new(m.publishes.clone()))?;
        registry.register(Box::new(m.receives.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.publish_queue.clone()))?;
        registry.register(Box::new(m.healthy.clone()))?;
        registry.register(Box::new(m.reaped.clone()))?;
        registry.register(Box::new(m.publish_lag.clone()))?;
        registry.register(Box::new(m.receive_lag.clone()))?;
        Ok(m)
    }
}

/// Pub/sub subscriptions this node needs, with local reference counts.
#[derive(Default)]
struct Interests {
    counts: HashMap<String, usize>,
    sink: Option<PubSubSink>,
}

pub struct RedisCluster {
    node: u64,
    /// Prefix of pub/sub topics (`[scaling] channel`).
    prefix: String,
    /// Prefix of keys: the same, in braces on a Redis Cluster (one slot for every key).
    key_prefix: String,
    /// A standalone or Sentinel-managed Redis; `None` on a Redis Cluster.
    endpoint: Option<Arc<Endpoint>>,
    /// The Redis Cluster connection for sharded pub/sub; `None` otherwise.
    shards: Option<Arc<shards::Shards>>,
    /// On a Redis Cluster: wakes `resubscriber` (a shard connection closed).
    resubscribe: tokio::sync::Notify,
    conn: Commands,
    interests: tokio::sync::Mutex<Interests>,
    /// Topics wanted, readable without the async lock (for resubscription).
    wanted: Mutex<Vec<String>>,
    publish_tx: mpsc::Sender<Queued>,
    /// The wire version this node sends: the oldest any live node reads (`P:wire`).
    send_version: AtomicU8,
    inbound: mpsc::Sender<Inbound>,
    healthy: AtomicBool,
    /// Set by `leave`: the heartbeat stops renewing the lease.
    leaving: AtomicBool,
    /// Set after the first heartbeat: a later heartbeat that creates the lease anew means
    /// this node's shared state was lost.
    registered: AtomicBool,
    /// A change of shared state could not be recorded (Redis unreachable or failing): the next
    /// successful heartbeat publishes this node's state again.
    dirty: AtomicBool,
    metrics: Metrics,
    scripts: Scripts,
}

/// A presence member whose last connection's record was removed.
struct Gone {
    app: AppId,
    channel: String,
    user: String,
}

/// The counts kept per node and in total (see the table above).
#[derive(Clone, Copy)]
enum Tally {
    /// `P:c` app → connections.
    Connections,
    /// `P:s:{app}` channel → subscriptions.
    Subscriptions,
    /// `P:u:{app}` user → signed-in connections.
    Users,
}

/// A message waiting for the publisher task.
struct Queued {
    topic: String,
    payload: Bytes,
    queued: Instant,
}

struct Scripts {
    wire: Script,
    join: Script,
    leave: Script,
    reap_member: Script,
    count: Script,
    settle: Script,
    open: Script,
    adopt: Script,
}

mod journal;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn err(e: &redis::RedisError) -> ClusterError {
    ClusterError(e.to_string())
}

/// A removal hold as script arguments: its token and lifetime in ms (`""` and 0 for none).
fn hold_args(hold: Option<RemovalHold>) -> (String, u64) {
    hold.map_or((String::new(), 0), |h| {
        let ttl = u64::try_from(h.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        (h.token.to_string(), ttl)
    })
}

impl RedisCluster {
    /// Connects (failing fast when Redis cannot be reached at start-up) and starts the
    /// pub/sub reader, the publisher and the heartbeat/reaper tasks.
    pub async fn connect(
        scaling: &ScalingConfig,
        registry: &Registry,
        metric_prefix: &str,
    ) -> Result<(Arc<RedisCluster>, mpsc::Receiver<Inbound>), ClusterError> {
        let prefix = scaling.channel.as_str();
        let metrics =
            Metrics::new(registry, metric_prefix).map_err(|e| ClusterError(e.to_string()))?;
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
        let cluster = Arc::new(RedisCluster {
            node: rand::random::<u64>() >> 1,
            prefix: prefix.to_string(),
            key_prefix,
            endpoint,
            shards,
            resubscribe: tokio::sync::Notify::new(),
            conn,
            interests: tokio::sync::Mutex::new(Interests::default()),
            wanted: Mutex::new(Vec::new()),
            publish_tx,
            inbound,
            healthy: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            metrics,
            send_version: AtomicU8::new(1),
            scripts: Scripts {
                wire: Script::new(WIRE),
                join: Script::new(JOIN),
                leave: Script::new(LEAVE),
                reap_member: Script::new(REAP_MEMBER),
                count: Script::new(COUNT),
                settle: Script::new(SETTLE),
                open: Script::new(OPEN),
                adopt: Script::new(journal::ADOPT),
            },
        });
        cluster.metrics.healthy.set(1);
        cluster.heartbeat().await?;
        tokio::spawn(publisher(cluster.clone(), publish_rx));
        match (&cluster.shards, pushes) {
            (Some(shards), Some(pushes)) => {
                shards.subscribe_first(&cluster.control_topic()).await?;
                tokio::spawn(shard_reader(cluster.clone(), pushes));
                tokio::spawn(resubscriber(cluster.clone(), shards.moved()));
            }
            _ => {
                // Like the sharded path: a node that answers `subscription_succeeded` before
                // its pub/sub connection listens would lose the first events it is sent.
                let (ready_tx, ready_rx) = oneshot::channel();
                tokio::spawn(subscriber(cluster.clone(), ready_tx));
                match tokio::time::timeout(PUBSUB_START, ready_rx).await {
                    Ok(Ok(())) => {}
                    _ => {
                        return Err(ClusterError(format!(
                            "the cluster's pub/sub connection was not subscribed within {} s",
                            PUBSUB_START.as_secs()
                        )))
                    }
                }
            }
        }
        tokio::spawn(heartbeats(cluster.clone()));
        info!(node = cluster.node, prefix, "joined the cluster");
        Ok((cluster, inbound_rx))
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
            .arg(self.key("nodes"))
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

    fn topic(&self, app: &AppId, target: &Target) -> String {
        match target {
            Target::Channel(c) => format!("{}#c#{}#{}", self.prefix, app, c),
            Target::User(u) => format!("{}#u#{}#{}", self.prefix, app, u),
            Target::Watchers(u) => format!("{}#w#{}#{}", self.prefix, app, u),
        }
    }

    fn control_topic(&self) -> String {
        format!("{}#ctl", self.prefix)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{}", self.key_prefix, rest)
    }

    fn node_key(&self, node: u64, what: &str) -> String {
        format!("{}:node:{}:{}", self.key_prefix, node, what)
    }

    /// The marker that holds a channel's `channel_vacated` (see `RemovalHold`).
    fn vacated_hold_key(&self, app: &str, channel: &str) -> String {
        format!("{}:hold:v:{}:{}", self.key_prefix, app, channel)
    }

    /// The marker that holds a member's `member_removed` (see `RemovalHold`).
    fn member_hold_key(&self, app: &str, channel: &str, user: &str) -> String {
        format!("{}:hold:m:{}:{}\n{}", self.key_prefix, app, channel, user)
    }

    fn presence_keys(&self, app: &AppId, channel: &str) -> [String; 3] {
        let base = format!("{}:p:{}:{}", self.key_prefix, app, channel);
        [
            format!("{base}:m"),
            format!("{base}:n"),
            format!("{base}:o"),
        ]
    }

    fn set_healthy(&self, ok: bool) {
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
            Err(ClusterError("backend unreachable".into()))
        }
    }

    /// Records that a state change failed, so it is repaired by a resync.
    fn failed(&self, e: &redis::RedisError) -> ClusterError {
        self.dirty.store(true, Ordering::Release);
        err(e)
    }

    /// The send time to write into a message, when every live node reads wire version 2.
    fn stamp(&self) -> Option<u64> {
        (self.send_version.load(Ordering::Acquire) >= 2).then(now_ms)
    }

    fn enqueue(&self, topic: String, payload: Bytes) {
        let queued = Queued {
            topic,
            payload,
            queued: Instant::now(),
        };
        match self.publish_tx.try_send(queued) {
            Ok(()) => self.metrics.publish_queue.inc(),
            Err(_) => self
                .metrics
                .dropped
                .with_label_values(&["publish_queue_full"])
                .inc(),
        }
    }

    /// Refreshes this node's lease. A lease that had to be created anew means this node's
    /// shared state is gone (it was reaped, or Redis restarted): ask the server to resync.
    async fn heartbeat(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let added: i64 = redis::cmd("ZADD")
            .arg(self.key("nodes"))
            .arg(now_ms() + u64::try_from(LEASE.as_millis()).unwrap_or(10_000))
            .arg(self.node)
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        let mut inv = self.scripts.wire.prepare_invoke();
        inv.key(self.key("nodes"))
            .key(self.key("wire"))
            .arg(now_ms())
            .arg(self.node)
            .arg(wire::VERSION);
        let oldest: u8 = inv.invoke_async(&mut conn).await.map_err(|e| err(&e))?;
        let before = self.send_version.swap(oldest.max(1), Ordering::AcqRel);
        if before != oldest {
            info!(version = oldest, "cluster wire version");
        }
        let was_registered = self.registered.swap(true, Ordering::AcqRel);
        if added == 1 && was_registered {
            warn!("this node's cluster lease was gone; publishing its state again");
            let _ = self.inbound.try_send(Inbound::Resync { announce: true });
        } else if self.dirty.swap(false, Ordering::AcqRel) {
            warn!(
                "some cluster state changes were not recorded; publishing this node's state again"
            );
            let _ = self.inbound.try_send(Inbound::Resync { announce: false });
        }
        Ok(())
    }

    /// Claims and removes the state of nodes whose lease expired.
    async fn reap(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let dead: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("nodes"))
            .arg("-inf")
            .arg(now_ms())
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        for node in dead {
            let claimed: i64 = redis::cmd("ZREM")
                .arg(self.key("nodes"))
                .arg(node)
                .query_async(&mut conn)
                .await
                .map_err(|e| err(&e))?;
            if claimed == 1 {
                warn!(dead = node, "reaping a node whose lease expired");
                let _: i64 = redis::cmd("HDEL")
                    .arg(self.key("wire"))
                    .arg(node)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| err(&e))?;
                self.metrics.reaped.inc();
                // Its webhooks first: they were released before the departures reaping causes.
                self.adopt_journal(node).await?;
                let _ = self.reap_node(node, true).await?;
            }
        }
        Ok(())
    }

    /// Removes `node`'s contributions to the shared state. With `announce`, the transitions it
    /// causes are reported (member_removed broadcasts, vacated webhooks, offline watchers);
    /// without, it is this node clearing its own shares before publishing them again.
    async fn reap_node(&self, node: u64, announce: bool) -> Result<Vec<Gone>, ClusterError> {
        let mut gone = Vec::new();
        let mut conn = self.conn.clone();
        // Counts first, so that when clients see `member_removed` the HTTP API agrees.
        // Connection counts.
        let conns: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.node_key(node, "c"))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        for (app, count) in conns {
            let _ = self
                .tally(Tally::Connections, node, &app, "", -count)
                .await?;
        }
        // Subscription counts.
        let subs: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.node_key(node, "s"))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        for (field, count) in subs {
            let Some((app, channel)) = field.split_once('\n') else {
                continue;
            };
            let total = self
                .tally(Tally::Subscriptions, node, app, channel, -count)
                .await?;
            if total == 0 && announce {
                let _ = self.inbound.try_send(Inbound::ChannelGone {
                    app: AppId(app.into()),
                    channel: channel.to_string(),
                });
            }
        }
        // Signed-in users.
        let users: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.node_key(node, "u"))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        for (field, count) in users {
            let Some((app, user)) = field.split_once('\n') else {
                continue;
            };
            let total = self.tally(Tally::Users, node, app, user, -count).await?;
            if total == 0 && announce {
                let _ = self.inbound.try_send(Inbound::UserGone {
                    app: AppId(app.into()),
                    user: user.to_string(),
                });
            }
        }
        // Presence members.
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.node_key(node, "p"))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        for entry in entries {
            let mut parts = entry.splitn(3, '\n');
            let (Some(app), Some(channel), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let app = AppId(app.into());
            let [m, n, o] = self.presence_keys(&app, channel);
            let mut inv = self.scripts.reap_member.prepare_invoke();
            inv.key(&m).key(&n).key(&o).arg(node).arg(user);
            let left: i64 = inv.invoke_async(&mut conn).await.map_err(|e| err(&e))?;
            if left == 1 && !announce {
                gone.push(Gone {
                    app: app.clone(),
                    channel: channel.to_string(),
                    user: user.to_string(),
                });
            }
            if left == 1 && announce {
                let frame = message::member_removed(channel, user);
                self.publish(RemoteEvent {
                    app: app.clone(),
                    target: Target::Channel(channel.to_string()),
                    frame: frame.clone(),
                    except: None,
                });
                let _ = self.inbound.try_send(Inbound::MemberGone {
                    app,
                    channel: channel.to_string(),
                    user: user.to_string(),
                    frame,
                });
            }
        }
        let _: i64 = redis::cmd("DEL")
            .arg(self.node_key(node, "p"))
            .arg(self.node_key(node, "s"))
            .arg(self.node_key(node, "c"))
            .arg(self.node_key(node, "u"))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        Ok(gone)
    }

    /// Adds `delta` to `node`'s share of a tally and to the cluster total; returns the total.
    async fn tally(
        &self,
        what: Tally,
        node: u64,
        app: &str,
        item: &str,
        delta: i64,
    ) -> Result<i64, ClusterError> {
        Ok(self.tally_held(what, node, app, item, delta, None).await?.0)
    }

    /// `tally`, holding (or taking away) the hold at `hold.0` with the token of `hold.1` as the
    /// total leaves or reaches 0 (see `COUNT`); returns the total and whether a hold was taken.
    async fn tally_held(
        &self,
        what: Tally,
        node: u64,
        app: &str,
        item: &str,
        delta: i64,
        hold: Option<(String, Option<RemovalHold>)>,
    ) -> Result<(i64, bool), ClusterError> {
        let (global, field, node_key, node_field) = match what {
            Tally::Connections => (
                self.key("c"),
                app.to_string(),
                self.node_key(node, "c"),
                app.to_string(),
            ),
            Tally::Subscriptions => (
                self.key(&format!("s:{app}")),
                item.to_string(),
                self.node_key(node, "s"),
                format!("{app}\n{item}"),
            ),
            Tally::Users => (
                self.key(&format!("u:{app}")),
                item.to_string(),
                self.node_key(node, "u"),
                format!("{app}\n{item}"),
            ),
        };
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.count.prepare_invoke();
        inv.key(global)
            .key(node_key)
            .arg(field)
            .arg(node_field)
            .arg(delta);
        if let Some((key, hold)) = hold {
            let (token, ttl) = hold_args(hold);
            inv.key(key).arg(token).arg(ttl);
        }
        let (total, rejoined): (i64, i64) =
            inv.invoke_async(&mut conn).await.map_err(|e| err(&e))?;
        Ok((total, rejoined == 1))
    }

    /// Takes a local reference on `target`; the first one subscribes (and waits for Redis to
    /// confirm, so a `subscription_succeeded` sent after it means cluster events will arrive).
    async fn acquire_topic(&self, app: &AppId, target: &Target) {
        let topic = self.topic(app, target);
        let mut i = self.interests.lock().await;
        let count = i.counts.entry(topic.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.wanted.lock().push(topic.clone());
            if let Some(shards) = &self.shards {
                if let Err(e) = shards.subscribe(&topic, true).await {
                    warn!(%topic, error = %e, "subscribing failed; it is retried after the connection is replaced");
                }
            } else if let Some(sink) = i.sink.as_mut() {
                if tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&topic))
                    .await
                    .is_err()
                {
                    warn!(%topic, "SUBSCRIBE timed out; the reconnect loop will retry");
                }
            }
        }
    }

    /// Drops a local reference on `target`; the last one unsubscribes.
    async fn release_topic(&self, app: &AppId, target: &Target) {
        let topic = self.topic(app, target);
        let mut i = self.interests.lock().await;
        let Some(count) = i.counts.get_mut(&topic) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            i.counts.remove(&topic);
            self.wanted.lock().retain(|t| t != &topic);
            if let Some(shards) = &self.shards {
                let _ = shards.subscribe(&topic, false).await;
            } else if let Some(sink) = i.sink.as_mut() {
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&topic)).await;
            }
        }
    }

    fn handle(&self, payload: &[u8]) {
        self.metrics.receives.inc();
        let Received {
            origin,
            sent_at,
            message,
        } = match wire::decode(&Bytes::copy_from_slice(payload)) {
            Ok(m) => m,
            Err(e) => {
                self.metrics
                    .dropped
                    .with_label_values(&["undecodable"])
                    .inc();
                warn!(error = %e, "ignoring a cluster message");
                return;
            }
        };
        // The publishing node already applied its own messages.
        if origin == self.node {
            return;
        }
        let inbound = match message {
            WireMessage::Event(event) => {
                if let Some(sent) = sent_at {
                    // Another host's clock: only as good as the clocks' synchronization.
                    let lag_ms = now_ms().saturating_sub(sent);
                    self.metrics.receive_lag.observe(lag_ms as f64 / 1000.0);
                }
                Inbound::Event(event)
            }
            WireMessage::Terminate {
                app,
                user,
                presence,
            } => Inbound::Terminate {
                app,
                user,
                presence,
            },
        };
        if self.inbound.try_send(inbound).is_err() {
            self.metrics
                .dropped
                .with_label_values(&["inbound_queue_full"])
                .inc();
        }
    }
}

async fn publisher(cluster: Arc<RedisCluster>, mut rx: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(128);
    while rx.recv_many(&mut batch, 128).await > 0 {
        cluster.metrics.publish_queue.sub(batch.len() as i64);
        if !cluster.healthy.load(Ordering::Acquire) {
            cluster
                .metrics
                .dropped
                .with_label_values(&["backend_down"])
                .inc_by(batch.len() as u64);
            batch.clear();
            continue;
        }
        let sent = match &cluster.shards {
            Some(shards) => {
                let messages = batch.iter().map(|q| (q.topic.as_str(), q.payload.as_ref()));
                shards.publish(messages).await
            }
            None => {
                let mut pipe = redis::pipe();
                for q in &batch {
                    pipe.cmd("PUBLISH")
                        .arg(&q.topic)
                        .arg(q.payload.as_ref())
                        .ignore();
                }
                let mut conn = cluster.conn.clone();
                pipe.query_async::<()>(&mut conn).await
            }
        };
        match sent {
            Ok(()) => {
                cluster.metrics.publishes.inc_by(batch.len() as u64);
                for q in &batch {
                    cluster
                        .metrics
                        .publish_lag
                        .observe(q.queued.elapsed().as_secs_f64());
                }
            }
            Err(e) => {
                warn!(error = %e, lost = batch.len(), "publishing to the cluster failed");
                cluster
                    .metrics
                    .dropped
                    .with_label_values(&["publish_failed"])
                    .inc_by(batch.len() as u64);
            }
        }
        batch.clear();
    }
}

/// On a Redis Cluster: delivers the sharded messages the connection pushes (`shards.rs`).
async fn shard_reader(cluster: Arc<RedisCluster>, mut pushes: mpsc::Receiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                // [topic, payload]
                if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                    cluster.handle(payload);
                }
            }
            PushKind::Disconnection => {
                // A shard's connection closed (its master died, or the link dropped): what
                // was published meanwhile is lost and its subscriptions are gone.
                cluster.metrics.reconnects.inc();
                cluster.resubscribe.notify_one();
            }
            _ => {}
        }
    }
}

/// How long subscriptions are renewed after they first all succeeded following a lost shard.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(10);

/// On a Redis Cluster: after a shard's connection closed or the connection was replaced,
/// subscribes to every wanted topic again, one command per topic so each goes to the shard
/// owning its slot, until all succeed (a failed master's slots answer only once a replica is
/// promoted; failures meanwhile make `Shards` replace the connection). One task, so a
/// replacement that comes while it works is never missed: the watch and the `Notify` both
/// remember it and the loop runs again. The crate's own re-subscription cannot be relied on:
/// it sends the topics of several slots in one command.
async fn resubscriber(cluster: Arc<RedisCluster>, mut moved: tokio::sync::watch::Receiver<u64>) {
    let Some(shards) = cluster.shards.clone() else {
        return;
    };
    loop {
        tokio::select! {
            changed = moved.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = cluster.resubscribe.notified() => {}
        }
        // The new connection has no subscriptions, and changes may have been lost.
        cluster.dirty.store(true, Ordering::Release);
        let mut delay = Duration::from_millis(250);
        // Subscribing succeeds as soon as the crate has a node connection for the slot, but
        // while a failover settles the crate may still replace that connection, losing what
        // was subscribed on it: keep subscribing (idempotent on one connection) until a
        // quiet spell has passed.
        let mut settled_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(delay).await;
            moved.mark_unchanged();
            let mut topics = cluster.wanted.lock().clone();
            topics.push(cluster.control_topic());
            let attempts = topics.iter().map(|topic| shards.subscribe(topic, true));
            let failed = futures_util::future::join_all(attempts)
                .await
                .iter()
                .filter(|r| r.is_err())
                .count();
            if failed > 0 {
                debug!(failed, "subscribing again on the Redis Cluster; retrying");
                settled_at = None;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            let now = tokio::time::Instant::now();
            let since = *settled_at.get_or_insert(now);
            if now.duration_since(since) >= RESUBSCRIBE_SETTLE {
                info!(
                    topics = topics.len(),
                    "subscribed again on the Redis Cluster after a lost connection"
                );
                break;
            }
            delay = Duration::from_secs(1);
        }
    }
}

/// Keeps one pub/sub connection, resubscribing every wanted topic after each reconnect.
/// `ready` is told when the first subscription is in place.
async fn subscriber(cluster: Arc<RedisCluster>, ready: oneshot::Sender<()>) {
    let Some(endpoint) = cluster.endpoint.clone() else {
        return;
    };
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    let mut moved = endpoint.moved();
    loop {
        moved.mark_unchanged();
        match endpoint.pubsub().await {
            Ok(pubsub) => {
                let (mut sink, mut stream) = pubsub.split();
                let mut topics = cluster.wanted.lock().clone();
                topics.push(cluster.control_topic());
                let mut ok = sink.subscribe(&topics).await.is_ok();
                if ok {
                    // Topics wanted while we were subscribing are caught by `acquire`, which
                    // waits for this lock.
                    let mut i = cluster.interests.lock().await;
                    let now: Vec<String> = cluster.wanted.lock().clone();
                    let missing: Vec<&String> =
                        now.iter().filter(|t| !topics.contains(t)).collect();
                    if !missing.is_empty() {
                        ok = sink.subscribe(&missing).await.is_ok();
                    }
                    i.sink = Some(sink);
                }
                if ok {
                    if !first {
                        cluster.metrics.reconnects.inc();
                        info!("cluster pub/sub reconnected and resubscribed");
                        // Changes made while Redis was unreachable were not recorded.
                        let _ = cluster
                            .inbound
                            .try_send(Inbound::Resync { announce: false });
                    }
                    first = false;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    backoff = Duration::from_millis(100);
                    cluster.set_healthy(true);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => cluster.handle(msg.get_payload_bytes()),
                                None => {
                                    warn!("cluster pub/sub connection lost");
                                    break;
                                }
                            },
                            // A failover: the old master may still accept the connection
                            // (demoted to a replica) but no longer carries every publish.
                            _ = moved.changed() => {
                                info!("the Redis master moved; moving the pub/sub connection");
                                break;
                            }
                        }
                    }
                }
                cluster.interests.lock().await.sink = None;
                cluster.set_healthy(false);
            }
            Err(e) => {
                cluster.set_healthy(false);
                warn!(error = %e, "cannot reach the cluster backend");
            }
        }
        // A failover found the new master: no need to wait.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = moved.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn heartbeats(cluster: Arc<RedisCluster>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cluster.leaving.load(Ordering::Acquire) {
            return;
        }
        let result = async {
            let beat = cluster.heartbeat().await;
            // A Redis Cluster connection has no pub/sub reader to tell: the heartbeat does.
            if cluster.shards.is_some() {
                cluster.set_healthy(beat.is_ok());
            }
            beat?;
            cluster.reap().await?;
            cluster.adopt_orphans().await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "cluster heartbeat failed");
        }
    }
}

#[async_trait]
impl Adapter for RedisCluster {
    fn publish(&self, event: RemoteEvent) {
        let topic = self.topic(&event.app, &event.target);
        self.enqueue(topic, wire::encode_event(self.node, &event, self.stamp()));
    }

    async fn acquire(&self, app: &AppId, target: &Target) {
        self.acquire_topic(app, target).await;
    }

    async fn release(&self, app: &AppId, target: &Target) {
        self.release_topic(app, target).await;
    }

    fn terminate(&self, app: &AppId, user: &str, presence: bool) {
        self.enqueue(
            self.control_topic(),
            wire::encode_terminate(self.node, app, user, presence, self.stamp()),
        );
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

#[async_trait]
impl ClusterState for RedisCluster {
    async fn subscribing(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<Counted>, ClusterError> {
        self.count(hub, channel, 1, None).await.map(Some)
    }

    async fn unsubscribed(
        &self,
        hub: &AppHub,
        channel: &str,
        _local: usize,
        hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError> {
        Ok(self.count(hub, channel, -1, hold).await?.total)
    }

    async fn subscription_count(&self, hub: &AppHub, channel: &str) -> Result<u64, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.key(&format!("s:{}", hub.app.id)))
            .arg(channel)
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        Ok(n.unwrap_or(0))
    }

    async fn occupied(
        &self,
        hub: &AppHub,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let all: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.key(&format!("s:{}", hub.app.id)))
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        Ok(all
            .into_iter()
            .filter(|(c, n)| *n > 0 && c.starts_with(prefix) && !c.starts_with('#'))
            .map(|(c, n)| (c, n.unsigned_abs()))
            .collect())
    }

    async fn open_connection(&self, hub: &AppHub, max: Option<u64>) -> Result<bool, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let app = hub.app.id.as_str();
        let mut inv = self.scripts.open.prepare_invoke();
        inv.key(self.key("c"))
            .key(self.node_key(self.node, "c"))
            .arg(app)
            .arg(app)
            .arg(1)
            .arg(max.unwrap_or(0));
        let n: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(n >= 0)
    }

    async fn close_connection(&self, hub: &AppHub) -> Result<(), ClusterError> {
        self.check()?;
        let app = hub.app.id.as_str();
        self.tally(Tally::Connections, self.node, app, "", -1)
            .await?;
        Ok(())
    }

    async fn connections(&self, hub: &AppHub) -> Result<u64, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.key("c"))
            .arg(hub.app.id.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        Ok(n.unwrap_or(0))
    }

    async fn store_cache(&self, hub: &AppHub, channel: &str, cached: &CachedEvent) -> bool {
        // Unreachable: the trigger is answered at once rather than after a command timeout.
        if !self.healthy.load(Ordering::Acquire) {
            debug!("cache channel event not stored: the cluster backend is unreachable");
            return true;
        }
        let key = self.key(&format!("cache:{}:{}", hub.app.id, channel));
        let ttl = u64::try_from(hub.app.settings.cache_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("frame")
            .arg(cached.frame.as_ref())
            .arg("data")
            .arg(&*cached.data)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl)
            .ignore();
        // Not kept locally when Redis fails: a node-local copy would later hide newer events
        // that other nodes stored.
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            warn!(error = %e, "storing a cache channel event failed");
        }
        true
    }

    async fn cached(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<CachedEvent>, ClusterError> {
        self.check()?;
        let key = self.key(&format!("cache:{}:{}", hub.app.id, channel));
        let mut conn = self.conn.clone();
        let (frame, data, ttl): (Option<Vec<u8>>, Option<String>, i64) = redis::pipe()
            .cmd("HGET")
            .arg(&key)
            .arg("frame")
            .cmd("HGET")
            .arg(&key)
            .arg("data")
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        let (Some(frame), Some(data)) = (frame, data) else {
            return Ok(None);
        };
        if ttl <= 0 {
            return Ok(None);
        }
        Ok(Some(CachedEvent {
            frame: Bytes::from(frame),
            data: data.into(),
            expires: std::time::Instant::now() + Duration::from_millis(ttl.unsigned_abs()),
        }))
    }

    async fn signed_in(
        &self,
        hub: &AppHub,
        user: &str,
        delta: i64,
        _local: usize,
    ) -> Result<u64, ClusterError> {
        self.check()?;
        let total = self
            .tally(Tally::Users, self.node, hub.app.id.as_str(), user, delta)
            .await?;
        Ok(total.max(0).unsigned_abs())
    }

    async fn online(&self, hub: &AppHub, users: &[String]) -> Result<Vec<bool>, ClusterError> {
        self.check()?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let counts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.key(&format!("u:{}", hub.app.id)))
            .arg(users)
            .query_async(&mut conn)
            .await
            .map_err(|e| err(&e))?;
        Ok(counts.into_iter().map(|c| c.unwrap_or(0) > 0).collect())
    }
}

impl RedisCluster {
    async fn count(
        &self,
        hub: &AppHub,
        channel: &str,
        delta: i64,
        hold: Option<RemovalHold>,
    ) -> Result<Counted, ClusterError> {
        self.check()?;
        let app = hub.app.id.as_str();
        let hold_key = self.vacated_hold_key(app, channel);
        let (total, rejoined) = self
            .tally_held(
                Tally::Subscriptions,
                self.node,
                app,
                channel,
                delta,
                Some((hold_key, hold)),
            )
            .await?;
        Ok(Counted {
            total: total.max(0).unsigned_abs(),
            rejoined,
        })
    }

    /// Publishes this node's local state again after it was lost (see `Inbound::Resync`):
    /// connection and subscription counts and presence memberships.
    /// `announce`: the state was lost and others saw this node's members leave, so members
    /// that come back are announced with `member_added`.
    pub async fn resync(&self, hubs: &[Arc<AppHub>], announce: bool) -> Result<(), ClusterError> {
        // Whatever is left of this node's shares (after a mere disconnection: possibly stale,
        // since changes made while Redis was unreachable were lost) is replaced as a whole.
        let gone = self.reap_node(self.node, false).await?;
        let mut back = std::collections::HashSet::new();
        for hub in hubs {
            let app = hub.app.id.as_str();
            let n = hub.connection_count();
            if n > 0 {
                let _ = self
                    .tally(
                        Tally::Connections,
                        self.node,
                        app,
                        "",
                        i64::try_from(n).unwrap_or(i64::MAX),
                    )
                    .await?;
            }
            for (channel, count) in hub.channels.occupied_all() {
                let _ = self
                    .tally(
                        Tally::Subscriptions,
                        self.node,
                        app,
                        channel.as_str(),
                        i64::try_from(count).unwrap_or(i64::MAX),
                    )
                    .await?;
            }
            for (user, n) in hub.users.counts() {
                let _ = self
                    .tally(
                        Tally::Users,
                        self.node,
                        app,
                        user.as_str(),
                        i64::try_from(n).unwrap_or(i64::MAX),
                    )
                    .await?;
            }
            for (channel, socket, member) in hub.channels.presence_members() {
                let joined = self
                    .join(&hub.app.id, &channel, &member, socket, usize::MAX)
                    .await
                    .map_err(|e| ClusterError(e.0))?;
                back.insert((
                    hub.app.id.clone(),
                    channel.to_string(),
                    member.user_id.to_string(),
                ));
                if announce && matches!(joined, Join::Joined { first: true, .. }) {
                    let event = RemoteEvent {
                        app: hub.app.id.clone(),
                        target: Target::Channel(channel.to_string()),
                        frame: message::member_added(
                            channel.as_str(),
                            member.user_id.as_str(),
                            member.user_info.as_deref(),
                        ),
                        except: Some(socket),
                    };
                    self.publish(event.clone());
                    let _ = self.inbound.try_send(Inbound::Event(event));
                }
            }
        }
        // Members who left while their departure could not be recorded: tell everyone now,
        // unless another node still has them.
        for g in gone {
            if back.contains(&(g.app.clone(), g.channel.clone(), g.user.clone())) {
                continue;
            }
            let still_there = self
                .members(&g.app, &g.channel)
                .await
                .map_err(|e| ClusterError(e.0))?
                .iter()
                .any(|m| m.user_id.as_str() == g.user);
            if still_there {
                continue;
            }
            let frame = message::member_removed(&g.channel, &g.user);
            self.publish(RemoteEvent {
                app: g.app.clone(),
                target: Target::Channel(g.channel.clone()),
                frame: frame.clone(),
                except: None,
            });
            let _ = self.inbound.try_send(Inbound::MemberGone {
                app: g.app,
                channel: g.channel,
                user: g.user,
                frame,
            });
        }
        self.dirty.store(false, Ordering::Release);
        info!("cluster state published again");
        Ok(())
    }
}

/// The roster from `(user, user_info)` pairs (a hash read with `HGETALL`).
fn roster<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<PresenceMember> {
    let mut out = Vec::with_capacity(pairs.size_hint().0);
    for (user, info) in pairs {
        let Some(user_id) = UserId::new(user) else {
            continue;
        };
        let user_info = if info == "null" {
            None
        } else {
            serde_json::value::RawValue::from_string(info.to_string())
                .ok()
                .map(Arc::from)
        };
        out.push(PresenceMember { user_id, user_info });
    }
    out
}

#[async_trait]
impl PresenceStore for RedisCluster {
    async fn join(
        &self,
        app: &AppId,
        channel: &ChannelName,
        member: &PresenceMember,
        _socket: SocketId,
        max_members: usize,
    ) -> Result<Join, PresenceError> {
        self.check().map_err(|e| PresenceError(e.0))?;
        let [m, n, o] = self.presence_keys(app, channel.as_str());
        let info = member.user_info.as_ref().map_or("null", |i| i.get());
        let entry = format!("{}\n{}\n{}", app, channel, member.user_id);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(&m)
            .key(&n)
            .key(&o)
            .key(self.node_key(self.node, "p"))
            .key(self.member_hold_key(app.as_str(), channel.as_str(), member.user_id.as_str()))
            .arg(member.user_id.as_str())
            .arg(self.node)
            .arg(info)
            .arg(max_members.min(i64::MAX as usize))
            .arg(entry);
        // From a script the hash comes as a flat list (RESP2 inside Lua) on every protocol.
        let (first, flat, rejoined): (i64, Vec<String>, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| PresenceError(self.failed(&e).0))?;
        if first < 0 {
            return Ok(Join::Full);
        }
        Ok(Join::Joined {
            first: first == 1,
            rejoined: rejoined == 1,
            roster: roster(
                flat.chunks_exact(2)
                    .map(|pair| (pair[0].as_str(), pair[1].as_str())),
            ),
        })
    }

    async fn leave(
        &self,
        app: &AppId,
        channel: &ChannelName,
        user: &UserId,
        _socket: SocketId,
        hold: Option<RemovalHold>,
    ) -> Result<bool, PresenceError> {
        self.check().map_err(|e| PresenceError(e.0))?;
        let [m, n, o] = self.presence_keys(app, channel.as_str());
        let entry = format!("{}\n{}\n{}", app, channel, user);
        let (token, ttl) = hold_args(hold);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(&m)
            .key(&n)
            .key(&o)
            .key(self.node_key(self.node, "p"))
            .key(self.member_hold_key(app.as_str(), channel.as_str(), user.as_str()))
            .arg(user.as_str())
            .arg(self.node)
            .arg(entry)
            .arg(token)
            .arg(ttl);
        let last: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| PresenceError(self.failed(&e).0))?;
        Ok(last == 1)
    }

    async fn members(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Vec<PresenceMember>, PresenceError> {
        self.check().map_err(|e| PresenceError(e.0))?;
        let [m, _, _] = self.presence_keys(app, channel);
        let mut conn = self.conn.clone();
        // Pairs, not a flat list: a Redis Cluster connection speaks RESP3, where a hash is a map.
        let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&m)
            .query_async(&mut conn)
            .await
            .map_err(|e| PresenceError(e.to_string()))?;
        Ok(roster(pairs.iter().map(|(u, i)| (u.as_str(), i.as_str()))))
    }
}
