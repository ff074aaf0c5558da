//! `ServerState`: the owners every task shares (apps, per-app hubs, presence, broadcaster,
//! metrics, webhooks), and `AppHub`, the runtime state of one app on this node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::app::{App, AppId, AppStore};
use crate::broadcast::Broadcaster;
use crate::channels::users::{UserRegistry, WatcherRegistry};
use crate::channels::ChannelRegistry;
use crate::cluster::{Adapter, ClusterState};
use crate::config::ServerConfig;
use crate::connection::deflate::DeflatePolicy;
use crate::connection::handle::ConnRef;
use crate::metrics::{AppMetrics, Metrics};
use crate::presence::PresenceStore;
use crate::protocol::{ErrorKind, SocketId};
use crate::ratelimit::TokenBucket;
use crate::shared_state::SharedState;
use crate::webhooks::{RemovalHold, WebhookEvent, Webhooks};

/// One app's state on this node.
pub struct AppHub {
    pub app: Arc<App>,
    pub channels: ChannelRegistry,
    pub users: UserRegistry,
    pub watchers: WatcherRegistry,
    pub connections: DashMap<SocketId, ConnRef>,
    connection_count: AtomicU64,
    pub metrics: AppMetrics,
    /// How broadcasts are compressed for sockets that negotiated `permessage-deflate`; none
    /// when the app has compression off (the extension is then declined).
    pub deflate: Option<DeflatePolicy>,
    pub backend_limiter: Option<Mutex<TokenBucket>>,
    pub read_limiter: Option<Mutex<TokenBucket>>,
}

impl AppHub {
    fn new(app: Arc<App>, metrics: &Metrics) -> AppHub {
        let m = metrics.app(app.id.as_str());
        AppHub {
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

pub struct ServerState {
    pub server: ServerConfig,
    pub apps: Arc<dyn AppStore>,
    hubs: DashMap<AppId, Arc<AppHub>>,
    pub presence: Arc<dyn PresenceStore>,
    /// Cluster-wide facts (from the shared store, or this node's registries when alone).
    pub cluster: Arc<SharedState>,
    pub adapter: Arc<dyn Adapter>,
    pub broadcaster: Broadcaster,
    pub metrics: Arc<Metrics>,
    pub webhooks: Webhooks,
    /// Node-wide memory budgets of the connections.
    pub budgets: crate::connection::Budgets,
    draining: AtomicBool,
    node_connections: AtomicU64,
}

impl ServerState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server: ServerConfig,
        apps: Arc<dyn AppStore>,
        presence: Arc<dyn PresenceStore>,
        shared: Option<Arc<dyn ClusterState>>,
        adapter: Arc<dyn Adapter>,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
    ) -> ServerState {
        let cluster = Arc::new(SharedState::new(shared));
        let broadcaster = Broadcaster::new(adapter.clone(), cluster.clone(), metrics.clone());
        let budgets = crate::connection::Budgets::new(&server, &metrics);
        ServerState {
            server,
            apps,
            hubs: DashMap::new(),
            presence,
            cluster,
            adapter,
            broadcaster,
            metrics,
            webhooks,
            budgets,
            draining: AtomicBool::new(false),
            node_connections: AtomicU64::new(0),
        }
    }

    /// The hub of `app`, created on first use.
    pub fn hub(&self, app: &Arc<App>) -> Arc<AppHub> {
        if let Some(h) = self.hubs.get(&app.id) {
            return h.clone();
        }
        self.hubs
            .entry(app.id.clone())
            .or_insert_with(|| Arc::new(AppHub::new(app.clone(), &self.metrics)))
            .clone()
    }

    pub fn hubs(&self) -> Vec<Arc<AppHub>> {
        self.hubs.iter().map(|h| h.value().clone()).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops accepting connections and asks every socket to reconnect elsewhere (4200).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        for hub in self.hubs() {
            for c in hub.connections.iter() {
                c.value().close(ErrorKind::ShuttingDown);
            }
        }
    }

    pub fn try_reserve_node_connection(&self) -> bool {
        let max = self.server.max_connections.unwrap_or(u64::MAX);
        let prev = self.node_connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.node_connections.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release_node_connection(&self) {
        self.node_connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn node_connections(&self) -> u64 {
        self.node_connections.load(Ordering::Acquire)
    }

    /// Queues a webhook if the app has any target (never blocks).
    pub fn webhook(&self, app: &App, event: WebhookEvent) {
        self.held_webhook(app, event, None);
    }

    /// Queues a removal webhook held cluster-wide under `hold` (see `RemovalHold`).
    pub fn held_webhook(&self, app: &App, event: WebhookEvent, hold: Option<RemovalHold>) {
        if let Some(w) = &app.webhooks {
            self.webhooks.emit_held(w, event, hold.map(|h| h.token));
        }
    }
}

/// A node for unit tests: `server`'s settings, no shared store, and one app (`1` / `key` /
/// `secret`) with `settings` and `webhooks`, its hub created.
#[cfg(test)]
pub(crate) fn test_node(
    server: ServerConfig,
    presence: Arc<dyn PresenceStore>,
    adapter: Arc<dyn Adapter>,
    settings: crate::app::AppSettings,
    webhooks: Option<crate::webhooks::AppWebhooks>,
) -> (Arc<ServerState>, Arc<App>, Arc<AppHub>) {
    use crate::app::{AppKey, AppSecret, StaticAppStore};
    let metrics = Arc::new(Metrics::new("test").unwrap_or_else(|e| panic!("{e}")));
    let hooks = Webhooks::start(
        crate::webhooks::DispatcherSettings::default(),
        &metrics.registry,
        "test_webhooks",
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let app = Arc::new(App {
        id: AppId(Arc::from("1")),
        key: AppKey(Arc::from("key")),
        secret: AppSecret(Arc::from("secret")),
        settings,
        webhooks: webhooks.map(Arc::new),
    });
    let state = Arc::new(ServerState::new(
        server,
        Arc::new(StaticAppStore::new(Vec::new())),
        presence,
        None,
        adapter,
        metrics,
        hooks,
    ));
    let hub = state.hub(&app);
    (state, app, hub)
}
