//! Messages no other node hears are not published (`[scaling] skip_unheard`).
//!
//! Without this, a node publishes every message for other nodes to Redis, and when it has
//! local subscribers of the channel itself, Redis sends the message back to it, only to be
//! dropped. A channel whose subscribers all sit on the publishing node (a partitioned
//! workload) then costs a `PUBLISH`, Redis's work and a read of the echo per message, for
//! nobody. This module decides, per topic, whether a message must go out, with no window in
//! which a node that just subscribed misses one. It is sans-IO: the backend (`pubsub.rs`)
//! asks Redis and publishes, this state machine decides.
//!
//! The rules (docs/cluster-protocol.md, "Messages no other node hears"):
//! 1. A topic becomes *quiet* when `PUBSUB NUMSUB` says no one but this node subscribes to
//!    it. The answer counts only if nothing about the topic changed while it was asked:
//!    another node's announcement, or this node's own `SUBSCRIBE`/`UNSUBSCRIBE` (`heard`),
//!    voids it.
//! 2. Every node that subscribes to a topic publishes an *announcement* (`Interest`) on the
//!    control topic once Redis confirmed the `SUBSCRIBE`, and only then answers
//!    `subscription_succeeded`. A node that hears one stops treating the topic as quiet and
//!    publishes what it held for it, in order, before anything newer.
//! 3. A message for a quiet topic is *held*, stamped with the number of the next *sync*. A
//!    sync is a message the node publishes to its own topic; Redis delivers to one
//!    connection in the order it executed the commands, so when sync `n` comes back, every
//!    announcement made before the messages stamped `≤ n` were held has been read (and would
//!    have published them). Only then are they let go.
//! 4. When the pub/sub connection is lost, announcements may be lost with it: every quiet
//!    topic ends and what it held is published. Answers asked on an earlier connection are
//!    void.
//! 5. A topic is quiet for at most `QUIET_FOR`, then asked about again (a bound on what an
//!    announcement that could not be sent costs).
//!
//! Everything is bounded: `MAX_TOPICS` quiet topics and as many remembered questions, and
//! `HELD_BYTES` held; beyond them a message is simply published (the policy is "publish":
//! skipping is only ever an optimization).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a topic stays quiet before it is asked about again.
pub(super) const QUIET_FOR: Duration = Duration::from_secs(10);
/// How soon a topic that is not quiet may be asked about again.
pub(super) const ASK_AGAIN: Duration = Duration::from_secs(2);
/// Quiet topics, and topics remembered as asked, at most (each).
pub(super) const MAX_TOPICS: usize = 65_536;
/// Bytes of messages held at most; beyond, a quiet topic's messages are published.
pub(super) const HELD_BYTES: usize = 8 * 1024 * 1024;
/// Topics in one `PUBSUB NUMSUB`.
pub(super) const ASK_BATCH: usize = 1_000;

/// A quiet topic: since when, and its messages held until a sync lets them go.
struct QuietTopic {
    since: Instant,
    /// `(stamp, message)`, oldest first; stamps never decrease.
    held: VecDeque<(u64, Bytes)>,
}

/// What to do with an offered message.
#[derive(Debug, PartialEq)]
pub(super) enum Offer {
    /// Held: no other node subscribes to the topic.
    Held,
    /// Publish it.
    Publish(Bytes),
    /// Publish these, in this order: the topic stopped being quiet.
    Flush(Vec<Bytes>),
}

/// Which background work an offer asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Wake {
    /// A topic waits to be asked about.
    pub ask: bool,
    /// A message was held since the last sync was sent.
    pub sync: bool,
}

