//! The backend's Prometheus metrics (`{prefix}_cluster_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The backend's handles, registered once at connect.
pub(super) struct Metrics {
    pub publishes: IntCounter,
    pub receives: IntCounter,
    pub reconnects: IntCounter,
    pub dropped: IntCounterVec,
    pub publish_queue: IntGauge,
    pub publish_backlog: IntGauge,
    pub healthy: IntGauge,
    pub reaped: IntCounter,
    pub publish_lag: Histogram,
    pub receive_lag: Histogram,
    pub unheard: IntCounter,
    pub quiet_topics: IntGauge,
}

/// Buckets of the lag histograms, in seconds.
const LAG_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Metrics {
    pub(super) fn new(registry: &Registry, prefix: &str) -> Result<Metrics, prometheus::Error> {
        let o = |n: &str, h: &str| Opts::new(n, h).namespace(prefix.to_string());
        let lag = |n: &str, h: &str| {
            HistogramOpts::new(n, h)
                .namespace(prefix.to_string())
                .buckets(LAG_BUCKETS.to_vec())
        };
        let m = Metrics {
            publishes: IntCounter::with_opts(o(
                "cluster_publishes_total",
                "Messages published to other nodes",
            ))?,
            receives: IntCounter::with_opts(o(
                "cluster_receives_total",
                "Messages received from other nodes",
            ))?,
            reconnects: IntCounter::with_opts(o(
                "cluster_reconnects_total",
                "Pub/sub reconnections to the backend",
            ))?,
            dropped: IntCounterVec::new(
                o(
                    "cluster_dropped_total",
                    "Cluster messages not delivered, by reason",
                ),
                &["reason"],
            )?,
            publish_queue: IntGauge::with_opts(o(
                "cluster_publish_queue",
                "Messages waiting to be published",
            ))?,
            publish_backlog: IntGauge::with_opts(o(
                "cluster_publish_backlog_bytes",
                "Bytes of the messages waiting to be published (bounded by scaling.publish_backlog_bytes)",
            ))?,
            healthy: IntGauge::with_opts(o("cluster_healthy", "1 while the backend is reachable"))?,
            reaped: IntCounter::with_opts(o(
                "cluster_reaped_nodes_total",
                "Dead nodes whose state this node removed",
            ))?,
            publish_lag: Histogram::with_opts(lag(
                "cluster_publish_lag_seconds",
                "Time from queueing a message for other nodes to Redis acknowledging its PUBLISH",
            ))?,
            receive_lag: Histogram::with_opts(lag(
                "cluster_receive_lag_seconds",
                "Time from publishing on another node (its wall clock) to receipt here",
            ))?,
            unheard: IntCounter::with_opts(o(
                "cluster_unheard_total",
                "Messages not published because no other node subscribes to their topic (scaling.skip_unheard)",
            ))?,
            quiet_topics: IntGauge::with_opts(o(
                "cluster_quiet_topics",
                "Topics no other node subscribes to, whose messages are not published",
            ))?,
        };
        registry.register(Box::new(m.publishes.clone()))?;
        registry.register(Box::new(m.receives.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.publish_queue.clone()))?;
        registry.register(Box::new(m.publish_backlog.clone()))?;
        registry.register(Box::new(m.healthy.clone()))?;
        registry.register(Box::new(m.reaped.clone()))?;
        registry.register(Box::new(m.publish_lag.clone()))?;
        registry.register(Box::new(m.receive_lag.clone()))?;
        registry.register(Box::new(m.unheard.clone()))?;
        registry.register(Box::new(m.quiet_topics.clone()))?;
        Ok(m)
    }
}
