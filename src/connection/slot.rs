//! The connection slots an admitted socket holds, as one guard: one of the node's
//! `server.max_connections`, one of its app's `max_connections` on this node and, in cluster
//! mode, one of the app's cluster-wide count (protocol.md 1.2, checks 8 and 9).
//!
//! Every way out of the handshake and of the connection gives them back through this guard:
//! `release` on the paths that can wait, `Drop` on the others (the cluster-wide slot is then
//! given back from a task, since it takes a round trip to the shared store).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::debug;

use crate::hub::AppHub;
use crate::protocol::ErrorKind;
use crate::state::ServerState;

/// Open WebSockets per client address, within `server.max_connections_per_ip`.
pub struct PerIp {
    max: Option<u32>,
    open: DashMap<IpAddr, u32>,
}

impl PerIp {
    /// Gives back the table once most addresses are gone (`hub::shrink_sparse`).
    pub fn shrink(&self) {
        crate::hub::shrink_sparse(&self.open);
    }

    pub fn new(max: Option<u32>) -> PerIp {
        PerIp {
            max,
            open: DashMap::new(),
        }
    }

    /// Takes one of `ip`'s connections; `false` at the limit.
    fn try_take(&self, ip: IpAddr) -> bool {
        let Some(max) = self.max else {
            return true;
        };
        let mut open = self.open.entry(ip).or_insert(0);
        if *open >= max {
            return false;
        }
        *open += 1;
        true
    }

    /// Gives one of `ip`'s connections back; an address with none left is forgotten.
    fn give_back(&self, ip: IpAddr) {
        if self.max.is_none() {
            return;
        }
        if let Some(mut open) = self.open.get_mut(&ip) {
            *open = open.saturating_sub(1);
        }
        self.open.remove_if(&ip, |_, open| *open == 0);
    }

    /// Addresses holding connections now.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

/// The process's resident memory against `server.max_memory_bytes`, read from `/proc` at
/// most every [`MemoryWatch::EVERY`] (a connection storm reads it a few times a second, not
/// once per socket).
pub struct MemoryWatch {
    max: Option<u64>,
    since: Instant,
    /// Milliseconds after `since` of the last reading; `u64::MAX` before the first.
    read_at: AtomicU64,
    rss: AtomicU64,
}

impl MemoryWatch {
    const EVERY: Duration = Duration::from_millis(250);

    pub fn new(max: Option<u64>) -> MemoryWatch {
        MemoryWatch {
            max,
            since: Instant::now(),
            read_at: AtomicU64::new(u64::MAX),
            rss: AtomicU64::new(0),
        }
    }

    /// Whether the process is above the limit (never without one, or where `/proc` cannot
    /// be read).
    fn over(&self) -> bool {
        let Some(max) = self.max else {
            return false;
        };
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.read_at.load(Ordering::Acquire);
        let stale = last == u64::MAX || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        // One caller reads; the others use the value it leaves.
        if stale
            && self
                .read_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            if let Some(rss) = resident_bytes() {
                self.rss.store(rss, Ordering::Release);
            }
        }
        self.rss.load(Ordering::Acquire) > max
    }
}

/// `VmRSS` of this process, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The slots of one admitted socket; given back exactly once.
pub struct ConnectionSlot {
    state: Arc<ServerState>,
    hub: Arc<AppHub>,
    /// The client address counted against `server.max_connections_per_ip`.
    ip: Option<IpAddr>,
    /// The app's cluster-wide count was raised for this socket.
    counted: bool,
    released: bool,
}

impl ConnectionSlot {
    /// Checks the process's memory, then reserves the node's slot, one of the client
    /// address's (`ip`) and the app's slot on this node. On a refusal nothing is held.
    pub fn reserve(
        state: &Arc<ServerState>,
        hub: Arc<AppHub>,
        ip: Option<IpAddr>,
    ) -> Result<ConnectionSlot, ErrorKind> {
        let limits = &state.budgets;
        if limits.memory.over() {
            state.metrics.memory_refusals.inc();
            return Err(ErrorKind::OverCapacity);
        }
        if !state.try_reserve_node_connection() {
            return Err(ErrorKind::OverCapacity);
        }
        if let Some(ip) = ip {
            if !limits.per_ip.try_take(ip) {
                state.release_node_connection();
                state.metrics.per_ip_refusals.inc();
                return Err(ErrorKind::OverCapacity);
            }
        }
        if !hub.try_reserve_connection() {
            if let Some(ip) = ip {
                limits.per_ip.give_back(ip);
            }
            state.release_node_connection();
            return Err(ErrorKind::OverQuota {
                close_code: hub.app().settings.over_quota_close_code,
            });
        }
        Ok(ConnectionSlot {
            state: state.clone(),
            hub,
            ip,
            counted: false,
            released: false,
        })
    }

