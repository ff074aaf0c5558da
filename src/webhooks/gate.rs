//! [`EventGate`]: decides, per app, whether and when each emitted event goes out. Sans-IO:
//! every call takes `now`, and the dispatcher sleeps until [`EventGate::next_due`].
//!
//! It owns three rules:
//! * protocol.md 6.4: `channel_vacated` / `member_removed` are held for the removal delay, and a
//!   matching `channel_occupied` (same channel) / `member_added` (same channel and user) that
//!   arrives meanwhile cancels the held removal and is itself dropped;
//! * protocol.md 2.7: at most one `cache_miss` per channel per [`CACHE_MISS_WINDOW`];
//! * protocol.md 6.2: for channels above [`SUBSCRIPTION_COUNT_BUSY`] subscribers, at most one
//!   `subscription_count` per channel per [`SUBSCRIPTION_COUNT_INTERVAL`], the latest count
//!   winning.
//!
//! It does not know about targets, batching or HTTP; released events go to every target
//! that wants them, so pairing is decided once per app, not per URL.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::event::WebhookEvent;

/// At most one `cache_miss` webhook per channel within this window.
pub const CACHE_MISS_WINDOW: Duration = Duration::from_secs(5);
/// Minimum spacing of `subscription_count` webhooks for a busy channel.
pub const SUBSCRIPTION_COUNT_INTERVAL: Duration = Duration::from_secs(5);
/// Channels with more subscribers than this get throttled `subscription_count` webhooks.
pub const SUBSCRIPTION_COUNT_BUSY: u64 = 100;

/// What the gate did with an admitted event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send now.
    Release(WebhookEvent),
    /// Kept; it comes back out of [`EventGate::pop_due`] later.
    Held,
    /// Dropped, for this reason.
    Suppressed(Suppression),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suppression {
    /// The re-add arrived while its removal was held: both are dropped.
    RejoinedInTime,
    /// A second removal for something whose removal is already held.
    DuplicateRemoval,
    /// A `cache_miss` for a channel that had one within [`CACHE_MISS_WINDOW`].
    RepeatedCacheMiss,
    /// A busy channel's count folded into the one already held.
    CountCoalesced,
}

impl Suppression {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Suppression::RejoinedInTime => "rejoined_in_time",
            Suppression::DuplicateRemoval => "duplicate_removal",
            Suppression::RepeatedCacheMiss => "repeated_cache_miss",
            Suppression::CountCoalesced => "count_coalesced",
        }
    }
}

/// What a held event is held under; at most one held event per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HoldKey {
    Vacated(String),
    MemberRemoved { channel: String, user_id: String },
    Count(String),
}

/// Position in the due order: deadline, then arrival (so equal deadlines keep emit order).
type Slot = (Instant, u64);

struct Held {
    slot: Slot,
    event: WebhookEvent,
    /// The token of a removal's cluster-wide hold (see `RemovalHold`).
    token: Option<u64>,
}

/// Per-app admission state; see the module docs.
#[derive(Default)]
pub(crate) struct EventGate {
    due: BTreeMap<Slot, HoldKey>,
    held: HashMap<HoldKey, Held>,
    next_seq: u64,
    cache_misses: RecentKeys,
    counts_sent: RecentKeys,
}

impl EventGate {
    pub(crate) fn new() -> Self {
        EventGate::default()
    }

    /// Admits one emitted event at `now`. `removal_delay` is the app's current setting; zero
    /// releases removals at once (and a re-add still cancels a removal held from before).
    /// `token`: a removal's cluster-wide hold, given back with it when it falls due.
    pub(crate) fn admit(
        &mut self,
        event: WebhookEvent,
        token: Option<u64>,
        removal_delay: Duration,
        now: Instant,
    ) -> Admission {
        match &event {
            WebhookEvent::ChannelVacated { channel } => {
                let key = HoldKey::Vacated(channel.clone());
                self.hold_removal(key, event, token, removal_delay, now)
            }
            WebhookEvent::MemberRemoved { channel, user_id } => {
                let key = HoldKey::MemberRemoved {
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                };
                self.hold_removal(key, event, token, removal_delay, now)
            }
            WebhookEvent::ChannelOccupied { channel } => {
                let key = HoldKey::Vacated(channel.clone());
                self.cancel_or_release(&key, event)
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                let key = HoldKey::MemberRemoved {
                    channel: channel.clone(),
                    user_id: user_id.clone(),
                };
                self.cancel_or_release(&key, event)
            }
            WebhookEvent::CacheMiss { channel } => {
                if self
                    .cache_misses
                    .last_seen(channel, CACHE_MISS_WINDOW, now)
                    .is_some()
                {
                    Admission::Suppressed(Suppression::RepeatedCacheMiss)
                } else {
                    self.cache_misses.record(channel.clone(), now);
                    Admission::Release(event)
                }
            }
            WebhookEvent::SubscriptionCount {
                channel,
                subscription_count,
            } => {
                let channel = channel.clone();
                let count = *subscription_count;
                self.admit_count(channel, count, event, now)
            }
            WebhookEvent::ClientEvent { .. } => Admission::Release(event),
        }
    }

