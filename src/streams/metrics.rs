//! The stream sinks' Prometheus metrics, registered once, and [`AppMetrics`], one app's
//! handles resolved when its queue opens so the emit path never hashes label values.
//! Labels: `app_id` and, on `dropped`, a `reason` from a fixed set; keys and channels never.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Why entries were not written (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The app's queue held `queue_bytes` already (newest dropped).
    QueueFull,
    /// Redis answered the `XADD` with an error (wrong type, out of memory, ...).
    Rejected,
    /// Emitted after shutdown began, or still queued when its grace ended.
    Shutdown,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Every metric family of the stream sinks.
#[derive(Clone)]
pub(crate) struct StreamMetrics {
    written: IntCounterVec,
    dropped: IntCounterVec,
    queue_bytes: IntGaugeVec,
    queue_entries: IntGaugeVec,
    write_seconds: Histogram,
    write_failures: IntCounter,
}

impl StreamMetrics {
    /// Registers `{prefix}_written_total`, `_dropped_total`, `_queue_bytes`,
    /// `_queue_entries`, `_write_seconds` and `_write_failures_total`.
    pub(crate) fn register(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let written = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_written_total"),
                "Entries written to Redis streams, by app",
            ),
            &["app_id"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_dropped_total"),
                "Stream entries dropped, by app and reason",
            ),
            &["app_id", "reason"],
        )?;
        let queue_bytes = IntGaugeVec::new(
            Opts::new(
                format!("{prefix}_queue_bytes"),
                "Bytes of events waiting to be written, by app",
            ),
            &["app_id"],
        )?;
        let queue_entries = IntGaugeVec::new(
            Opts::new(
                format!("{prefix}_queue_entries"),
                "Events waiting to be written, by app",
            ),
            &["app_id"],
        )?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                format!("{prefix}_write_seconds"),
                "Time of one pipeline of XADDs, sent to answered",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let write_failures = IntCounter::new(
            format!("{prefix}_write_failures_total"),
            "Pipelines that failed (Redis unreachable, timed out); their entries wait and are retried",
        )?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(queue_bytes.clone()))?;
        registry.register(Box::new(queue_entries.clone()))?;
        registry.register(Box::new(write_seconds.clone()))?;
        registry.register(Box::new(write_failures.clone()))?;
        Ok(StreamMetrics {
            written,
            dropped,
            queue_bytes,
            queue_entries,
            write_seconds,
            write_failures,
        })
    }

    pub(crate) fn for_app(&self, app_id: &str) -> AppMetrics {
        AppMetrics {
            written: self.written.with_label_values(&[app_id]),
            dropped: DropReason::ALL.map(|r| self.dropped.with_label_values(&[app_id, r.as_str()])),
            queue_bytes: self.queue_bytes.with_label_values(&[app_id]),
            queue_entries: self.queue_entries.with_label_values(&[app_id]),
            write_seconds: self.write_seconds.clone(),
            write_failures: self.write_failures.clone(),
        }
    }
}

/// One app's handles.
#[derive(Clone)]
pub(crate) struct AppMetrics {
    pub(crate) written: IntCounter,
    dropped: [IntCounter; 3],
    pub(crate) queue_bytes: IntGauge,
    pub(crate) queue_entries: IntGauge,
    pub(crate) write_seconds: Histogram,
    pub(crate) write_failures: IntCounter,
}

impl AppMetrics {
    pub(crate) fn dropped(&self, reason: DropReason) -> &IntCounter {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        &self.dropped[i]
    }
}
