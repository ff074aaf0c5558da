//! `AppHub`: one app's runtime state on this node (its registries, connection count, quotas
//! and rate limiters), created by `ServerState` when the app is first used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::app::{App, AppId, HistorySettings};
use crate::channels::users::{UserRegistry, WatcherRegistry};
use crate::channels::ChannelRegistry;
use crate::connection::deflate::DeflatePolicy;
use crate::connection::handle::ConnRef;
use crate::history::ChannelHistory;
use crate::idempotency::KeyStore;
use crate::metrics::{AppMetrics, Metrics};
use crate::protocol::{ErrorKind, SocketId};
use crate::ratelimit::TokenBucket;
use crate::tap::Tap;

/// One app's state on this node.
pub struct AppHub {
    /// The app's id (a reload never changes it).
    pub id: AppId,
    /// The app's current definition: replaced by a reload (`set_app`), read with `app()`.
    app: RwLock<Arc<App>>,
    pub channels: ChannelRegistry,
    pub users: UserRegistry,
    pub watchers: WatcherRegistry,
    pub connections: DashMap<SocketId, ConnRef>,
    connection_count: AtomicU64,
    pub metrics: AppMetrics,
    /// How broadcasts are compressed for sockets that negotiated `permessage-deflate`; none
    /// when the app has compression off (the extension is then declined). Made with the hub:
    /// a reload does not change it.
    pub deflate: Option<DeflatePolicy>,
    /// `max_backend_events_per_second`, when set.
    backend_limiter: Mutex<Option<TokenBucket>>,
    /// `max_read_requests_per_second`, when set.
    read_limiter: Mutex<Option<TokenBucket>>,
    /// Idempotency keys of the HTTP API on a single node (a cluster keeps them in its store).
    /// Sized when the hub is made: a reload does not resize it.
    pub idempotency: KeyStore,
    /// The histories of the app's channels that keep one (protocol.md 11.2) on a single node;
    /// `None` when the app keeps none, or in a cluster. Made with the hub: a reload does not
    /// change which channels keep one.
    pub history: Option<ChannelHistory>,
    /// In a cluster, which channels keep a history in the shared store, and its bounds
    /// (`None` on a single node, or when the app keeps none). Made with the hub, like
    /// `history`.
    pub shared_history: Option<HistorySettings>,
    /// The app's live feed for the debug console (carries nothing unless one is watching).
    pub tap: Tap,
}

/// Tables below this many slots are never shrunk: too small to matter.
const SHRINK_ABOVE: usize = 1024;

/// Gives back the table of `map` once it is mostly empty: a hash table keeps the size it grew
/// to, so after a burst of connections left, their slots would stay allocated for good.
/// Rehashes under each shard's write lock, which is why it runs from the sweep, not on a
/// departure.
pub(crate) fn shrink_sparse<K, V>(map: &DashMap<K, V>)
where
    K: Eq + std::hash::Hash,
{
    let capacity = map.capacity();
    if capacity > SHRINK_ABOVE && map.len() * 4 < capacity {
        map.shrink_to_fit();
    }
}

impl AppHub {
    /// Gives back the tables of the app's channels, connections and users once a crowd has
    /// left (`shrink_sparse`).
    pub fn shrink(&self) {
        self.channels.shrink();
        shrink_sparse(&self.connections);
        self.users.shrink();
        self.watchers.shrink();
    }

