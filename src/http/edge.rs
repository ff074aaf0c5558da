//! The HTTP edge before a connection is trusted, and the set of connection tasks a drain waits
//! for.
//!
//! Every accepted socket holds a pending slot from `accept` until its WebSocket handshake is
//! admitted (it then holds a connection slot, bounded by the connection limits, and is never
//! shed, so no reservation leaks), its HTTP task ends, or one of its requests passes the
//! signature check. Pending slots are
//! capped (`server.max_pending_connections`): at the cap, and whenever `accept` fails for want
//! of file descriptors, the oldest pending connections are shed (closed without an answer), so
//! a crowd of idle or stalled sockets can neither grow without bound nor lock out `/up` and
//! real clients. The header and body read timeouts that end most of them sooner are set where
//! the connection is served (`server.rs`) and where a body is read (`http/mod.rs`).
//!
//! The pending set is one map under one lock, taken twice per connection (admit, release)
//! for an insert or a removal: shedding the *oldest* needs one order over all of them, and
//! the lock is never held across an await nor for more than a map operation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why pending connections were shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `server.max_pending_connections` was reached by a newer connection.
    Cap,
    /// `accept` failed with EMFILE/ENFILE.
    FdExhausted,
}

impl ShedReason {
    fn label(self) -> &'static str {
        match self {
            ShedReason::Cap => "cap",
            ShedReason::FdExhausted => "fd_exhausted",
        }
    }
}

/// A read that took too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The request line and headers (`server.header_timeout`), idle keep-alive included.
    Header,
    /// A signed API request's body (`server.body_timeout`).
    Body,
}

struct EdgeMetrics {
    pending: IntGauge,
    shed: IntCounterVec,
    timeouts: IntCounterVec,
}

/// The pending connections of a listener and the tasks serving every connection.
pub struct Edge {
    max_pending: usize,
    /// Pending connections by admission order (oldest first); the token sheds one.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
    tasks: TaskTracker,
    drain: CancellationToken,
    metrics: EdgeMetrics,
}

impl Edge {
    /// An edge admitting at most `max_pending` (> 0) untrusted connections, its metrics
    /// registered in `registry` under `prefix`.
    pub fn new(
        max_pending: usize,
        registry: &Registry,
        prefix: &str,
    ) -> Result<Arc<Edge>, prometheus::Error> {
        let o = |name: &str, help: &str| Opts::new(name, help).namespace(prefix.to_string());
        let pending = IntGauge::with_opts(o(
            "http_pending_connections",
            "Accepted connections not yet upgraded to a WebSocket nor authenticated",
        ))?;
        let shed = IntCounterVec::new(
            o(
                "http_pending_shed_total",
                "Pending connections closed to make room, by reason (cap, fd_exhausted)",
            ),
            &["reason"],
        )?;
        let timeouts = IntCounterVec::new(
            o(
                "http_read_timeouts_total",
                "HTTP connections or requests ended by a read timeout, by phase (header, body)",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(timeouts.clone()))?;
        Ok(Arc::new(Edge {
            max_pending: max_pending.max(1),
            pending: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            drain: CancellationToken::new(),
            metrics: EdgeMetrics {
                pending,
                shed,
                timeouts,
            },
        }))
    }

    /// Registers a just-accepted connection as pending. At the cap the oldest pending
    /// connection is shed first, so the newest always gets in.
    pub fn admit(self: &Arc<Self>) -> Pending {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let shed = CancellationToken::new();
        let mut shed_now = 0;
        {
            let mut pending = self.pending.lock();
            while pending.len() >= self.max_pending {
                match pending.pop_first() {
                    Some((_, token)) => {
                        token.cancel();
                        shed_now += 1;
                    }
                    None => break,
                }
            }
            pending.insert(id, shed.clone());
            self.metrics.pending.set(gauge(pending.len()));
        }
        if shed_now > 0 {
            self.count_shed(ShedReason::Cap, shed_now);
        }
        Pending {
            edge: self.clone(),
            id,
            shed,
        }
    }

    /// Sheds up to `n` of the oldest pending connections; returns how many.
    pub fn shed_oldest(&self, n: usize, reason: ShedReason) -> usize {
        let mut shed_now = 0;
        {
            let mut pending = self.pending.lock();
            while shed_now < n {
                let Some((_, token)) = pending.pop_first() else {
                    break;
                };
                token.cancel();
                shed_now += 1;
            }
            self.metrics.pending.set(gauge(pending.len()));
        }
        self.count_shed(reason, shed_now);
        shed_now
    }

    /// How many connections are pending now.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    fn release(&self, id: u64) {
        let mut pending = self.pending.lock();
        if pending.remove(&id).is_some() {
            self.metrics.pending.set(gauge(pending.len()));
        }
    }

