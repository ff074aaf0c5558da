//! `Broadcaster`: the one delivery path. A publish is encoded once, delivered to this node's
//! sockets (channel subscribers, or a user's connections for `#server-to-user-`), and handed to
//! the adapter for the other nodes. API events, client events and presence events all go
//! through `deliver_local`.

use std::sync::Arc;

use bytes::Bytes;

use crate::channels::{CachedEvent, Fanout};
use crate::cluster::{Adapter, RemoteEvent, Target};
use crate::metrics::Metrics;
use crate::protocol::{message, ChannelName, SocketId};
use crate::shared_state::SharedState;
use crate::state::AppHub;

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
        self.publish_frame(hub, channel, frame, except, cache)
    }

    /// An already-encoded frame for every subscriber of `channel` but `except`, on every node.
    pub fn publish_frame(
        &self,
        hub: &AppHub,
        channel: &ChannelName,
        frame: Bytes,
        except: Option<SocketId>,
        cache: Option<CachedEvent>,
    ) -> Fanout {
        let fanout = self.deliver_local(hub, channel, &frame, except, cache);
        if self.adapter.has_peers() {
            self.adapter.publish(RemoteEvent {
                app: hub.app.id.clone(),
                target: target_of(channel),
                frame,
                except,
            });
        }
        fanout
    }

    /// Delivers to this node's sockets only.
    pub fn deliver_local(
        &self,
        hub: &AppHub,
        channel: &ChannelName,
        frame: &Bytes,
        except: Option<SocketId>,
        cache: Option<CachedEvent>,
    ) -> Fanout {
        let fanout = match channel.server_to_user_id() {
            Some(user) => Fanout {
                delivered: hub.users.deliver(user, frame, except),
                overflowed: 0,
            },
            None => hub.channels.publish(channel, frame, except, cache),
        };
        #[allow(clippy::cast_precision_loss)]
        self.metrics.fanout_size.observe(fanout.delivered as f64);
        fanout
    }
}

impl Broadcaster {
    /// Tells every watcher of `user`, on every node, that the user came online or went
    /// offline (spec 3.8).
    pub fn publish_watch(&self, hub: &AppHub, user: &str, online: bool) {
        let name = if online { "online" } else { "offline" };
        let frame = message::watchlist_events(&[(name, vec![user.to_string()])]);
        hub.watchers.deliver(user, &frame);
        if self.adapter.has_peers() {
            self.adapter.publish(RemoteEvent {
                app: hub.app.id.clone(),
                target: Target::Watchers(user.to_string()),
                frame,
                except: None,
            });
        }
    }
}

/// The cluster target of a channel: `#server-to-user-` channels route by user.
pub fn target_of(channel: &ChannelName) -> Target {
    match channel.server_to_user_id() {
        Some(user) => Target::User(user.to_string()),
        None => Target::Channel(channel.as_str().to_string()),
    }
}