/// The state of one node (see the module docs).
#[derive(Default)]
pub(super) struct Quiet {
    topics: HashMap<String, QuietTopic>,
    /// Quiet topics holding messages.
    holding: HashSet<String>,
    held_bytes: usize,
    /// The stamp of messages held now: the number of the next sync.
    next_sync: u64,
    /// Messages were held since the last sync was sent.
    unsynced: bool,
    /// When each topic was last asked about.
    asked: HashMap<String, Instant>,
    to_ask: Vec<String>,
    /// While a question is out: the topics that changed since it was asked (`None`: none
    /// out), and whether too many did to remember them.
    touched: Option<HashSet<String>>,
    void: bool,
    /// Counts pub/sub connections: an answer asked on an earlier one is void.
    link: u64,
    /// The pub/sub connection is subscribed.
    up: bool,
}

impl Quiet {
    /// What to do with a message for `topic`.
    pub(super) fn offer(&mut self, topic: &str, message: Bytes, now: Instant) -> (Offer, Wake) {
        let mut wake = Wake::default();
        if !self.up {
            return (Offer::Publish(message), wake);
        }
        if let Some(quiet) = self.topics.get_mut(topic) {
            if now.duration_since(quiet.since) < QUIET_FOR
                && self.held_bytes + message.len() <= HELD_BYTES
            {
                self.held_bytes += message.len();
                quiet.held.push_back((self.next_sync, message));
                if quiet.held.len() == 1 {
                    self.holding.insert(topic.to_string());
                }
                wake.sync = !self.unsynced;
                self.unsynced = true;
                return (Offer::Held, wake);
            }
            // Quiet for long enough, or too much held: published, and asked about again.
            let mut out = self.end(topic);
            out.push(message);
            wake.ask = self.want(topic, now, true);
            return (Offer::Flush(out), wake);
        }
        wake.ask = self.want(topic, now, false);
        (Offer::Publish(message), wake)
    }

    /// Queues a question about `topic` unless it was asked recently (or `again`); `true`
    /// when it is the first one waiting.
    fn want(&mut self, topic: &str, now: Instant, again: bool) -> bool {
        if self.to_ask.len() >= MAX_TOPICS {
            return false;
        }
        let full = self.asked.len() >= MAX_TOPICS;
        match self.asked.get_mut(topic) {
            Some(at) if !again && now.duration_since(*at) < ASK_AGAIN => return false,
            Some(at) => *at = now,
            None if full => return false,
            None => {
                self.asked.insert(topic.to_string(), now);
            }
        }
        self.to_ask.push(topic.to_string());
        self.to_ask.len() == 1
    }

    /// Ends a quiet topic: its held messages, oldest first.
    fn end(&mut self, topic: &str) -> Vec<Bytes> {
        let Some(quiet) = self.topics.remove(topic) else {
            return Vec::new();
        };
        self.holding.remove(topic);
        quiet
            .held
            .into_iter()
            .map(|(_, m)| {
                self.held_bytes -= m.len();
                m
            })
            .collect()
    }

    /// Someone subscribes to `topic` (another node's announcement) or this node's own
    /// subscription to it changes: it is not quiet, an answer about it that is out is void,
    /// and what it held is to be published now, oldest first.
    pub(super) fn heard(&mut self, topic: &str) -> Vec<Bytes> {
        if let Some(touched) = &mut self.touched {
            if touched.len() < MAX_TOPICS {
                touched.insert(topic.to_string());
            } else {
                self.void = true;
            }
        }
        self.end(topic)
    }

    /// The next question: the connection it is asked on and up to `ASK_BATCH` topics.
    pub(super) fn questions(&mut self, now: Instant) -> Option<(u64, Vec<String>)> {
        if !self.up || self.to_ask.is_empty() {
            self.to_ask.clear();
            return None;
        }
        let n = self.to_ask.len().min(ASK_BATCH);
        let batch: Vec<String> = self.to_ask.drain(..n).collect();
        self.touched = Some(HashSet::new());
        self.void = false;
        if self.asked.len() > MAX_TOPICS / 2 {
            self.asked
                .retain(|_, at| now.duration_since(*at) < ASK_AGAIN);
        }
        Some((self.link, batch))
    }

