//! The connection slots an admitted socket holds, as one guard: one of the node's
//! `server.max_connections`, one of its app's `max_connections` on this node and, in cluster
//! mode, one of the app's cluster-wide count (spec 1.2, checks 8 and 9).
//!
//! Every way out of the handshake and of the connection gives them back through this guard:
//! `release` on the paths that can wait, `Drop` on the others (the cluster-wide slot is then
//! given back from a task, since it takes a round trip to the shared store).

use std::sync::Arc;

use tracing::debug;

use crate::protocol::ErrorKind;
use crate::state::{AppHub, ServerState};

/// The slots of one admitted socket; given back exactly once.
pub struct ConnectionSlot {
    state: Arc<ServerState>,
    hub: Arc<AppHub>,
    /// The app's cluster-wide count was raised for this socket.
    counted: bool,
    released: bool,
}

impl ConnectionSlot {
    /// Reserves the node's slot, then the app's slot on this node. On a refusal nothing is
    /// held.
    pub fn reserve(
        state: &Arc<ServerState>,
        hub: Arc<AppHub>,
    ) -> Result<ConnectionSlot, ErrorKind> {
        if !state.try_reserve_node_connection() {
            return Err(ErrorKind::OverCapacity);
        }
        if !hub.try_reserve_connection() {
            state.release_node_connection();
            return Err(ErrorKind::OverQuota {
                close_code: hub.app.settings.over_quota_close_code,
            });
        }
        Ok(ConnectionSlot {
            state: state.clone(),
            hub,
            counted: false,
            released: false,
        })
    }

    /// Reserves the app's slot cluster-wide (its quota is counted across nodes). When the
    /// shared store does not answer, the node's own limits stand alone and the socket is
    /// admitted.
    pub async fn reserve_cluster(&mut self) -> Result<(), ErrorKind> {
        let max = self.hub.app.settings.max_connections;
        match self.state.cluster.open_connection(&self.hub, max).await {
            Ok(true) => {
                self.counted = true;
                Ok(())
            }
            Ok(false) => Err(ErrorKind::OverQuota {
                close_code: self.hub.app.settings.over_quota_close_code,
            }),
            Err(e) => {
                debug!(error = %e, "cluster connection count unavailable");
                Ok(())
            }
        }
    }

    /// The app this slot belongs to.
    pub fn hub(&self) -> &Arc<AppHub> {
        &self.hub
    }

    /// Gives every slot back, waiting for the shared store.
    pub async fn release(mut self) {
        self.release_local();
        if std::mem::take(&mut self.counted) {
            if let Err(e) = self.state.cluster.close_connection(&self.hub).await {
                debug!(error = %e, "cluster connection count not updated");
            }
        }
    }

    fn release_local(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.hub.release_connection();
            self.state.release_node_connection();
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.release_local();
        if std::mem::take(&mut self.counted) {
            let (state, hub) = (self.state.clone(), self.hub.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = state.cluster.close_connection(&hub).await {
                        debug!(error = %e, "cluster connection count not updated");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{App, AppId, AppKey, AppSecret, AppSettings, StaticAppStore};
    use crate::cluster::Local;
    use crate::config::ServerConfig;
    use crate::metrics::Metrics;
    use crate::presence::MemoryPresence;
    use crate::webhooks::{DispatcherSettings, Webhooks};

    /// A node that admits `node_max` sockets, serving one app that admits `app_max`.
    fn node(node_max: u64, app_max: u64) -> (Arc<ServerState>, Arc<AppHub>) {
        let metrics = Arc::new(Metrics::new("test").unwrap_or_else(|e| panic!("{e}")));
        let hooks = Webhooks::start(
            DispatcherSettings::default(),
            &metrics.registry,
            "test_webhooks",
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let app = Arc::new(App {
            id: AppId(Arc::from("1")),
            key: AppKey(Arc::from("key")),
            secret: AppSecret(Arc::from("secret")),
            settings: AppSettings {
                max_connections: Some(app_max),
                ..AppSettings::default()
            },
            webhooks: None,
        });
        let server = ServerConfig {
            max_connections: Some(node_max),
            ..ServerConfig::default()
        };
        let state = Arc::new(ServerState::new(
            server,
            Arc::new(StaticAppStore::new(Vec::new())),
            Arc::new(MemoryPresence::default()),
            None,
            Arc::new(Local),
            metrics,
            hooks,
        ));
        let hub = state.hub(&app);
        (state, hub)
    }

    #[tokio::test]
    async fn node_capacity_refuses_and_a_dropped_slot_makes_room() {
        let (state, hub) = node(1, 10);
        let first = ConnectionSlot::reserve(&state, hub.clone());
        assert!(first.is_ok());
        let second = ConnectionSlot::reserve(&state, hub.clone());
        assert!(matches!(second, Err(ErrorKind::OverCapacity)));
        assert_eq!(hub.connection_count(), 1, "a refusal holds no app slot");
        drop(first);
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
        assert!(ConnectionSlot::reserve(&state, hub).is_ok());
    }

    #[tokio::test]
    async fn app_quota_refusal_gives_the_node_slot_back() {
        let (state, hub) = node(10, 1);
        let first =
            ConnectionSlot::reserve(&state, hub.clone()).unwrap_or_else(|e| panic!("{e:?}"));
        let second = ConnectionSlot::reserve(&state, hub.clone());
        assert!(matches!(second, Err(ErrorKind::OverQuota { .. })));
        assert_eq!(state.node_connections(), 1);
        first.release().await;
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
    }

    #[tokio::test]
    async fn one_node_counts_no_cluster_slot_and_releases_once() {
        let (state, hub) = node(10, 10);
        let mut slot =
            ConnectionSlot::reserve(&state, hub.clone()).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(slot.reserve_cluster().await.is_ok());
        slot.release().await;
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
    }
}
