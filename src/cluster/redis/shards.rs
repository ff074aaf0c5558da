//! Redis Cluster as the backend (`[scaling] cluster_nodes`): commands go through the crate's
//! cluster connection, which routes each to the shard owning its key's slot and follows
//! `MOVED`/`ASK` and failovers; pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+), so
//! each topic lives on the shard of its own slot and pub/sub load spreads over the shards. A
//! cluster without it (Redis 6.2) gets classic pub/sub through the same connection.
//!
//! The connection speaks RESP3: sharded messages arrive as pushes, which the crate hands to a
//! callback; the callback forwards them into a bounded queue ([`PUSH_QUEUE`]; overflow drops
//! the newest message and counts it) read by `pubsub::shard_reader`. After a lost shard the
//! connection is replaced and `pubsub::resubscriber` subscribes again (see [`Shards`]).
//!
//! Keys: every key Resound uses starts with the prefix in braces (`{resound}:...`), a hash
//! tag, so all of them share one slot and the Lua scripts that touch several keys stay legal.
//! The shared state therefore lives on one shard; the publish traffic, which is the load that
//! grows with the cluster, is what spreads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, RedisError, RedisResult};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use super::endpoint::{certificates, COMMAND_TIMEOUT};
use crate::cluster::ClusterError;
use crate::config::{mask_url_password, ScalingConfig};

/// Sharded messages waiting for the reader.
pub(super) const PUSH_QUEUE: usize = 65_536;

/// The key prefix for `channel` on a Redis Cluster: a hash tag, so all keys share a slot.
pub(super) fn key_prefix(channel: &str) -> String {
    format!("{{{channel}}}")
}

/// Pause before a new connection is made after a shard was lost, and between attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// The Redis Cluster connection, replaced as a whole when a shard is lost: the crate keeps
/// reconnecting to a dead master's address instead of asking the cluster where its slots went,
/// so a fresh connection (which reads the slot map from the live nodes) is what follows a
/// failover. `moved` ticks after each replacement, so the subscriptions are made again.
pub(super) struct Shards {
    client: ClusterClient,
    /// The connection and its generation (how many times it was replaced).
    current: Mutex<(u64, ClusterConnection)>,
    stale: Notify,
    moved: watch::Sender<u64>,
    /// Whether the cluster has sharded pub/sub (Redis 7+); classic pub/sub otherwise.
    sharded: AtomicBool,
}

impl Shards {
    /// A handle on the current connection (cheap: it is a channel to the crate's task), with
    /// its generation for `failed`.
    pub(super) fn conn(&self) -> (u64, ClusterConnection) {
        let current = self.current.lock();
        (current.0, current.1.clone())
    }

