//! `AppHub`: one app's runtime state on this node (its registries, connection count, quotas
//! and rate limiters), created by `ServerState` when the app is first used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::app::App;
use crate::channels::users::{UserRegistry, WatcherRegistry};
use crate::channels::ChannelRegistry;
use crate::connection::handle::ConnRef;
use crate::metrics::{AppMetrics, Metrics};
use crate::protocol::{ErrorKind, SocketId};
use crate::ratelimit::TokenBucket;

/// One app's state on this node.
pub struct AppHub {
    pub app: Arc<App>,
    pub channels: ChannelRegistry,
    pub users: UserRegistry,
    pub watchers: WatcherRegistry,
    pub connections: DashMap<SocketId, ConnRef>,
    connection_count: AtomicU64,
    pub metrics: AppMetrics,
    pub backend_limiter: Option<Mutex<TokenBucket>>,
    pub read_limiter: Option<Mutex<TokenBucket>>,
}

impl AppHub {
    pub(crate) fn new(app: Arc<App>, metrics: &Metrics) -> AppHub {
        let m = metrics.app(app.id.as_str());
        AppHub {
            channels: ChannelRegistry::new(m.clone()),
            users: UserRegistry::default(),
            watchers: WatcherRegistry::default(),
            connections: DashMap::new(),
            connection_count: AtomicU64::new(0),
            metrics: m,
            backend_limiter: app
                .settings
                .max_backend_events_per_second
                .map(|r| Mutex::new(TokenBucket::new(r))),
            read_limiter: app
                .settings
                .max_read_requests_per_second
                .map(|r| Mutex::new(TokenBucket::new(r))),
            app,
        }
    }

    /// Reserves a connection slot under `max_connections`.
    pub fn try_reserve_connection(&self) -> bool {
        let max = self.app.settings.max_connections.unwrap_or(u64::MAX);
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
