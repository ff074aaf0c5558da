//! `SharedState`: the cluster-wide facts this node's use cases ask for (subscription and
//! connection counts, occupied channels, signed-in users, cache channels' last events), in one
//! place. With a shared store (`cluster::ClusterState`, a cluster) it asks the store; without
//! one (a single node) it answers from the app's local registries. This is the only place that
//! knows the difference. It also builds the snapshot a resync publishes again.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::channels::{CachedEvent, Subscribed, Unsubscribed};
use crate::cluster::{
    AppSnapshot, ClusterError, ClusterState, Counted, NodeSnapshot, SharedEvent, SharedHistory,
    SnapshotMember,
};
use crate::hub::AppHub;
use crate::webhooks::RemovalHold;

/// Cluster-wide facts (see the module docs).
pub struct SharedState {
    /// The shared store; `None` on a single node.
    store: Option<Arc<dyn ClusterState>>,
    /// The channel histories of the shared store; `None` on a single node (the hubs keep
    /// theirs).
    history: Option<Arc<dyn SharedHistory>>,
}

impl SharedState {
    /// `store` and `history`: the cluster's shared store, `None` for a single node.
    pub fn new(
        store: Option<Arc<dyn ClusterState>>,
        history: Option<Arc<dyn SharedHistory>>,
    ) -> SharedState {
        SharedState { store, history }
    }

    /// The cluster's shared channel histories, when there are.
    pub fn history(&self) -> Option<&Arc<dyn SharedHistory>> {
        self.history.as_ref()
    }

    /// The shared store, when there is one.
    pub fn store(&self) -> Option<&Arc<dyn ClusterState>> {
        self.store.as_ref()
    }