    /// Reserves the app's slot cluster-wide (its quota is counted across nodes). When the
    /// shared store does not answer, the node's own limits stand alone and the socket is
    /// admitted, counted as the store's resync will record it (so its close is counted too).
    pub async fn reserve_cluster(&mut self) -> Result<(), ErrorKind> {
        let max = self.hub.app().settings.max_connections;
        match self.state.cluster.open_connection(&self.hub, max).await {
            Ok(true) => {
                self.counted = true;
                Ok(())
            }
            Ok(false) => Err(ErrorKind::OverQuota {
                close_code: self.hub.app().settings.over_quota_close_code,
            }),
            Err(e) => {
                debug!(error = %e, "cluster connection count unavailable");
                self.counted = true;
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
            if let Some(ip) = self.ip {
                self.state.budgets.per_ip.give_back(ip);
            }
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
    use crate::app::AppSettings;
    use crate::cluster::Local;
    use crate::config::ServerConfig;
    use crate::presence::MemoryPresence;

    /// A node that admits `node_max` sockets, serving one app that admits `app_max`.
    fn node(node_max: u64, app_max: u64) -> (Arc<ServerState>, Arc<AppHub>) {
        let server = ServerConfig {
            max_connections: Some(node_max),
            ..ServerConfig::default()
        };
        let settings = AppSettings {
            max_connections: Some(app_max),
            ..AppSettings::default()
        };
        let (state, _, hub) = crate::state::test_node(
            server,
            Arc::new(MemoryPresence::default()),
            Arc::new(Local),
            settings,
            None,
        );
        (state, hub)
    }

    #[tokio::test]
    async fn node_capacity_refuses_and_a_dropped_slot_makes_room() {
        let (state, hub) = node(1, 10);
        let first = ConnectionSlot::reserve(&state, hub.clone(), None);
        assert!(first.is_ok());
        let second = ConnectionSlot::reserve(&state, hub.clone(), None);
        assert!(matches!(second, Err(ErrorKind::OverCapacity)));
        assert_eq!(hub.connection_count(), 1, "a refusal holds no app slot");
        drop(first);
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
        assert!(ConnectionSlot::reserve(&state, hub, None).is_ok());
    }

    #[tokio::test]
    async fn app_quota_refusal_gives_the_node_slot_back() {
        let (state, hub) = node(10, 1);
        let first =
            ConnectionSlot::reserve(&state, hub.clone(), None).unwrap_or_else(|e| panic!("{e:?}"));
        let second = ConnectionSlot::reserve(&state, hub.clone(), None);
        assert!(matches!(second, Err(ErrorKind::OverQuota { .. })));
        assert_eq!(state.node_connections(), 1);
        first.release().await;
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
    }

    #[tokio::test]
    async fn one_node_counts_no_cluster_slot_and_releases_once() {
        let (state, hub) = node(10, 10);
        let mut slot =
            ConnectionSlot::reserve(&state, hub.clone(), None).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(slot.reserve_cluster().await.is_ok());
        slot.release().await;
        assert_eq!((state.node_connections(), hub.connection_count()), (0, 0));
    }

    #[test]
    fn per_ip_counts_each_address_and_forgets_it_at_zero() {
        let limit = PerIp::new(Some(2));
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
            "10.0.0.2".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(limit.try_take(a) && limit.try_take(a));
        assert!(!limit.try_take(a), "a third connection from one address");
        assert!(limit.try_take(b), "another address has its own count");
        limit.give_back(a);
        assert!(limit.try_take(a));
        for _ in 0..2 {
            limit.give_back(a);
        }
        limit.give_back(b);
        assert_eq!(limit.addresses(), 0);
        let unlimited = PerIp::new(None);
        assert!((0..100).all(|_| unlimited.try_take(a)));
        assert_eq!(unlimited.addresses(), 0, "no limit, no map");
    }

    #[test]
    fn memory_watch_compares_the_resident_size_with_the_limit() {
        assert!(
            MemoryWatch::new(Some(1)).over(),
            "any process holds more than a byte"
        );
        assert!(!MemoryWatch::new(Some(u64::MAX)).over());
        assert!(!MemoryWatch::new(None).over());
        assert!(resident_bytes().is_some_and(|b| b > 1024 * 1024));
    }
}
