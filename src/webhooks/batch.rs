//! [`Batch`]: the events waiting to share one request to one target (protocol.md 6.5 batching).
//! Sans-IO: the dispatcher passes `now` and sleeps until [`Batch::deadline`].
//!
//! A batch closes when it reaches its size limit or when its window, counted from its first
//! event, has passed. It knows nothing of apps or HTTP; the dispatcher keeps one batch per
//! target lane, which is what keeps apps and URLs from ever sharing a request.

use std::time::Duration;

use tokio::time::Instant;

use super::event::WebhookEvent;

#[derive(Debug, Default)]
pub(crate) struct Batch {
    events: Vec<WebhookEvent>,
    deadline: Option<Instant>,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Batch::default()
    }

    /// Adds `event`; returns the whole batch when this event filled it to `max_events`
    /// (0 counts as 1). The first event of a batch sets its deadline to `now + window`.
    pub(crate) fn push(
        &mut self,
        event: WebhookEvent,
        now: Instant,
        window: Duration,
        max_events: usize,
    ) -> Option<Vec<WebhookEvent>> {
        if self.events.is_empty() {
            self.deadline = Some(now + window);
        }
        self.events.push(event);
        if self.events.len() >= max_events.max(1) {
            return self.take();
        }
        None
    }

    /// When the open batch must be sent, if one is open.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The batch, if one is open and its deadline has come.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Vec<WebhookEvent>> {
        match self.deadline {
            Some(deadline) if deadline <= now => self.take(),
            _ => None,
        }
    }

    /// The batch, if one is open, whatever its deadline.
    pub(crate) fn take(&mut self) -> Option<Vec<WebhookEvent>> {
        self.deadline = None;
        if self.events.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.events))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(50);

    fn event(i: usize) -> WebhookEvent {
        WebhookEvent::ChannelOccupied {
            channel: format!("c{i}"),
        }
    }

    #[test]
    fn closes_when_full() {
        let mut batch = Batch::new();
        let t0 = Instant::now();
        assert_eq!(batch.push(event(0), t0, WINDOW, 3), None);
        assert_eq!(batch.push(event(1), t0, WINDOW, 3), None);
        assert_eq!(
            batch.push(event(2), t0, WINDOW, 3),
            Some(vec![event(0), event(1), event(2)])
        );
        assert_eq!(batch.deadline(), None);
        assert_eq!(batch.take(), None);
    }

    #[test]
    fn closes_when_the_window_from_the_first_event_passes() {
        let mut batch = Batch::new();
        let t0 = Instant::now();
        batch.push(event(0), t0, WINDOW, 100);
        batch.push(event(1), t0 + Duration::from_millis(40), WINDOW, 100);
        assert_eq!(batch.deadline(), Some(t0 + WINDOW));
        assert_eq!(batch.take_due(t0 + Duration::from_millis(49)), None);
        assert_eq!(batch.take_due(t0 + WINDOW), Some(vec![event(0), event(1)]));
        assert_eq!(batch.take_due(t0 + Duration::from_secs(1)), None);
        // The next event opens a new window.
        let t1 = t0 + Duration::from_secs(2);
        batch.push(event(2), t1, WINDOW, 100);
        assert_eq!(batch.deadline(), Some(t1 + WINDOW));
    }

    #[test]
    fn zero_max_means_one_event_per_request() {
        let mut batch = Batch::new();
        let t0 = Instant::now();
        assert_eq!(batch.push(event(0), t0, WINDOW, 0), Some(vec![event(0)]));
    }
}
