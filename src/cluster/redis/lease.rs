//! The node's lease and what hangs on it: the heartbeat (lease renewal and wire-version
//! negotiation), reaping dead nodes (undoing their shares of the shared state, reporting the
//! departures it causes), and the resync that publishes this node's state again when it was
//! lost.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::keys::Tally;
use super::{hold_args, now_ms, Gone, RedisBackend, HEARTBEAT, LEASE};
use crate::app::AppId;
use crate::cluster::wire;
use crate::cluster::{Adapter, ClusterError, Inbound, RemoteEvent, Target};
use crate::presence::Join;
use crate::protocol::message;
use crate::state::AppHub;
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
    async fn reap_node(&self, node: u64, announce: bool) -> Result<Vec<Gone>, ClusterError> {
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
                let _ = self.inbound.try_send(Inbound::ChannelGone {
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
                let _ = self.inbound.try_send(Inbound::UserGone {
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

impl RedisBackend {
    /// Publishes this node's local state again after it was lost (see `Inbound::Resync`):
    /// connection and subscription counts and presence memberships.
    /// `announce`: the state was lost and others saw this node's members leave, so members
    /// that come back are announced with `member_added`.
    pub async fn resync(&self, hubs: &[Arc<AppHub>], announce: bool) -> Result<(), ClusterError> {
        // Whatever is left of this node's shares (after a mere disconnection: possibly stale,
        // since changes made while Redis was unreachable were lost) is replaced as a whole.
        let gone = self.reap_node(self.node, false).await?;
        let mut back = HashSet::new();
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
                    .join_member(app, channel.as_str(), &member, usize::MAX)
                    .await?;
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
                .roster(g.app.as_str(), &g.channel)
                .await?
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