    /// The answer to the question asked on connection `link`: for each topic, whether
    /// another subscriber has it. Topics no one else hears become quiet, unless something
    /// about them changed meanwhile.
    pub(super) fn answered(
        &mut self,
        link: u64,
        answers: impl IntoIterator<Item = (String, bool)>,
        now: Instant,
    ) {
        let touched = self.touched.take().unwrap_or_default();
        if link != self.link || !self.up || self.void {
            return;
        }
        for (topic, heard) in answers {
            if heard || touched.contains(&topic) || self.topics.contains_key(&topic) {
                continue;
            }
            if self.topics.len() >= MAX_TOPICS {
                break;
            }
            self.topics.insert(
                topic,
                QuietTopic {
                    since: now,
                    held: VecDeque::new(),
                },
            );
        }
    }

    /// A question could not be answered: forget it.
    pub(super) fn unanswered(&mut self) {
        self.touched = None;
    }

    /// The number of the sync to send: a new one when messages were held since the last,
    /// or (`again`) the last one once more while messages are still held (it may have been
    /// lost).
    pub(super) fn sync(&mut self, again: bool) -> Option<u64> {
        if self.unsynced {
            self.unsynced = false;
            let n = self.next_sync;
            self.next_sync += 1;
            return Some(n);
        }
        (again && self.held_bytes > 0 && self.next_sync > 0).then(|| self.next_sync - 1)
    }

    /// Sync `n` came back: the messages stamped `≤ n` are let go (how many).
    pub(super) fn synced(&mut self, n: u64) -> usize {
        let mut gone = 0;
        let mut emptied = Vec::new();
        for topic in &self.holding {
            if let Some(quiet) = self.topics.get_mut(topic) {
                while quiet.held.front().is_some_and(|(stamp, _)| *stamp <= n) {
                    if let Some((_, m)) = quiet.held.pop_front() {
                        self.held_bytes -= m.len();
                        gone += 1;
                    }
                }
                if quiet.held.is_empty() {
                    emptied.push(topic.clone());
                }
            }
        }
        for topic in emptied {
            self.holding.remove(&topic);
        }
        gone
    }

    /// The pub/sub connection is subscribed (again).
    pub(super) fn connected(&mut self) {
        self.up = true;
        self.link += 1;
    }

    /// The pub/sub connection is lost (`up`: false), or skipping stops for now (`up`: true,
    /// an older node joined): no topic is quiet; what they held, per topic, oldest first.
    pub(super) fn clear(&mut self, up: bool) -> Vec<(String, Vec<Bytes>)> {
        self.up = up;
        self.link += 1;
        self.touched = None;
        self.to_ask.clear();
        self.asked.clear();
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        topics
            .into_iter()
            .filter_map(|t| {
                let held = self.end(&t);
                (!held.is_empty()).then_some((t, held))
            })
            .collect()
    }

    /// No topic is quiet.
    pub(super) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Quiet topics and held bytes (for the metrics).
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.topics.len(), self.held_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A connected node whose topic `t` was found quiet.
    fn quiet_t(now: Instant) -> Quiet {
        let mut q = Quiet::default();
        q.connected();
        let (offer, wake) = q.offer("t", m("first"), now);
        assert_eq!(offer, Offer::Publish(m("first")));
        assert!(wake.ask);
        let (link, topics) = q.questions(now).expect("a question");
        assert_eq!(topics, vec!["t".to_string()]);
        q.answered(link, [("t".to_string(), false)], now);
        q
    }

