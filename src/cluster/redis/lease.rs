//! The node's lease and what hangs on it: the heartbeat (lease renewal and wire-version
//! negotiation), reaping dead nodes (undoing their shares of the shared state, reporting the
//! departures it causes), and the resync that publishes this node's state again when it was
//! lost.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::keys::Tally;
use super::{hold_args, now_ms, RedisBackend, HEARTBEAT, LEASE};
use crate::app::AppId;
use crate::cluster::wire;
use crate::cluster::{ClusterError, Control, MemberLeft, NodeSnapshot, Resynced};
use crate::presence::Join;
use crate::webhooks::RemovalHold;

impl RedisBackend {
    /// Refreshes this node's lease. A lease that had to be created anew means this node's
    /// shared state is gone (it was reaped, or Redis restarted): ask the server to resync.
    pub(super) async fn heartbeat(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let added: i64 = redis::cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now_ms() + u64::try_from(LEASE.as_millis()).unwrap_or(10_000))
            .arg(self.node)
            .query_async(&mut conn)
            .await?;
        let mut inv = self.scripts.wire.prepare_invoke();
        inv.key(self.keys.nodes())
            .key(self.keys.wire())
            .arg(now_ms())
            .arg(self.node)
            .arg(wire::VERSION);
        let oldest: u8 = inv.invoke_async(&mut conn).await?;
        let before = self.send_version.swap(oldest.max(1), Ordering::AcqRel);
        if before != oldest {
            info!(version = oldest, "cluster wire version");
        }
        let was_registered = self.registered.swap(true, Ordering::AcqRel);
        if added == 1 && was_registered {
            warn!("this node's cluster lease was gone; publishing its state again");
            self.request_resync(true);
        } else if self.dirty.load(Ordering::Acquire) && self.request_resync(false) {
            warn!(
                "some cluster state changes were not recorded; publishing this node's state again"
            );
        }
        Ok(())
    }

    /// Asks the owner for a resync unless one is already pending (they coalesce; a pending
    /// one announces if any request did). `true` when this asked. The dirty flag stays set
    /// until a resync has been applied, so a resync that fails is asked for again.
    pub(super) fn request_resync(&self, announce: bool) -> bool {
        if announce {
            self.announce_pending.store(true, Ordering::Release);
        }
        if self.resync_pending.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Fails only when the owner is gone (shutdown).
        let _ = self.control.send(Control::Resync { announce });
        true
    }

    /// Claims and removes the state of nodes whose lease expired.
    pub(super) async fn reap(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let dead: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg("-inf")
            .arg(now_ms())
            .query_async(&mut conn)
            .await?;
        for node in dead {
            let claimed: i64 = redis::cmd("ZREM")
                .arg(self.keys.nodes())
                .arg(node)
                .query_async(&mut conn)
                .await?;
            if claimed == 1 {
                warn!(dead = node, "reaping a node whose lease expired");
                let _: i64 = redis::cmd("HDEL")
                    .arg(self.keys.wire())
                    .arg(node)
                    .query_async(&mut conn)
                    .await?;
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
    async fn reap_node(&self, node: u64, announce: bool) -> Result<Vec<MemberLeft>, ClusterError> {
        let mut gone = Vec::new();
        let mut conn = self.conn.clone();
        // Counts first, so that when clients see `member_removed` the HTTP API agrees.
        // Connection counts.
        let conns: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.keys.node(node, "c"))
            .query_async(&mut conn)
            .await?;
        for (app, count) in conns {
            let _ = self
                .tally(Tally::Connections, node, &app, "", -count)
                .await?;
        }
        // Subscription counts.
        let subs: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.keys.node(node, "s"))
            .query_async(&mut conn)
            .await?;
        for (field, count) in subs {
            let Some((app, channel)) = field.split_once('\n') else {
                continue;
            };
            let total = self
                .tally(Tally::Subscriptions, node, app, channel, -count)
                .await?;
            if total == 0 && announce {
                let _ = self.control.send(Control::ChannelGone {
                    app: AppId(app.into()),
                    channel: channel.to_string(),
                });
            }
        }
        // Signed-in users.
        let users: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.keys.node(node, "u"))
            .query_async(&mut conn)
            .await?;
        for (field, count) in users {
            let Some((app, user)) = field.split_once('\n') else {
                continue;
            };
            let total = self.tally(Tally::Users, node, app, user, -count).await?;
            if total == 0 && announce {
                let _ = self.control.send(Control::UserGone {
                    app: AppId(app.into()),
                    user: user.to_string(),
                });
            }
        }
        // Presence members.
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node(node, "p"))
            .query_async(&mut conn)
            .await?;
        for entry in entries {
            let mut parts = entry.splitn(3, '\n');
            let (Some(app), Some(channel), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let [m, n, o] = self.keys.presence(app, channel);
            let app = AppId(app.into());
            let mut inv = self.scripts.reap_member.prepare_invoke();
            inv.key(&m).key(&n).key(&o).arg(node).arg(user);
            let left: i64 = inv.invoke_async(&mut conn).await?;
            if left == 1 && !announce {
                gone.push(MemberLeft {
                    app,
                    channel: channel.to_string(),
                    user: user.to_string(),
                });
            } else if left == 1 {
                let _ = self.control.send(Control::MemberGone {
                    app,
                    channel: channel.to_string(),
                    user: user.to_string(),
                });
            }
        }
        let _: i64 = redis::cmd("DEL")
            .arg(&self.keys.node_shares(node)[..])
            .query_async(&mut conn)
            .await?;
        Ok(gone)
    }

    /// Adds `delta` to `node`'s share of a tally and to the cluster total; returns the total.
    pub(super) async fn tally(
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
    pub(super) async fn tally_held(
        &self,
        what: Tally,
        node: u64,
        app: &str,
        item: &str,
        delta: i64,
        hold: Option<(String, Option<RemovalHold>)>,
    ) -> Result<(i64, bool), ClusterError> {
        let k = self.keys.tally(what, node, app, item);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.count.prepare_invoke();
        inv.key(k.total)
            .key(k.node)
            .arg(k.field)
            .arg(k.node_field)
            .arg(delta);
        if let Some((key, hold)) = hold {
            let (token, ttl) = hold_args(hold);
            inv.key(key).arg(token).arg(ttl);
        }
        let (total, rejoined): (i64, i64) = inv.invoke_async(&mut conn).await?;
        Ok((total, rejoined == 1))
    }
}

