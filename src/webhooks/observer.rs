//! `DeliveryWatch`: the seam through which someone outside the module (the debug console's
//! taps) hears how each webhook request ended. The dispatcher asks `watching` first, so a
//! report is only built when someone listens; `finished` must not block.

/// How one webhook request ended, for a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub app_id: String,
    /// `host:port` of the target: its URL may carry credentials.
    pub host: String,
    /// `event_name:channel` of each event in the request.
    pub events: Vec<String>,
    /// `delivered`, `rejected` (a status not worth retrying), `gave_up` (retry window used
    /// up) or `not_built`.
    pub outcome: &'static str,
    /// The receiver's status, when it answered one that ended the delivery.
    pub status: Option<u16>,
    pub attempts: u32,
    /// The last failure of a request given up.
    pub failure: Option<String>,
}

/// Hears the outcome of every webhook request (set once with `Webhooks::watch`).
pub trait DeliveryWatch: Send + Sync {
    /// Whether a report for `app_id` is wanted now.
    fn watching(&self, app_id: &str) -> bool;
    /// A request of an app it was watching has finished. Must not block.
    fn finished(&self, report: DeliveryReport);
}