    fn hold_removal(
        &mut self,
        key: HoldKey,
        event: WebhookEvent,
        token: Option<u64>,
        delay: Duration,
        now: Instant,
    ) -> Admission {
        if self.held.contains_key(&key) {
            if token.is_none() {
                return Admission::Suppressed(Suppression::DuplicateRemoval);
            }
            // A new cluster-wide hold: the one held here was taken away by a re-add on
            // another node, so this removal is the one that counts.
            self.unhold(&key);
        }
        if delay.is_zero() {
            return Admission::Release(event);
        }
        self.hold(key, event, token, now + delay);
        Admission::Held
    }

    fn cancel_or_release(&mut self, key: &HoldKey, event: WebhookEvent) -> Admission {
        if self.unhold(key).is_some() {
            Admission::Suppressed(Suppression::RejoinedInTime)
        } else {
            Admission::Release(event)
        }
    }

    fn admit_count(
        &mut self,
        channel: String,
        count: u64,
        event: WebhookEvent,
        now: Instant,
    ) -> Admission {
        let key = HoldKey::Count(channel.clone());
        if let Some(held) = self.held.get_mut(&key) {
            if count > SUBSCRIPTION_COUNT_BUSY {
                held.event = event;
                return Admission::Suppressed(Suppression::CountCoalesced);
            }
            // The channel calmed down: the fresh count supersedes the held one.
            self.unhold(&key);
        }
        let last = self
            .counts_sent
            .last_seen(&channel, SUBSCRIPTION_COUNT_INTERVAL, now);
        match last {
            Some(last) if count > SUBSCRIPTION_COUNT_BUSY => {
                self.hold(key, event, None, last + SUBSCRIPTION_COUNT_INTERVAL);
                Admission::Held
            }
            _ => {
                self.counts_sent.record(channel, now);
                Admission::Release(event)
            }
        }
    }

    fn hold(&mut self, key: HoldKey, event: WebhookEvent, token: Option<u64>, at: Instant) {
        let slot = (at, self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.due.insert(slot, key.clone());
        self.held.insert(key, Held { slot, event, token });
    }

    fn unhold(&mut self, key: &HoldKey) -> Option<WebhookEvent> {
        let held = self.held.remove(key)?;
        self.due.remove(&held.slot);
        Some(held.event)
    }

    /// When the earliest held event falls due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes the earliest held event, with its hold's token, if it is due at `now`. Call
    /// until `None`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(WebhookEvent, Option<u64>)> {
        let (&slot, _) = self.due.first_key_value()?;
        if slot.0 > now {
            return None;
        }
        let key = self.due.remove(&slot)?;
        let held = self.held.remove(&key)?;
        if let HoldKey::Count(channel) = key {
            self.counts_sent.record(channel, now);
        }
        Some((held.event, held.token))
    }

    /// Takes every held event in due order, with their tokens (used on shutdown: the server
    /// is going away, so the removals it holds are final unless a re-add took their hold).
    pub(crate) fn drain(&mut self) -> Vec<(WebhookEvent, Option<u64>)> {
        let due = std::mem::take(&mut self.due);
        due.into_values()
            .filter_map(|key| self.held.remove(&key).map(|held| (held.event, held.token)))
            .collect()
    }

    /// Number of held events.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

/// Remembers when each key was last recorded, forgetting keys older than the window asked
/// for. Memory is bounded by the number of records within the window.
#[derive(Default)]
struct RecentKeys {
    last: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl RecentKeys {
    /// When `key` was last recorded, if within `window` of `now`; forgets older records.
    fn last_seen(&mut self, key: &str, window: Duration, now: Instant) -> Option<Instant> {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((at, old)) = self.order.pop_front() {
                if self.last.get(&old) == Some(&at) {
                    self.last.remove(&old);
                }
            }
        }
        self.last.get(key).copied()
    }