/// Refreshes the lease, reaps dead nodes and adopts orphaned journals every `HEARTBEAT`.
pub(super) async fn heartbeats(cluster: Arc<RedisBackend>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cluster.leaving.load(Ordering::Acquire) {
            return;
        }
        let result = async {
            let beat = cluster.heartbeat().await;
            // Readiness follows the heartbeat: a Redis that stopped answering keeps the
            // pub/sub socket open, so only a failing command shows it.
            cluster.set_beat_ok(beat.is_ok());
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

impl RedisBackend {
    /// Publishes this node's local state again after it was lost (see `Control::Resync`):
    /// connection, subscription and signed-in counts and presence memberships, from the
    /// owner's `snapshot`. `announce`: the state was lost and others saw this node's members
    /// leave, so members that come back are reported to be announced with `member_added`.
    pub(super) async fn publish_again(
        &self,
        snapshot: &NodeSnapshot,
        announce: bool,
    ) -> Result<Resynced, ClusterError> {
        let announce = self.announce_pending.swap(false, Ordering::AcqRel) || announce;
        // Changes failing from here on are repaired by the next resync.
        self.dirty.store(false, Ordering::Release);
        let result = self.replace_shares(snapshot, announce).await;
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
            if announce {
                self.announce_pending.store(true, Ordering::Release);
            }
        } else {
            info!("cluster state published again");
        }
        self.resync_pending.store(false, Ordering::Release);
        result
    }

    async fn replace_shares(
        &self,
        snapshot: &NodeSnapshot,
        announce: bool,
    ) -> Result<Resynced, ClusterError> {
        // Whatever is left of this node's shares (after a mere disconnection: possibly stale,
        // since changes made while Redis was unreachable were lost) is replaced as a whole.
        let gone = self.reap_node(self.node, false).await?;
        let mut out = Resynced::default();
        let mut present = HashSet::new();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for a in &snapshot.apps {
            let app = a.app.as_str();
            if a.connections > 0 {
                self.tally(Tally::Connections, self.node, app, "", count(a.connections))
                    .await?;
            }
            for (channel, n) in &a.channels {
                self.tally(Tally::Subscriptions, self.node, app, channel, count(*n))
                    .await?;
            }
            for (user, n) in &a.users {
                self.tally(Tally::Users, self.node, app, user, count(*n))
                    .await?;
            }
            for m in &a.members {
                let joined = self
                    .join_member(app, &m.channel, &m.member, usize::MAX)
                    .await?;
                present.insert(MemberLeft {
                    app: a.app.clone(),
                    channel: m.channel.clone(),
                    user: m.member.user_id.to_string(),
                });
                if announce && matches!(joined, Join::Joined { first: true, .. }) {
                    out.back.push((a.app.clone(), m.clone()));
                }
            }
        }
        // Members who left while their departure could not be recorded: reported, unless
        // this node or another one still has them.
        for g in gone {
            if present.contains(&g) {
                continue;
            }
            let still_there = self
                .roster(g.app.as_str(), &g.channel)
                .await?
                .iter()
                .any(|m| m.user_id.as_str() == g.user);
            if !still_there {
                out.gone.push(g);
            }
        }
        Ok(out)
    }
}

/// The repair path against the real Redis at 127.0.0.1:6379, under a prefix of its own.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::Registry;
    use redis::AsyncCommands;

    use super::*;
    use crate::cluster::{AppSnapshot, ClusterState};
    use crate::config::ScalingConfig;

    async fn backend() -> (Arc<RedisBackend>, crate::cluster::InboundQueues, String) {
        let prefix = format!("resound-lease-{:016x}", rand::random::<u64>());
        let scaling = ScalingConfig {
            enabled: true,
            channel: prefix.clone(),
            ..ScalingConfig::default()
        };
        let (backend, queues) = RedisBackend::connect(&scaling, &Registry::new(), "t")
            .await
            .expect("a Redis at 127.0.0.1:6379");
        (backend, queues, prefix)
    }

    async fn cleanup(backend: &RedisBackend, prefix: &str) {
        backend.leave().await;
        let mut conn = backend.conn.clone();
        let found: Vec<String> = conn.keys(format!("{prefix}:*")).await.expect("KEYS");
        if !found.is_empty() {
            let _: i64 = conn.del(found).await.expect("DEL");
        }
    }

    /// A lost change asks for one resync on the control queue, however many heartbeats pass
    /// before it is applied, and the node stays dirty until then; a resync that fails leaves it
    /// dirty, so it is asked for again.
    #[tokio::test]
    async fn a_lost_change_stays_dirty_until_a_resync_is_applied() {
        let (backend, mut queues, prefix) = backend().await;
        backend.dirty.store(true, Ordering::Release);
        backend.heartbeat().await.expect("heartbeat");
        backend.heartbeat().await.expect("heartbeat");
        assert!(matches!(
            queues.control.try_recv(),
            Ok(Control::Resync { announce: false })
        ));
        assert!(queues.control.try_recv().is_err(), "requests coalesce");
        assert!(backend.dirty.load(Ordering::Acquire));

        let snapshot = NodeSnapshot {
            apps: vec![AppSnapshot {
                app: AppId("app".into()),
                connections: 2,
                channels: vec![("ch".into(), 2)],
                users: vec![("u".into(), 1)],
                members: Vec::new(),
            }],
        };
        backend.resync(&snapshot, false).await.expect("resync");
        assert!(!backend.dirty.load(Ordering::Acquire));
        let app = AppId("app".into());
        assert_eq!(backend.connections(&app).await.expect("count"), 2);
        assert_eq!(
            backend.subscription_count(&app, "ch").await.expect("count"),
            2
        );
        assert_eq!(
            backend.online(&app, &["u".into()]).await.expect("online"),
            [true]
        );
        backend.heartbeat().await.expect("heartbeat");
        assert!(
            queues.control.try_recv().is_err(),
            "clean: nothing to repair"
        );

        // A resync that fails (Redis unreachable) keeps the node dirty and is asked again.
        backend.dirty.store(true, Ordering::Release);
        backend.heartbeat().await.expect("heartbeat");
        assert!(queues.control.try_recv().is_ok());
        let mut with_member = snapshot.clone();
        with_member.apps[0]
            .members
            .push(crate::cluster::SnapshotMember {
                channel: "presence-x".into(),
                socket: crate::protocol::SocketId::from_parts(1, 2),
                member: crate::protocol::PresenceMember {
                    user_id: crate::protocol::UserId::new("u").expect("user id"),
                    user_info: None,
                },
            });
        backend.healthy.store(false, Ordering::Release);
        let failed =
            tokio::time::timeout(Duration::from_secs(5), backend.resync(&with_member, false))
                .await
                .expect("bounded");
        assert!(failed.is_err());
        backend.healthy.store(true, Ordering::Release);
        backend.heartbeat().await.expect("heartbeat");
        assert!(backend.dirty.load(Ordering::Acquire));
        assert!(matches!(
            queues.control.try_recv(),
            Ok(Control::Resync { .. })
        ));
        cleanup(&backend, &prefix).await;
    }
}