    /// Counts a subscription cluster-wide before the registry takes it, so every node's HTTP
    /// API agrees once the client hears it is subscribed. `None` on a single node: there the
    /// registry's count, taken with the subscription, is the one (`counted`). What a store
    /// counted is given back by `uncount` when the registry takes nothing.
    pub async fn subscribing(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Option<Result<Counted, ClusterError>> {
        let store = self.store.as_ref()?;
        Some(store.subscribing(&hub.id, channel).await)
    }

    /// The cluster-wide count after a subscription the registry took (`sub`): what
    /// `subscribing` counted, or on a single node the registry's own count.
    pub fn counted(
        sub: &Subscribed,
        counted: Option<Result<Counted, ClusterError>>,
    ) -> Result<Counted, ClusterError> {
        counted.unwrap_or(Ok(Counted {
            total: sub.count as u64,
            rejoined: false,
        }))
    }

    /// Takes back a count `subscribing` made for a subscription the registry did not take.
    pub async fn uncount(&self, hub: &AppHub, channel: &str) {
        if let Some(store) = &self.store {
            let _ = store.unsubscribed(&hub.id, channel, None).await;
        }
    }

    /// A local subscription was removed from the registry (`removed`, its answer); returns
    /// the cluster-wide count after it. When that is 0, `hold` (if any) holds the channel's
    /// `channel_vacated` cluster-wide. One node's count is the registry's, taken with the
    /// removal.
    pub async fn unsubscribed(
        &self,
        hub: &AppHub,
        channel: &str,
        removed: &Unsubscribed,
        hold: Option<RemovalHold>,
    ) -> Result<u64, ClusterError> {
        match &self.store {
            Some(store) => store.unsubscribed(&hub.id, channel, hold).await,
            None => Ok(removed.count as u64),
        }
    }

    /// Cluster-wide subscription count of one channel.
    pub async fn subscription_count(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<u64, ClusterError> {
        match &self.store {
            Some(store) => store.subscription_count(&hub.id, channel).await,
            None => Ok(hub.channels.subscription_count(channel) as u64),
        }
    }

    /// Occupied channels whose name starts with `prefix`, with their subscription counts.
    pub async fn occupied(
        &self,
        hub: &AppHub,
        prefix: &str,
    ) -> Result<Vec<(String, u64)>, ClusterError> {
        match &self.store {
            Some(store) => store.occupied(&hub.id, prefix).await,
            None => Ok(hub
                .channels
                .occupied(prefix)
                .into_iter()
                .map(|(c, n)| (c.to_string(), n as u64))
                .collect()),
        }
    }

    /// Reserves a connection slot under `max` cluster-wide; `false` when full. (One node:
    /// the hub's own reservation already enforced `max`.)
    pub async fn open_connection(
        &self,
        hub: &AppHub,
        max: Option<u64>,
    ) -> Result<bool, ClusterError> {
        match &self.store {
            Some(store) => store.open_connection(&hub.id, max).await,
            None => Ok(true),
        }
    }

    /// Releases what `open_connection` reserved.
    pub async fn close_connection(&self, hub: &AppHub) -> Result<(), ClusterError> {
        match &self.store {
            Some(store) => store.close_connection(&hub.id).await,
            None => Ok(()),
        }
    }

    /// Open connections of the app, cluster-wide.
    pub async fn connections(&self, hub: &AppHub) -> Result<u64, ClusterError> {
        match &self.store {
            Some(store) => store.connections(&hub.id).await,
            None => Ok(hub.connection_count()),
        }
    }

    /// Remembers the last event of a cache channel. A shared store keeps it for every node
    /// (before the event is published, so successive events are stored in order) and `None`
    /// is returned; one node keeps it in the registry, with the delivery: the event to pass
    /// to the registry's `publish` is returned.
    pub async fn store_cache(
        &self,
        hub: &AppHub,
        channel: &str,
        frame: &Bytes,
        data: &str,
    ) -> Option<CachedEvent> {
        let ttl = hub.app().settings.cache_ttl;
        match &self.store {
            Some(store) => {
                let event = SharedEvent {
                    frame: frame.clone(),
                    data: Arc::from(data),
                    ttl,
                };
                store.store_cache(&hub.id, channel, &event).await;
                None
            }
            None => Some(CachedEvent {
                frame: frame.clone(),
                data: Arc::from(data),
                expires: Instant::now() + ttl,
            }),
        }
    }

    /// The last event of a cache channel, wherever it was published.
    pub async fn cached(
        &self,
        hub: &AppHub,
        channel: &str,
    ) -> Result<Option<CachedEvent>, ClusterError> {
        match &self.store {
            Some(store) => Ok(store.cached(&hub.id, channel).await?.map(|e| CachedEvent {
                frame: e.frame,
                data: e.data,
                expires: Instant::now() + e.ttl,
            })),
            None => Ok(hub.channels.cached(channel)),
        }
    }

    /// A connection signed in as `user` (`delta` 1) or went away (-1), already recorded in
    /// the hub's user registry; returns the user's signed-in connections cluster-wide.
    pub async fn signed_in(
        &self,
        hub: &AppHub,
        user: &str,
        delta: i64,
    ) -> Result<u64, ClusterError> {
        match &self.store {
            Some(store) => store.signed_in(&hub.id, user, delta).await,
            None => Ok(hub.users.count(user) as u64),
        }
    }

    /// Which of `users` have a signed-in connection anywhere.
    pub async fn online(&self, hub: &AppHub, users: &[String]) -> Result<Vec<bool>, ClusterError> {
        match &self.store {
            Some(store) => store.online(&hub.id, users).await,
            None => Ok(users.iter().map(|u| hub.users.is_online(u)).collect()),
        }
    }
}

/// This node's local state, for `ClusterState::resync`.
pub fn snapshot(hubs: &[Arc<AppHub>]) -> NodeSnapshot {
    NodeSnapshot {
        apps: hubs
            .iter()
            .map(|hub| AppSnapshot {
                app: hub.id.clone(),
                members: hub
                    .channels
                    .presence_members()
                    .into_iter()
                    .map(|(channel, socket, member)| SnapshotMember {
                        channel: channel.to_string(),
                        socket,
                        member,
                    })
                    .collect(),
            })
            .collect(),
    }
}