    fn record(&mut self, key: String, now: Instant) {
        self.last.insert(key.clone(), now);
        self.order.push_back((now, key));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(3);

    fn occupied(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied {
            channel: channel.into(),
        }
    }
    fn vacated(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated {
            channel: channel.into(),
        }
    }
    fn added(channel: &str, user: &str) -> WebhookEvent {
        WebhookEvent::MemberAdded {
            channel: channel.into(),
            user_id: user.into(),
        }
    }
    fn removed(channel: &str, user: &str) -> WebhookEvent {
        WebhookEvent::MemberRemoved {
            channel: channel.into(),
            user_id: user.into(),
        }
    }
    fn count(channel: &str, n: u64) -> WebhookEvent {
        WebhookEvent::SubscriptionCount {
            channel: channel.into(),
            subscription_count: n,
        }
    }
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn drain_due(gate: &mut EventGate, now: Instant) -> Vec<WebhookEvent> {
        std::iter::from_fn(|| gate.pop_due(now).map(|(event, _)| event)).collect()
    }

    #[test]
    fn occupied_without_a_pending_vacate_is_released() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(
            gate.admit(occupied("a"), None, DELAY, t0),
            Admission::Release(occupied("a"))
        );
    }

    #[test]
    fn vacate_is_held_for_the_delay_then_released() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(gate.admit(vacated("a"), None, DELAY, t0), Admission::Held);
        assert_eq!(gate.next_due(), Some(t0 + DELAY));
        assert!(drain_due(&mut gate, t0 + secs(2)).is_empty());
        assert_eq!(drain_due(&mut gate, t0 + DELAY), vec![vacated("a")]);
        assert_eq!(gate.next_due(), None);
        // After it went out, a re-occupy is a real change again.
        assert_eq!(
            gate.admit(occupied("a"), None, DELAY, t0 + secs(4)),
            Admission::Release(occupied("a"))
        );
    }

