//! Redis Cluster as the backend (`[scaling] cluster_nodes`): commands go through the crate's
//! cluster connection, which routes each to the shard owning its key's slot and follows
//! `MOVED`/`ASK` and failovers; pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+), so
//! each topic lives on the shard of its own slot and pub/sub load spreads over the shards. A
//! cluster without it (Redis 6.2) gets classic pub/sub through the same connection.
//!
//! The connection speaks RESP3: sharded messages arrive as pushes, which the crate hands to a
//! callback; the callback forwards them into a bounded queue ([`PUSH_QUEUE`]; overflow drops
//! the newest message and counts it) read by `redis::shard_reader`. The crate re-issues the
//! `SSUBSCRIBE`s after a reconnect or a slot move.
//!
//! Keys: every key Resound uses starts with the prefix in braces (`{resound}:...`), a hash
//! tag, so all of them share one slot and the Lua scripts that touch several keys stay legal.
//! The shared state therefore lives on one shard; the publish traffic, which is the load that
//! grows with the cluster, is what spreads.

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo};
use tokio::sync::mpsc;

use super::endpoint::{certificates, COMMAND_TIMEOUT};
use super::ClusterError;
use crate::config::{mask_url_password, ScalingConfig};

/// Sharded messages waiting for the reader.
pub(super) const PUSH_QUEUE: usize = 65_536;

/// The key prefix for `channel` on a Redis Cluster: a hash tag, so all keys share a slot.
pub(super) fn key_prefix(channel: &str) -> String {
    format!("{{{channel}}}")
}

/// Connects to the cluster named by `s.cluster_nodes` (any reachable seed will do) and returns
/// the connection and the queue its sharded messages arrive on. `dropped` is called for each
/// message the full queue refused.
pub(super) async fn connect(
    s: &ScalingConfig,
    dropped: impl Fn() + Send + Sync + 'static,
) -> Result<(ClusterConnection, mpsc::Receiver<PushInfo>), ClusterError> {
    let described: Vec<String> = s
        .cluster_nodes
        .iter()
        .map(|u| mask_url_password(u))
        .collect();
    let described = described.join(", ");
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ClusterError(format!("Redis Cluster {described}: {what}: {e}"))
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
    Ok((conn, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_is_a_hash_tag() {
        assert_eq!(key_prefix("resound"), "{resound}");
    }
}