    fn count_shed(&self, reason: ShedReason, n: usize) {
        if n > 0 {
            self.metrics
                .shed
                .with_label_values(&[reason.label()])
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// Counts a read timeout.
    pub fn timed_out(&self, phase: TimeoutPhase) {
        let label = match phase {
            TimeoutPhase::Header => "header",
            TimeoutPhase::Body => "body",
        };
        self.metrics.timeouts.with_label_values(&[label]).inc();
    }

    /// Spawns a connection task the drain waits for (HTTP connections and WebSockets).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Starts the drain: HTTP connections finish the request in progress and close; no new
    /// task is expected (one spawned anyway is still waited for).
    pub fn start_draining(&self) {
        self.drain.cancel();
        self.tasks.close();
    }

    /// Completes once draining started.
    pub async fn draining(&self) {
        self.drain.cancelled().await;
    }

    /// Completes once every connection task has finished (after `start_draining`).
    pub async fn finished(&self) {
        self.tasks.wait().await;
    }

    /// Connection tasks still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An accepted connection's place among the pending ones, held by its serving task and given
/// up when dropped.
pub struct Pending {
    edge: Arc<Edge>,
    id: u64,
    shed: CancellationToken,
}

impl Pending {
    /// Completes when the edge sheds this connection: the task then drops it.
    pub async fn shed(&self) {
        self.shed.cancelled().await;
    }

    /// The handle the connection's requests carry (as a request extension).
    pub fn handle(&self) -> EdgeConn {
        EdgeConn {
            edge: self.edge.clone(),
            id: self.id,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.edge.release(self.id);
    }
}

/// What a request handler may do with its connection's place at the edge: mark it trusted
/// (no longer pending, never shed) and spawn the tasks that outlive the HTTP exchange.
#[derive(Clone)]
pub struct EdgeConn {
    edge: Arc<Edge>,
    id: u64,
}

impl EdgeConn {
    /// The connection proved it holds an app secret: it leaves the pending set.
    pub fn trusted(&self) {
        self.edge.release(self.id);
    }

    /// The edge serving this connection.
    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(max: usize) -> Arc<Edge> {
        Edge::new(max, &Registry::new(), "t").unwrap()
    }

    #[tokio::test]
    async fn the_cap_sheds_the_oldest_and_admits_the_newest() {
        let e = edge(2);
        let a = e.admit();
        let b = e.admit();
        let c = e.admit();
        assert_eq!(e.pending(), 2);
        // `a` was shed: its future completes at once; the others stay.
        tokio::time::timeout(std::time::Duration::from_millis(100), a.shed())
            .await
            .unwrap();
        assert!(futures_util::FutureExt::now_or_never(b.shed()).is_none());
        assert!(futures_util::FutureExt::now_or_never(c.shed()).is_none());
        assert_eq!(e.metrics.shed.with_label_values(&["cap"]).get(), 1);
    }

    #[tokio::test]
    async fn a_trusted_connection_is_never_shed_and_frees_its_place() {
        let e = edge(1);
        let a = e.admit();
        a.handle().trusted();
        assert_eq!(e.pending(), 0);
        let b = e.admit();
        assert!(futures_util::FutureExt::now_or_never(a.shed()).is_none());
        assert_eq!(e.shed_oldest(5, ShedReason::FdExhausted), 1);
        assert!(futures_util::FutureExt::now_or_never(b.shed()).is_some());
        assert_eq!(e.metrics.shed.with_label_values(&["fd_exhausted"]).get(), 1);
        drop(b);
        drop(a);
        assert_eq!(e.pending(), 0);
        assert_eq!(e.metrics.pending.get(), 0);
    }
}