    #[test]
    fn quick_reoccupy_cancels_both() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(gate.admit(vacated("a"), None, DELAY, t0), Admission::Held);
        assert_eq!(
            gate.admit(occupied("a"), None, DELAY, t0 + secs(1)),
            Admission::Suppressed(Suppression::RejoinedInTime)
        );
        assert_eq!(gate.held(), 0);
        assert!(drain_due(&mut gate, t0 + secs(10)).is_empty());
    }

    #[test]
    fn reoccupy_of_another_channel_does_not_cancel() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        gate.admit(vacated("a"), None, DELAY, t0);
        assert_eq!(
            gate.admit(occupied("b"), None, DELAY, t0),
            Admission::Release(occupied("b"))
        );
        assert_eq!(drain_due(&mut gate, t0 + DELAY), vec![vacated("a")]);
    }

    #[test]
    fn member_pairs_match_on_channel_and_user() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(
            gate.admit(removed("presence-a", "1"), None, DELAY, t0),
            Admission::Held
        );
        assert_eq!(
            gate.admit(added("presence-a", "2"), None, DELAY, t0),
            Admission::Release(added("presence-a", "2"))
        );
        assert_eq!(
            gate.admit(added("presence-b", "1"), None, DELAY, t0),
            Admission::Release(added("presence-b", "1"))
        );
        assert_eq!(
            gate.admit(added("presence-a", "1"), None, DELAY, t0 + secs(2)),
            Admission::Suppressed(Suppression::RejoinedInTime)
        );
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn last_member_and_vacate_fire_in_emit_order() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        gate.admit(removed("presence-a", "1"), None, DELAY, t0);
        gate.admit(vacated("presence-a"), None, DELAY, t0);
        assert_eq!(
            drain_due(&mut gate, t0 + DELAY),
            vec![removed("presence-a", "1"), vacated("presence-a")]
        );
    }

    #[test]
    fn zero_delay_releases_at_once() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(
            gate.admit(vacated("a"), None, Duration::ZERO, t0),
            Admission::Release(vacated("a"))
        );
        assert_eq!(
            gate.admit(removed("p", "1"), None, Duration::ZERO, t0),
            Admission::Release(removed("p", "1"))
        );
        assert_eq!(
            gate.admit(occupied("a"), None, Duration::ZERO, t0),
            Admission::Release(occupied("a"))
        );
    }

    #[test]
    fn duplicate_removal_is_dropped() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        gate.admit(vacated("a"), None, DELAY, t0);
        assert_eq!(
            gate.admit(vacated("a"), None, DELAY, t0 + secs(1)),
            Admission::Suppressed(Suppression::DuplicateRemoval)
        );
        assert_eq!(drain_due(&mut gate, t0 + DELAY), vec![vacated("a")]);
    }

    #[test]
    fn a_removal_held_cluster_wide_comes_back_with_its_token_and_a_newer_hold_replaces_it() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        let gone = removed("presence-a", "1");
        assert_eq!(
            gate.admit(gone.clone(), Some(7), DELAY, t0),
            Admission::Held
        );
        // The user came back on another node (taking hold 7) and left again there... then
        // here: this node's newer removal, with its own hold, is the one to settle.
        assert_eq!(
            gate.admit(gone.clone(), Some(9), DELAY, t0 + secs(2)),
            Admission::Held
        );
        assert_eq!(
            gate.pop_due(t0 + DELAY),
            None,
            "restarted with the new hold"
        );
        assert_eq!(gate.pop_due(t0 + secs(2) + DELAY), Some((gone, Some(9))));
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn drain_returns_everything_in_due_order() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        gate.admit(vacated("b"), None, DELAY, t0 + secs(1));
        gate.admit(vacated("a"), None, DELAY, t0);
        assert_eq!(
            gate.drain(),
            vec![(vacated("a"), None), (vacated("b"), None)]
        );
        assert_eq!(gate.next_due(), None);
        assert_eq!(gate.held(), 0);
    }

    #[test]
    fn cache_miss_at_most_once_per_window() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        let miss = WebhookEvent::CacheMiss {
            channel: "cache-a".into(),
        };
        let other = WebhookEvent::CacheMiss {
            channel: "cache-b".into(),
        };
        assert_eq!(
            gate.admit(miss.clone(), None, DELAY, t0),
            Admission::Release(miss.clone())
        );
        assert_eq!(
            gate.admit(miss.clone(), None, DELAY, t0 + secs(1)),
            Admission::Suppressed(Suppression::RepeatedCacheMiss)
        );
        assert_eq!(
            gate.admit(other.clone(), None, DELAY, t0 + secs(1)),
            Admission::Release(other)
        );
        assert_eq!(
            gate.admit(miss.clone(), None, DELAY, t0 + CACHE_MISS_WINDOW),
            Admission::Release(miss)
        );
    }

    #[test]
    fn recent_keys_forget_old_entries() {
        let mut keys = RecentKeys::default();
        let t0 = Instant::now();
        for i in 0..100 {
            keys.record(format!("c{i}"), t0);
        }
        keys.record("c0".into(), t0 + secs(3));
        assert_eq!(keys.last_seen("c1", secs(5), t0 + secs(6)), None);
        assert_eq!(
            keys.last_seen("c0", secs(5), t0 + secs(6)),
            Some(t0 + secs(3))
        );
        assert_eq!(keys.last.len(), 1);
        assert_eq!(keys.order.len(), 1);
    }

    #[test]
    fn quiet_channel_counts_are_not_throttled() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        for n in 1..=5 {
            assert_eq!(
                gate.admit(count("a", n), None, DELAY, t0),
                Admission::Release(count("a", n))
            );
        }
    }

    #[test]
    fn busy_channel_counts_are_coalesced_to_one_per_interval() {
        let mut gate = EventGate::new();
        let t0 = Instant::now();
        assert_eq!(
            gate.admit(count("a", 101), None, DELAY, t0),
            Admission::Release(count("a", 101))
        );
        assert_eq!(
            gate.admit(count("a", 102), None, DELAY, t0 + secs(1)),
            Admission::Held
        );
        assert_eq!(
            gate.admit(count("a", 103), None, DELAY, t0 + secs(2)),
            Admission::Suppressed(Suppression::CountCoalesced)
        );
        assert_eq!(gate.next_due(), Some(t0 + SUBSCRIPTION_COUNT_INTERVAL));
        assert!(drain_due(&mut gate, t0 + secs(4)).is_empty());
        assert_eq!(drain_due(&mut gate, t0 + secs(5)), vec![count("a", 103)]);
        // The release counts as the last send: the next busy count waits again.
        assert_eq!(
            gate.admit(count("a", 104), None, DELAY, t0 + secs(6)),
            Admission::Held
        );
        assert_eq!(gate.next_due(), Some(t0 + secs(10)));
        // Dropping back under the threshold sends the fresh count and forgets the held one.
        assert_eq!(
            gate.admit(count("a", 50), None, DELAY, t0 + secs(7)),
            Admission::Release(count("a", 50))
        );
        assert_eq!(gate.held(), 0);
    }
}