    pub(crate) fn new(app: Arc<App>, metrics: &Metrics, clustered: bool, tap: Tap) -> AppHub {
        let m = metrics.app(app.id.as_str());
        AppHub {
            id: app.id.clone(),
            channels: ChannelRegistry::new(m.clone()),
            users: UserRegistry::default(),
            watchers: WatcherRegistry::default(),
            connections: DashMap::new(),
            connection_count: AtomicU64::new(0),
            metrics: m,
            deflate: app
                .settings
                .deflate_threshold
                .map(|threshold| DeflatePolicy {
                    threshold,
                    metrics: metrics.compression.clone(),
                }),
            backend_limiter: Mutex::new(
                app.settings
                    .max_backend_events_per_second
                    .map(TokenBucket::new),
            ),
            read_limiter: Mutex::new(
                app.settings
                    .max_read_requests_per_second
                    .map(TokenBucket::new),
            ),
            idempotency: KeyStore::new(
                app.settings.idempotency_max_keys,
                app.settings.idempotency_max_bytes,
                metrics.idempotency_evictions.clone(),
            ),
            history: app
                .settings
                .history
                .clone()
                .filter(|_| !clustered)
                .map(ChannelHistory::new),
            shared_history: app.settings.history.clone().filter(|_| clustered),
            tap,
            app: RwLock::new(app),
        }
    }

    /// The app as it is defined now.
    pub fn app(&self) -> Arc<App> {
        self.app.read().clone()
    }

    /// Replaces the app's definition (a reload): what reads it from now on (new connections,
    /// HTTP requests, signatures, channel auth) sees the new one; a changed rate limit starts
    /// with a full bucket.
    pub fn set_app(&self, app: Arc<App>) {
        let old = std::mem::replace(&mut *self.app.write(), app.clone());
        let (s, o) = (&app.settings, &old.settings);
        if s.max_backend_events_per_second != o.max_backend_events_per_second {
            *self.backend_limiter.lock() = s.max_backend_events_per_second.map(TokenBucket::new);
        }
        if s.max_read_requests_per_second != o.max_read_requests_per_second {
            *self.read_limiter.lock() = s.max_read_requests_per_second.map(TokenBucket::new);
        }
    }

    /// Takes `cost` from the backend event budget; `true` without a limit.
    pub fn take_backend_events(&self, cost: u32) -> bool {
        self.backend_limiter
            .lock()
            .as_mut()
            .is_none_or(|l| l.try_take(cost))
    }

    /// Takes one read request from its budget; `true` without a limit.
    pub fn take_read_request(&self) -> bool {
        self.read_limiter
            .lock()
            .as_mut()
            .is_none_or(|l| l.try_take(1))
    }

    /// Reserves a connection slot under `max_connections`.
    pub fn try_reserve_connection(&self) -> bool {
        let max = self.app().settings.max_connections.unwrap_or(u64::MAX);
        let prev = self.connection_count.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.connection_count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release_connection(&self) {
        self.connection_count.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn connection_count(&self) -> u64 {
        self.connection_count.load(Ordering::Acquire)
    }

    /// Closes every connection of the app on this node with `kind`'s code.
    pub fn close_all(&self, kind: ErrorKind) {
        for c in self.connections.iter() {
            c.value().close(kind.clone());
        }
    }

    /// Closes this node's connections signed in as `user` (and, with `presence`, those present
    /// as `user` on a presence channel) with 4009.
    pub fn terminate_user(&self, user: &str, presence: bool) {
        self.users.terminate(user);
        if presence {
            for c in self.connections.iter() {
                if c.value().is_present_as(user) {
                    c.value().close(ErrorKind::Terminated);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_a_crowd_left_is_given_back_and_a_busy_one_kept() {
        let map: DashMap<u64, u64> = DashMap::new();
        for i in 0..20_000 {
            map.insert(i, i);
        }
        let grown = map.capacity();
        shrink_sparse(&map);
        assert_eq!(map.capacity(), grown, "a full table is left alone");
        for i in 0..19_900 {
            map.remove(&i);
        }
        shrink_sparse(&map);
        assert!(
            map.capacity() < grown / 10,
            "{} slots kept of {grown} for 100 entries",
            map.capacity()
        );
        assert_eq!(map.len(), 100);
        assert!((19_900..20_000).all(|i| map.get(&i).is_some_and(|v| *v == i)));
    }
}
