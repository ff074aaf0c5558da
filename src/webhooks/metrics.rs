//! The module's Prometheus metrics, registered once in the registry given to
//! `Webhooks::start`, and [`AppMetrics`], the per-app handles resolved once per app so the
//! emit path never hashes label values.
//!
//! Labels are `app_id` (bounded by configuration) and, on `dropped`, a `reason` from a fixed
//! set. URLs and channel names are never labels.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::error::WebhookError;

/// Why events were dropped before a request carried them (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The app's queue was full when `emit` was called (newest dropped).
    QueueFull,
    /// A target's request backlog was full (the receiver is slow or down).
    BacklogFull,
    /// Emitted after shutdown began.
    Shutdown,
    /// The target's URL cannot be used.
    InvalidTarget,
    /// Replays adopted from a dead node found the wait for room in the app's queue full
    /// (they stay in this node's journal).
    ReplayBacklogFull,
}

impl DropReason {
    const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::BacklogFull,
        DropReason::Shutdown,
        DropReason::InvalidTarget,
        DropReason::ReplayBacklogFull,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::BacklogFull => "backlog_full",
            DropReason::Shutdown => "shutdown",
            DropReason::InvalidTarget => "invalid_target",
            DropReason::ReplayBacklogFull => "replay_backlog_full",
        }
    }
}

/// What happened to a request in the journal (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JournalOp {
    /// Recorded before its first attempt.
    Recorded,
    /// The journal could not record it (delivery went on without).
    Unrecorded,
    /// Taken over from a node that died, to deliver again.
    Replayed,
}

impl JournalOp {
    const ALL: [JournalOp; 3] = [
        JournalOp::Recorded,
        JournalOp::Unrecorded,
        JournalOp::Replayed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            JournalOp::Recorded => "recorded",
            JournalOp::Unrecorded => "unrecorded",
            JournalOp::Replayed => "replayed",
        }
    }
}

/// All webhook metric families.
#[derive(Clone)]
pub(crate) struct WebhookMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    retried: IntCounterVec,
    dropped: IntCounterVec,
    queue_depth: IntGaugeVec,
    journal: IntCounterVec,
}

impl WebhookMetrics {
    /// Creates and registers `{prefix}_sent_total`, `{prefix}_failed_total`,
    /// `{prefix}_retried_total`, `{prefix}_dropped_total`, `{prefix}_queue_depth` and
    /// `{prefix}_journal_total`.
    pub(crate) fn register(registry: &Registry, prefix: &str) -> Result<Self, WebhookError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(format!("{prefix}_{name}"), help), labels)
        };
        let metrics = WebhookMetrics {
            sent: counter(
                "sent_total",
                "Webhook requests answered with a 2xx status.",
                &["app_id"],
            )?,
            failed: counter(
                "failed_total",
                "Webhook requests given up (non-retryable answer, retry window used up, or unbuildable).",
                &["app_id"],
            )?,
            retried: counter(
                "retried_total",
                "Webhook request attempts repeated after a retryable failure.",
                &["app_id"],
            )?,
            dropped: counter(
                "dropped_total",
                "Webhook events dropped before delivery, by reason.",
                &["app_id", "reason"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    format!("{prefix}_queue_depth"),
                    "Webhook events waiting in the app's queue.",
                ),
                &["app_id"],
            )?,
            journal: counter(
                "journal_total",
                "Webhook requests recorded in the cluster journal, not recorded (journal unreachable), or replayed from a node that died.",
                &["app_id", "op"],
            )?,
        };
        registry.register(Box::new(metrics.sent.clone()))?;
        registry.register(Box::new(metrics.failed.clone()))?;
        registry.register(Box::new(metrics.retried.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.journal.clone()))?;
        Ok(metrics)
    }

    /// The handles of one app.
    pub(crate) fn for_app(&self, app_id: &str) -> AppMetrics {
        let labels = [app_id];
        let dropped = DropReason::ALL
            .map(|reason| self.dropped.with_label_values(&[app_id, reason.as_str()]));
        AppMetrics {
            sent: self.sent.with_label_values(&labels),
            failed: self.failed.with_label_values(&labels),
            retried: self.retried.with_label_values(&labels),
            dropped,
            queue_depth: self.queue_depth.with_label_values(&labels),
            journal: JournalOp::ALL
                .map(|op| self.journal.with_label_values(&[app_id, op.as_str()])),
        }
    }
}

/// One app's metric handles (cheap to clone: each is an `Arc` inside).
#[derive(Clone)]
pub(crate) struct AppMetrics {
    pub(crate) sent: IntCounter,
    pub(crate) failed: IntCounter,
    pub(crate) retried: IntCounter,
    dropped: [IntCounter; 5],
    pub(crate) queue_depth: IntGauge,
    journal: [IntCounter; 3],
}

impl AppMetrics {
    pub(crate) fn dropped(&self, reason: DropReason) -> &IntCounter {
        // The array is built from DropReason::ALL, whose order matches the discriminants.
        &self.dropped[reason as usize]
    }

    pub(crate) fn journal(&self, op: JournalOp) -> &IntCounter {
        // Built from JournalOp::ALL, in discriminant order.
        &self.journal[op as usize]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn registers_prefixed_families_once() {
        let registry = Registry::new();
        let metrics = WebhookMetrics::register(&registry, "resound_webhooks").unwrap();
        let app = metrics.for_app("1");
        app.sent.inc();
        app.dropped(DropReason::BacklogFull).inc_by(2);
        app.queue_depth.set(3);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_owned())
            .collect();
        for name in [
            "resound_webhooks_sent_total",
            "resound_webhooks_dropped_total",
            "resound_webhooks_queue_depth",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert_eq!(
            metrics
                .dropped
                .with_label_values(&["1", "backlog_full"])
                .get(),
            2
        );
        assert_eq!(
            metrics
                .dropped
                .with_label_values(&["1", "queue_full"])
                .get(),
            0
        );
        // A second registration under the same prefix is refused, not silently shared.
        assert!(WebhookMetrics::register(&registry, "resound_webhooks").is_err());
    }

    #[test]
    fn drop_reason_order_matches_the_handle_array() {
        for (index, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index);
        }
    }
}