    /// Subscribes to (`on`) or unsubscribes from `topic`: sharded where the cluster has it,
    /// classic otherwise. Bounded by `COMMAND_TIMEOUT`.
    pub(super) async fn subscribe(&self, topic: &str, on: bool) -> Result<(), ClusterError> {
        let (generation, mut conn) = self.conn();
        let call = async {
            match (self.sharded.load(Ordering::Acquire), on) {
                (true, true) => conn.ssubscribe(topic).await,
                (true, false) => conn.sunsubscribe(topic).await,
                (false, true) => conn.subscribe(topic).await,
                (false, false) => conn.unsubscribe(topic).await,
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
            Ok(result) => result.map_err(|e| {
                self.failed(generation, &e);
                ClusterError::Command(e)
            }),
            Err(_) => Err(ClusterError::Setup("subscribing timed out".into())),
        }
    }

    /// Subscribes to the first topic (the control topic) at start-up, finding out whether the
    /// cluster has sharded pub/sub: Redis 6.2 answers `SSUBSCRIBE` with "unknown command".
    pub(super) async fn subscribe_first(&self, topic: &str) -> Result<(), ClusterError> {
        match self.subscribe(topic, true).await {
            Err(ClusterError::Command(e)) if e.to_string().contains("unknown command") => {
                self.sharded.store(false, Ordering::Release);
                warn!("this Redis Cluster has no sharded pub/sub (Redis < 7): using classic pub/sub, which every shard carries");
                self.subscribe(topic, true).await
            }
            other => other,
        }
    }

    /// Publishes `(topic, payload)` messages: one `SPUBLISH` (or `PUBLISH` without sharded
    /// pub/sub) per message, each to the shard of its topic (a pipeline cannot cross slots),
    /// all in flight together on the multiplexed connections. Fails if any failed.
    pub(super) async fn publish<'a>(
        &self,
        messages: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> RedisResult<()> {
        let command = if self.sharded.load(Ordering::Acquire) {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let (generation, conn) = self.conn();
        let sends = messages.map(|(topic, payload)| {
            let mut conn = conn.clone();
            async move {
                redis::cmd(command)
                    .arg(topic)
                    .arg(payload)
                    .query_async::<()>(&mut conn)
                    .await
            }
        });
        let sent: RedisResult<()> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect();
        if let Err(e) = &sent {
            self.failed(generation, e);
        }
        sent
    }

    /// Reports a command that failed on the connection of generation `generation`: one that
    /// suggests a shard is gone starts a replacement, unless the connection it used was
    /// already replaced (a fresh connection is not thrown away for an old one's failure).
    pub(super) fn failed(&self, generation: u64, e: &RedisError) {
        let lost = e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped();
        if lost && self.current.lock().0 == generation {
            self.stale.notify_one();
        }
    }

    /// Changes each time the connection was replaced.
    pub(super) fn moved(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }
}

/// Replaces the connection after a lost shard, until a new one could be made. A new
/// connection made before the cluster promoted a replica still routes to the dead master;
/// its failures ask for another replacement, so this converges once the cluster has.
async fn follow(shards: Arc<Shards>) {
    loop {
        shards.stale.notified().await;
        loop {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            let made =
                tokio::time::timeout(COMMAND_TIMEOUT * 3, shards.client.get_async_connection())
                    .await;
            match made {
                Ok(Ok(conn)) => {
                    {
                        let mut current = shards.current.lock();
                        *current = (current.0 + 1, conn);
                    }
                    shards.moved.send_modify(|n| *n += 1);
                    info!("reconnected to the Redis Cluster after a lost shard");
                    break;
                }
                Ok(Err(e)) => warn!(error = %e, "reconnecting to the Redis Cluster failed"),
                Err(_) => warn!("reconnecting to the Redis Cluster timed out"),
            }
        }
    }
}

/// Connects to the cluster named by `s.cluster_nodes` (any reachable seed will do) and returns
/// the connection and the queue its sharded messages arrive on. `dropped` is called for each
/// message the full queue refused.
pub(super) async fn connect(
    s: &ScalingConfig,
    dropped: impl Fn() + Send + Sync + 'static,
) -> Result<(Arc<Shards>, mpsc::Receiver<PushInfo>), ClusterError> {
    let described: Vec<String> = s
        .cluster_nodes
        .iter()
        .map(|u| mask_url_password(u))
        .collect();
    let described = described.join(", ");
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ClusterError::Setup(format!("Redis Cluster {described}: {what}: {e}"))
    };
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let mut builder = ClusterClientBuilder::new(s.cluster_nodes.clone())
        .use_protocol(ProtocolVersion::RESP3)
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        .retries(3)
        .push_sender(move |push: PushInfo| {
            if tx.try_send(push).is_err() {
                dropped();
            }
            Ok::<(), redis::aio::SendError>(())
        });
    if let Some(certs) = certificates(s.tls_ca_file.as_deref())? {
        builder = builder.certs(certs);
    }
    let client = builder
        .build()
        .map_err(|e| failed("invalid settings", &e))?;
    let conn = tokio::time::timeout(COMMAND_TIMEOUT * 3, client.get_async_connection())
        .await
        .map_err(|_| failed("connecting", &"timed out"))?
        .map_err(|e| failed("connecting", &e))?;
    let shards = Arc::new(Shards {
        client,
        current: Mutex::new((0, conn)),
        stale: Notify::new(),
        moved: watch::channel(0).0,
        sharded: AtomicBool::new(true),
    });
    tokio::spawn(follow(shards.clone()));
    Ok((shards, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_is_a_hash_tag() {
        assert_eq!(key_prefix("resound"), "{resound}");
    }
}
