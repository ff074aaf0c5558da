//! `Broadcaster`: the one delivery path. A publication (`cluster::Publication`: target, kind,
//! frame encoded once, `except`) is delivered to this node's sockets — a channel's subscribers,
//! a user's connections for `#server-to-user-`, a user's watchers — and handed to the adapter
//! for the other nodes; what arrives from them is delivered by `deliver_local` too. API events,
//! client events, presence events and watchlist events all go through it. An event on a
//! channel with history (protocol.md 11.2) is given its position here, once: on a single node
//! as it is delivered (`ChannelRegistry::publish_recorded`); in a cluster by recording it in
//! the shared history first (`SharedHistory::record`, one round trip), then it goes to this
//! node's sockets and to the other nodes with its position (`Publication::stamp`).
//!
//! An event frame is compressed for the sockets that negotiated `permessage-deflate` at most
//! once per node, by the registry that delivers it (`connection::deflate::SharedFrame`), so a
//! frame from another node is compressed once here too. Member and watchlist events are small
//! and always go plain.

use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use crate::channels::{CachedEvent, Fanout};
use crate::cluster::{Adapter, Kind, Publication, RemoteEvent, Target};
use crate::connection::deflate::SharedFrame;
use crate::hub::AppHub;
use crate::metrics::Metrics;
use crate::protocol::resume::with_position;
use crate::protocol::{message, ChannelName, MemberChange, SocketId};
use crate::shared_state::SharedState;

pub struct Broadcaster {
    adapter: Arc<dyn Adapter>,
    cluster: Arc<SharedState>,
    metrics: Arc<Metrics>,
}

impl Broadcaster {
    pub fn new(
        adapter: Arc<dyn Adapter>,
        cluster: Arc<SharedState>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Broadcaster {
            adapter,
            cluster,
            metrics,
        }
    }

    pub fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.adapter
    }

    /// An event from the HTTP API: `data` is the publisher's string, delivered untouched; cache
    /// channels remember it even with no subscribers.
    pub async fn publish_event(
        &self,
        hub: &AppHub,
        channel: &ChannelName,
        name: &str,
        data: &str,
        except: Option<SocketId>,
    ) -> Fanout {
        let frame = message::channel_event(name, channel.as_str(), data);
        // A cluster keeps the cache in its shared store; one node keeps it in the registry.
        let cache = if channel.kind().is_cache() {
            self.cluster
                .store_cache(hub, channel.as_str(), &frame, data)
                .await
        } else {
            None
        };
        hub.metrics.api_events.inc();
        self.publish_frame(hub, channel, frame, except, cache).await
    }

    /// An already-encoded event for every subscriber of `channel` but `except`, on every node.
    /// In a cluster, an event of a channel with history waits for the shared history to
    /// record it (when that fails it goes without a position, counted).
    pub async fn publish_frame(
        &self,
        hub: &AppHub,
        channel: &ChannelName,
        frame: Bytes,
        except: Option<SocketId>,
        cache: Option<CachedEvent>,
    ) -> Fanout {
        let p = Publication::event(target_of(channel), frame, except);
        let history = hub
            .history
            .as_ref()
            .filter(|h| matches!(p.target, Target::Channel(_)) && h.covers(channel.as_str()));
        if let Some(history) = history {
            // Recorded once, by the node the event was published on; everyone, here and on
            // other nodes, gets the frame with its position.
            let (fanout, frame) =
                hub.channels
                    .publish_recorded(channel, &p, history, hub.deflate.as_ref(), cache);
            #[allow(clippy::cast_precision_loss)]
            self.metrics.fanout_size.observe(fanout.delivered as f64);
            if self.adapter.has_peers() {
                self.adapter.publish(RemoteEvent {
                    app: hub.id.clone(),
                    publication: Publication { frame, ..p },
                });
            }
            return fanout;
        }
        let shared = hub
            .shared_history
            .as_ref()
            .filter(|h| matches!(p.target, Target::Channel(_)) && h.covers(channel.as_str()))
            .zip(self.cluster.history());
        let (p, cache) = match shared {
            Some((settings, store)) => {
                let recorded = store
                    .record(
                        &hub.id,
                        channel.as_str(),
                        &p.frame,
                        p.except,
                        settings.bounds(),
                    )
                    .await;
                match recorded {
                    Ok(stamp) => {
                        let frame = with_position(&p.frame, &stamp.epoch, stamp.offset);
                        let cache = cache.map(|c| CachedEvent {
                            frame: frame.clone(),
                            ..c
                        });
                        let p = Publication {
                            frame,
                            stamp: Some(stamp),
                            ..p
                        };
                        (p, cache)
                    }
                    Err(e) => {
                        warn!(error = %e, "recording an event in the shared history failed; it goes without a position");
                        self.metrics.history_record_failures.inc();
                        (p, cache)
                    }
                }
            }
            None => (p, cache),
        };
        let cache = cache.map(|c| (channel, c));
        self.publish(hub, p, cache)
    }

    /// A presence member event (`frame` is its encoded `member_added` / `member_removed`) for
    /// the subscribers of `channel` whose roster it changes, on every node, but `except`.
    pub fn publish_member(
        &self,
        hub: &AppHub,
        channel: &ChannelName,
        change: MemberChange,
        frame: Bytes,
        except: Option<SocketId>,
    ) -> Fanout {
        let p = Publication {
            target: Target::Channel(channel.as_str().to_string()),
            kind: Kind::Member(change),
            frame,
            except,
            stamp: None,
        };
        self.publish(hub, p, None)
    }

    /// Tells every watcher of `user`, on every node, that the user came online or went
    /// offline (protocol.md 3.8).
    pub fn publish_watch(&self, hub: &AppHub, user: &str, online: bool) {
        let name = if online { "online" } else { "offline" };
        let frame = message::watchlist_events(&[(name, vec![user.to_string()])]);
        let p = Publication::event(Target::Watchers(user.to_string()), frame, None);
        self.publish(hub, p, None);
    }

    /// Delivers `p` to this node's sockets, then hands it to the other nodes.
    fn publish(
        &self,
        hub: &AppHub,
        p: Publication,
        cache: Option<(&ChannelName, CachedEvent)>,
    ) -> Fanout {
        let fanout = self.deliver_local(hub, &p, cache);
        if self.adapter.has_peers() {
            self.adapter.publish(RemoteEvent {
                app: hub.id.clone(),
                publication: p,
            });
        }
        fanout
    }

    /// Delivers to this node's sockets only (a local publication, or one from another node).
    pub fn deliver_local(
        &self,
        hub: &AppHub,
        p: &Publication,
        cache: Option<(&ChannelName, CachedEvent)>,
    ) -> Fanout {
        let deflate = hub.deflate.as_ref();
        let fanout = match &p.target {
            Target::Channel(_) => hub.channels.publish(p, deflate, cache),
            Target::User(user) => Fanout {
                delivered: hub
                    .users
                    .deliver(user, &SharedFrame::new(&p.frame, deflate), p.except),
                overflowed: 0,
            },
            Target::Watchers(user) => Fanout {
                delivered: hub.watchers.deliver(user, &p.frame),
                overflowed: 0,
            },
        };
        #[allow(clippy::cast_precision_loss)]
        self.metrics.fanout_size.observe(fanout.delivered as f64);
        fanout
    }
}

/// The cluster target of a channel: `#server-to-user-` channels route by user.
pub fn target_of(channel: &ChannelName) -> Target {
    match channel.server_to_user_id() {
        Some(user) => Target::User(user.to_string()),
        None => Target::Channel(channel.as_str().to_string()),
    }
}
