//! The node's lease and what hangs on it: the heartbeat (lease renewal and wire-version
//! negotiation), reaping dead nodes (undoing their shares of the shared state, reporting the
//! departures it causes), and the resync that publishes this node's state again when it was
//! lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::keys::{Keys, Tally};
use super::shares::Share;
use super::{hold_args, now_ms, RedisBackend, HEARTBEAT, LEASE};

/// Shares written by one script call of a resync (bounds how long Redis is busy with it).
const SET_SHARES_BATCH: usize = 512;
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
        // The wire version first: a node that saw this one's lease before its version would
        // take it for a node that reads only version 1 and send that until its next heartbeat.
        let mut inv = self.scripts.wire.prepare_invoke();
        inv.key(self.keys.nodes())
            .key(self.keys.wire())
            .arg(now_ms())
            .arg(self.node)
            .arg(wire::VERSION);
        let oldest: u8 = inv.invoke_async(&mut conn).await?;
        let added: i64 = redis::cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now_ms() + u64::try_from(LEASE.as_millis()).unwrap_or(10_000))
            .arg(self.node)
            .query_async(&mut conn)
            .await?;
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
                self.reap_node(node).await?;
            }
        }
        Ok(())
    }

    /// Removes a dead `node`'s contributions to the shared state and reports the transitions
    /// it causes (member_removed broadcasts, vacated webhooks, offline watchers).
    async fn reap_node(&self, node: u64) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        // Counts first, so that when clients see `member_removed` the HTTP API agrees.
        for what in [Tally::Connections, Tally::Subscriptions, Tally::Users] {
            let shares: Vec<(String, i64)> = redis::cmd("HGETALL")
                .arg(self.keys.share(what, node))
                .query_async(&mut conn)
                .await?;
            for (field, count) in shares {
                let Some((app, item)) = Keys::share_field(what, &field) else {
                    continue;
                };
                let total = self.tally(what, node, app, item, -count).await?;
                let (app, item) = (AppId(app.into()), item.to_string());
                let gone = match what {
                    _ if total != 0 => None,
                    Tally::Connections => None,
                    Tally::Subscriptions => Some(Control::ChannelGone { app, channel: item }),
                    Tally::Users => Some(Control::UserGone { app, user: item }),
                };
                if let Some(gone) = gone {
                    let _ = self.control.send(gone);
                }
            }
        }
        for left in self.reap_members(node).await? {
            let _ = self.control.send(Control::MemberGone {
                app: left.app,
                channel: left.channel,
                user: left.user,
            });
        }
        let _: i64 = redis::cmd("DEL")
            .arg(&self.keys.node_shares(node)[..])
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes `node`'s presence memberships; returns the members who left their channel
    /// cluster-wide by it.
    async fn reap_members(&self, node: u64) -> Result<Vec<MemberLeft>, ClusterError> {
        let mut gone = Vec::new();
        let mut conn = self.conn.clone();
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
            let mut inv = self.scripts.reap_member.prepare_invoke();
            inv.key(&m).key(&n).key(&o).arg(node).arg(user);
            let left: i64 = inv.invoke_async(&mut conn).await?;
            if left == 1 {
                gone.push(MemberLeft {
                    app: AppId(app.into()),
                    channel: channel.to_string(),
                    user: user.to_string(),
                });
            }
        }
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.node(node, "p"))
            .query_async(&mut conn)
            .await?;
        Ok(gone)
    }

    /// An own tally change: recorded in `shares` first (so a resync repairs it if Redis does
    /// not record it), then sent. See `tally_held`.
    pub(super) async fn own_tally(
        &self,
        what: Tally,
        app: &str,
        item: &str,
        delta: i64,
        hold: Option<(String, Option<RemovalHold>)>,
    ) -> Result<(i64, bool), ClusterError> {
        let _changing = self.shares.changing().await;
        self.shares.add(what, app, item, delta);
        self.check()?;
        self.tally_held(what, self.node, app, item, delta, hold)
            .await
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
        let (total, rejoined): (i64, i64) = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
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
        // The counts: this node's own record of them, written as its shares while no own
        // change is in flight (see `shares.rs`).
        {
            let _alone = self.shares.resyncing().await;
            self.set_shares().await?;
        }
        // Presence: whatever is left of this node's memberships (after a mere disconnection:
        // possibly stale, since changes made while Redis was unreachable were lost) is
        // replaced by the owner's snapshot.
        let gone = self.reap_members(self.node).await?;
        let mut out = Resynced::default();
        let mut present = HashSet::new();
        for a in &snapshot.apps {
            let app = a.app.as_str();
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

    /// Sets this node's shares in Redis to `shares` (and the totals by the difference): the
    /// shares it counted, and 0 for any other share Redis holds for it.
    async fn set_shares(&self) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let mut want: HashMap<Share, u64> = self.shares.all().into_iter().collect();
        for what in [Tally::Connections, Tally::Subscriptions, Tally::Users] {
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(self.keys.share(what, self.node))
                .query_async(&mut conn)
                .await?;
            for field in fields {
                if let Some((app, item)) = Keys::share_field(what, &field) {
                    want.entry(Share {
                        what,
                        app: app.into(),
                        item: item.into(),
                    })
                    .or_insert(0);
                }
            }
        }
        let want: Vec<(Share, u64)> = want.into_iter().collect();
        let mut changed = 0;
        for batch in want.chunks(SET_SHARES_BATCH) {
            let mut inv = self.scripts.set_shares.prepare_invoke();
            for (share, n) in batch {
                let k = self
                    .keys
                    .tally(share.what, self.node, &share.app, &share.item);
                inv.key(k.total)
                    .key(k.node)
                    .arg(k.field)
                    .arg(k.node_field)
                    .arg(*n);
            }
            let n: u64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))?;
            changed += n;
        }
        if changed > 0 {
            info!(changed, "cluster counts of this node corrected");
        }
        Ok(())
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

        // Counted by this node while Redis could not record them.
        backend.healthy.store(false, Ordering::Release);
        let app = AppId("app".into());
        for _ in 0..2 {
            assert!(backend.open_connection(&app, None).await.is_err());
            assert!(backend.count(&app, "ch", 1, None).await.is_err());
        }
        assert!(backend.signed_in(&app, "u", 1).await.is_err());
        backend.healthy.store(true, Ordering::Release);
        let snapshot = NodeSnapshot {
            apps: vec![AppSnapshot {
                app: app.clone(),
                members: Vec::new(),
            }],
        };
        backend.resync(&snapshot, false).await.expect("resync");
        assert!(!backend.dirty.load(Ordering::Acquire));
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

    /// Counts changing on every side while resyncs run end exact: when every connection has
    /// left, no share and no total is left in Redis.
    #[tokio::test]
    async fn counts_changing_during_resyncs_end_at_zero() {
        let (backend, _queues, prefix) = backend().await;
        let app = AppId("app".into());
        let churn = |seed: u64| {
            let (backend, app) = (backend.clone(), app.clone());
            tokio::spawn(async move {
                let mut held: Vec<String> = Vec::new();
                let mut x = seed;
                for _ in 0..150 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if held.is_empty() || x >> 62 != 0 {
                        let ch = format!("ch{}", (x >> 33) % 8);
                        let _ = backend.count(&app, &ch, 1, None).await;
                        let _ = backend.signed_in(&app, &ch, 1).await;
                        let _ = backend.open_connection(&app, None).await;
                        held.push(ch);
                    } else {
                        let ch = held.swap_remove(
                            usize::try_from((x >> 33) % held.len() as u64).unwrap_or(0),
                        );
                        let _ = backend.count(&app, &ch, -1, None).await;
                        let _ = backend.signed_in(&app, &ch, -1).await;
                        let _ = backend.close_connection(&app).await;
                    }
                }
                held
            })
        };
        let tasks: Vec<_> = (1..=4).map(churn).collect();
        for _ in 0..10 {
            backend
                .resync(&NodeSnapshot::default(), false)
                .await
                .expect("resync");
        }
        for task in tasks {
            for ch in task.await.expect("joined") {
                backend.count(&app, &ch, -1, None).await.expect("count");
                backend.signed_in(&app, &ch, -1).await.expect("signed in");
                backend.close_connection(&app).await.expect("close");
            }
        }
        backend
            .resync(&NodeSnapshot::default(), false)
            .await
            .expect("resync");
        let mut conn = backend.conn.clone();
        let mut left: Vec<String> = conn.keys(format!("{prefix}:*")).await.expect("KEYS");
        left.retain(|k| !k.ends_with(":nodes") && !k.ends_with(":wire"));
        assert!(left.is_empty(), "left in Redis: {left:?}");
        cleanup(&backend, &prefix).await;
    }
}
