//! `ServerState`: the owners every task shares (apps, per-app hubs, presence, broadcaster,
//! metrics, webhooks, stream sinks).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::app::{App, AppId, AppStore};
use crate::broadcast::Broadcaster;
use crate::cluster::{Adapter, ClusterState, SharedHistory, SharedKeys};
use crate::config::{ConsoleConfig, ServerConfig};
use crate::hub::AppHub;
use crate::idempotency::Idempotency;
use crate::metrics::Metrics;
use crate::presence::PresenceStore;
use crate::protocol::ErrorKind;
use crate::shared_state::SharedState;
use crate::streams::{StreamEvent, StreamKind, Streams};
use crate::tap::Taps;
use crate::webhooks::{RemovalHold, WebhookEvent, Webhooks};

pub struct ServerState {
    pub server: ServerConfig,
    pub apps: Arc<dyn AppStore>,
    hubs: DashMap<AppId, Arc<AppHub>>,
    pub presence: Arc<dyn PresenceStore>,
    /// Cluster-wide facts (from the shared store, or this node's registries when alone).
    pub cluster: Arc<SharedState>,
    pub adapter: Arc<dyn Adapter>,
    pub broadcaster: Broadcaster,
    /// Idempotency keys of the HTTP API (cluster-wide with a shared store).
    pub idempotency: Idempotency,
    pub metrics: Arc<Metrics>,
    pub webhooks: Webhooks,
    /// The apps' Redis stream sinks (`Streams::off` when this node writes none).
    pub streams: Streams,
    /// Node-wide memory budgets of the connections.
    pub budgets: crate::connection::Budgets,
    /// The node's HTTP fallback sessions (pusher-js's `xhr_streaming` and `xhr_polling`).
    pub fallback: crate::http::FallbackSessions,
    /// Every app's live feed for the debug console (`Taps::off` when it is off); also the
    /// webhooks' delivery watcher.
    pub taps: Arc<Taps>,
    /// The debug console, when enabled.
    pub console: Option<crate::http::Console>,
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
        history: Option<Arc<dyn SharedHistory>>,
        keys: Option<Arc<dyn SharedKeys>>,
        adapter: Arc<dyn Adapter>,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
        streams: Streams,
        console: Option<ConsoleConfig>,
    ) -> ServerState {
        let cluster = Arc::new(SharedState::new(shared, history));
        let broadcaster = Broadcaster::new(adapter.clone(), cluster.clone(), metrics.clone());
        let budgets = crate::connection::Budgets::new(&server, &metrics);
        let idempotency = Idempotency::new(keys, metrics.idempotent_replays.clone());
        let fallback = crate::http::FallbackSessions::new(&server.fallback);
        let taps = Arc::new(match &console {
            Some(c) => Taps::new(c.buffer),
            None => Taps::off(),
        });
        if console.is_some() {
            webhooks.watch(taps.clone());
        }
        ServerState {
            server,
            apps,
            hubs: DashMap::new(),
            presence,
            cluster,
            adapter,
            broadcaster,
            idempotency,
            metrics,
            webhooks,
            streams,
            budgets,
            fallback,
            taps,
            console: console.map(crate::http::Console::new),
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
            .or_insert_with(|| {
                let clustered = self.cluster.store().is_some();
                let tap = self.taps.tap(app.id.as_str());
                Arc::new(AppHub::new(app.clone(), &self.metrics, clustered, tap))
            })
            .clone()
    }

    /// The hub of the app `id` if it has one.
    pub fn existing_hub(&self, id: &AppId) -> Option<Arc<AppHub>> {
        self.hubs.get(id).map(|h| h.clone())
    }

    /// Forgets the hub of an app that was removed.
    pub fn remove_hub(&self, id: &AppId) -> Option<Arc<AppHub>> {
        self.hubs.remove(id).map(|(_, h)| h)
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

    /// Reports a transition or client event this node decided (once per cluster) to the
    /// app's webhooks and stream sinks, if it has any. Never blocks.
    pub fn report(&self, app: &App, event: WebhookEvent) {
        self.report_held(app, event, None);
    }

    /// Like [`ServerState::report`], for a removal held cluster-wide under `hold` (see
    /// `RemovalHold`); the webhooks and the stream sinks share the hold's verdict.
    pub fn report_held(&self, app: &App, event: WebhookEvent, hold: Option<RemovalHold>) {
        let token = hold.map(|h| h.token);
        let kind = StreamKind::Webhook(event.kind());
        if let Some(s) = app
            .streams
            .as_ref()
            .filter(|s| self.streams.wants(Some(s), kind, event.channel()))
        {
            let for_streams = match &app.webhooks {
                Some(_) => event.clone(),
                None => return self.streams.emit(s, StreamEvent::Webhook(event), token),
            };
            self.streams
                .emit(s, StreamEvent::Webhook(for_streams), token);
        }
        if let Some(w) = &app.webhooks {
            self.webhooks.emit_held(w, event, token);
        }
    }

    /// Reports an event published through the HTTP API to the app's stream sinks.
    pub fn report_api_event(
        &self,
        app: &App,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: Option<&str>,
    ) {
        let Some(s) = app
            .streams
            .as_ref()
            .filter(|s| self.streams.wants(Some(s), StreamKind::ApiEvent, channel))
        else {
            return;
        };
        self.streams.emit(
            s,
            StreamEvent::Api {
                channel: channel.to_string(),
                event: event.to_string(),
                data: data.to_string(),
                socket_id: socket_id.map(str::to_string),
            },
            None,
        );
    }

    /// Whether a client event on `channel` is reported anywhere (webhooks or stream sinks):
    /// lets the session skip building it otherwise.
    pub fn reports_client_events(&self, app: &App, channel: &str) -> bool {
        app.webhooks.is_some()
            || self.streams.wants(
                app.streams.as_ref(),
                StreamKind::Webhook(crate::webhooks::WebhookKind::ClientEvent),
                channel,
            )
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
        streams: None,
    });
    let state = Arc::new(ServerState::new(
        server,
        Arc::new(StaticAppStore::new(Vec::new())),
        presence,
        None,
        None,
        None,
        adapter,
        metrics,
        hooks,
        Streams::off(),
        None,
    ));
    let hub = state.hub(&app);
    (state, app, hub)
}