    #[test]
    fn a_topic_no_one_else_hears_holds_its_messages_until_a_sync_lets_them_go() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        let (offer, wake) = q.offer("t", m("a"), now);
        assert_eq!(offer, Offer::Held);
        assert!(wake.sync);
        assert_eq!(q.offer("t", m("b"), now).0, Offer::Held);
        let n = q.sync(false).expect("a sync");
        // Held after the sync was sent: a later sync lets it go.
        assert_eq!(q.offer("t", m("c"), now).0, Offer::Held);
        q.synced(n);
        assert_eq!(q.sizes(), (1, 1));
        // An announcement now publishes only what the syncs did not let go.
        assert_eq!(q.heard("t"), vec![m("c")]);
        assert_eq!(q.sizes(), (0, 0));
    }

    #[test]
    fn an_announcement_publishes_what_was_held_in_order_and_ends_the_quiet() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        for s in ["a", "b", "c"] {
            assert_eq!(q.offer("t", m(s), now).0, Offer::Held);
        }
        assert_eq!(q.heard("t"), vec![m("a"), m("b"), m("c")]);
        // From now on published, and not asked about again at once.
        let (offer, wake) = q.offer("t", m("d"), now);
        assert_eq!(offer, Offer::Publish(m("d")));
        assert!(!wake.ask);
    }

    #[test]
    fn an_answer_is_void_when_the_topic_changed_while_it_was_asked() {
        let now = Instant::now();
        let mut q = Quiet::default();
        q.connected();
        q.offer("t", m("x"), now);
        q.offer("u", m("x"), now);
        let (link, _) = q.questions(now).expect("a question");
        // Another node subscribed to `t` meanwhile (its announcement came first).
        q.heard("t");
        q.answered(link, [("t".into(), false), ("u".into(), false)], now);
        assert!(matches!(q.offer("t", m("y"), now).0, Offer::Publish(_)));
        assert_eq!(q.offer("u", m("y"), now).0, Offer::Held);
    }

    #[test]
    fn a_topic_someone_else_hears_is_published() {
        let now = Instant::now();
        let mut q = Quiet::default();
        q.connected();
        q.offer("t", m("x"), now);
        let (link, _) = q.questions(now).expect("a question");
        q.answered(link, [("t".into(), true)], now);
        assert!(matches!(q.offer("t", m("y"), now).0, Offer::Publish(_)));
        // Asked again only after `ASK_AGAIN`.
        assert!(!q.offer("t", m("y"), now).1.ask);
        assert!(q.offer("t", m("y"), now + ASK_AGAIN).1.ask);
    }

    #[test]
    fn a_lost_connection_publishes_everything_held_and_voids_answers_out() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        q.offer("t", m("a"), now);
        q.offer("u", m("x"), now);
        let (link, _) = q.questions(now).expect("a question");
        let flushed = q.clear(false);
        assert_eq!(flushed, vec![("t".to_string(), vec![m("a")])]);
        // Down: everything is published, nothing asked.
        assert_eq!(
            q.offer("t", m("b"), now),
            (Offer::Publish(m("b")), Wake::default())
        );
        q.connected();
        // The answer from the old connection does not count.
        q.answered(link, [("u".into(), false)], now);
        assert!(q.is_empty());
    }

    #[test]
    fn a_quiet_topic_is_asked_about_again_after_quiet_for() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        q.offer("t", m("a"), now);
        let later = now + QUIET_FOR;
        let (offer, wake) = q.offer("t", m("b"), later);
        assert_eq!(offer, Offer::Flush(vec![m("a"), m("b")]));
        assert!(wake.ask);
    }

    #[test]
    fn beyond_held_bytes_a_quiet_topic_publishes() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        let big = Bytes::from(vec![b'x'; HELD_BYTES / 2]);
        assert_eq!(q.offer("t", big.clone(), now).0, Offer::Held);
        assert_eq!(q.offer("t", big.clone(), now).0, Offer::Held);
        assert_eq!(
            q.offer("t", m("c"), now).0,
            Offer::Flush(vec![big.clone(), big, m("c")])
        );
        assert_eq!(q.sizes(), (0, 0));
    }

    #[test]
    fn a_lost_sync_is_sent_again_while_messages_are_held() {
        let now = Instant::now();
        let mut q = quiet_t(now);
        q.offer("t", m("a"), now);
        let n = q.sync(false).expect("a sync");
        assert_eq!(q.sync(false), None);
        assert_eq!(q.sync(true), Some(n));
        q.synced(n);
        assert_eq!(q.sync(true), None);
    }
}
