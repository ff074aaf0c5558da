//! `ClusterState` over Redis: connection, subscription and signed-in counts kept per node
//! and in total by the `COUNT` and `OPEN` scripts, and cache channels' last events in
//! `P:cache:…` keys.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::keys::Tally;
use super::RedisBackend;
use crate::app::AppId;
use crate::cluster::{ClusterError, ClusterState, Counted, NodeSnapshot, Resynced, SharedEvent};
use crate::webhooks::RemovalHold;

#[async_trait]
impl ClusterState for RedisBackend {
    async fn subscribing(&self, app: &AppId, channel: &str) -> Result<Counted, ClusterError> {
        self.count(app, channel, 1, None).await
    }

    async fn unsubscribed(
        &self,
        app: &AppId,
        channel: &str,
        hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError> {
        Ok(self.count(app, channel, -1, hold).await?.total)
    }

    async fn subscription_count(&self, app: &AppId, channel: &str) -> Result<u64, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.subscriptions(app.as_str()))
            .arg(channel)
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn occupied(
        &self,
        app: &AppId,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let all: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.keys.subscriptions(app.as_str()))
            .query_async(&mut conn)
            .await?;
        Ok(all
            .into_iter()
            .filter(|(c, n)| *n > 0 && c.starts_with(prefix) && !c.starts_with('#'))
            .map(|(c, n)| (c, n.unsigned_abs()))
            .collect())
    }

    async fn open_connection(&self, app: &AppId, max: Option<u64>) -> Result<bool, ClusterError> {
        let app = app.as_str();
        // Counted unless refused: a connection admitted while Redis fails is closed (and
        // uncounted) like any other, and a resync records it meanwhile.
        let _changing = self.shares.changing().await;
        self.shares.add(Tally::Connections, app, "", 1);
        self.check()?;
        let k = self.keys.tally(Tally::Connections, self.node, app, "");
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.open.prepare_invoke();
        inv.key(k.total)
            .key(k.node)
            .arg(k.field)
            .arg(k.node_field)
            .arg(1)
            .arg(max.unwrap_or(0));
        let n: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        if n < 0 {
            self.shares.add(Tally::Connections, app, "", -1);
        }
        Ok(n >= 0)
    }

    async fn close_connection(&self, app: &AppId) -> Result<(), ClusterError> {
        self.own_tally(Tally::Connections, app.as_str(), "", -1, None)
            .await?;
        Ok(())
    }

    async fn connections(&self, app: &AppId) -> Result<u64, ClusterError> {
        self.check()?;
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.keys.connections())
            .arg(app.as_str())
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn store_cache(&self, app: &AppId, channel: &str, cached: &SharedEvent) {
        // Unreachable: the trigger is answered at once rather than after a command timeout.
        if !self.healthy.load(Ordering::Acquire) {
            debug!("cache channel event not stored: the cluster backend is unreachable");
            return;
        }
        let key = self.keys.cache(app.as_str(), channel);
        let ttl = u64::try_from(cached.ttl.as_millis())
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
    }

    async fn cached(
        &self,
        app: &AppId,
        channel: &str,
    ) -> Result<Option<SharedEvent>, ClusterError> {
        self.check()?;
        let key = self.keys.cache(app.as_str(), channel);
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
            .await?;
        let (Some(frame), Some(data)) = (frame, data) else {
            return Ok(None);
        };
        if ttl <= 0 {
            return Ok(None);
        }
        Ok(Some(SharedEvent {
            frame: Bytes::from(frame),
            data: data.into(),
            ttl: Duration::from_millis(ttl.unsigned_abs()),
        }))
    }

    async fn signed_in(&self, app: &AppId, user: &str, delta: i64) -> Result<u64, ClusterError> {
        let (total, _) = self
            .own_tally(Tally::Users, app.as_str(), user, delta, None)
            .await?;
        Ok(total.max(0).unsigned_abs())
    }

    async fn online(&self, app: &AppId, users: &[String]) -> Result<Vec<bool>, ClusterError> {
        self.check()?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let counts: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(self.keys.users(app.as_str()))
            .arg(users)
            .query_async(&mut conn)
            .await?;
        Ok(counts.into_iter().map(|c| c.unwrap_or(0) > 0).collect())
    }

    async fn resync(
        &self,
        snapshot: &NodeSnapshot,
        announce: bool,
    ) -> Result<Resynced, ClusterError> {
        self.publish_again(snapshot, announce).await
    }
}

impl RedisBackend {
    pub(super) async fn count(
        &self,
        app: &AppId,
        channel: &str,
        delta: i64,
        hold: Option<RemovalHold>,
    ) -> Result<Counted, ClusterError> {
        let app = app.as_str();
        let hold_key = self.keys.vacated_hold(app, channel);
        let (total, rejoined) = self
            .own_tally(
                Tally::Subscriptions,
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
}
