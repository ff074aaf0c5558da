//! The [`Journal`] seam: where a node keeps the webhook requests it has released but not
//! finished, so that they outlive the node.
//!
//! A lane records each request (one target, one or more events) before its first attempt and
//! forgets it once the request is finished (delivered, rejected, or given up after the retry
//! window). What is still recorded when a node dies is handed to a surviving node (or the
//! node's successor) as [`Replay`]s, which it delivers through its own lanes without
//! recording them again: they are already in its journal. Delivery stays at-least-once; a
//! node killed between a receiver's 2xx and the `forget` causes one duplicate.
//!
//! The cluster backend implements the journal (`cluster::journal`, a Redis stream per
//! node); [`MemoryJournal`] keeps entries in memory for tests. Without a cluster there is no
//! journal: nothing would outlive the process anyway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::event::WebhookEvent;

/// The journal's name for one recorded request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JournalId(pub String);

/// One request as recorded: whose, where to, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The app the events belong to (its key and secret sign the replayed request).
    #[serde(rename = "a")]
    pub app_id: String,
    /// The target URL, matched against the app's configured targets on replay.
    #[serde(rename = "u")]
    pub url: String,
    /// The events of the request, in order.
    #[serde(rename = "e")]
    pub events: Vec<WebhookEvent>,
}

impl JournalEntry {
    /// The stored form (compact JSON).
    pub fn encode(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Reads the stored form back.
    pub fn decode(text: &str) -> Result<JournalEntry, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A recorded request taken over from a node that died, to deliver again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Its id in this node's journal.
    pub id: JournalId,
    pub entry: JournalEntry,
}

/// Keeps released requests until they are finished. Both calls are best effort: a journal
/// that cannot record answers `None` and delivery goes on without it (counted by the
/// implementation).
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Records a request before its first attempt.
    async fn record(&self, entry: &JournalEntry) -> Option<JournalId>;
    /// Drops a finished request.
    async fn forget(&self, id: &JournalId);
    /// Held removals of `app_id` falling due, each with the token of its cluster-wide hold
    /// (see [`RemovalHold`](super::RemovalHold)): which of them are still to be sent. A re-add
    /// on any node takes the hold away, and with it the removal. Without a shared store each
    /// one is.
    async fn settle(&self, app_id: &str, due: &[(&WebhookEvent, u64)]) -> Vec<bool> {
        let _ = app_id;
        vec![true; due.len()]
    }
}

/// A journal in memory, in record order. It survives nothing; it lets tests see what a lane
/// records and forgets.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, JournalEntry>>,
}

impl MemoryJournal {
    /// What is recorded and not yet forgotten, oldest first.
    pub fn pending(&self) -> Vec<JournalEntry> {
        self.entries.lock().values().cloned().collect()
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn record(&self, entry: &JournalEntry) -> Option<JournalId> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries.lock().insert(id, entry.clone());
        Some(JournalId(id.to_string()))
    }

    async fn forget(&self, id: &JournalId) {
        if let Ok(id) = id.0.parse::<u64>() {
            self.entries.lock().remove(&id);
        }
    }
}

/// How long a verdict of [`SettleOnce`] is remembered: longer than any removal falls due
/// after another sink's copy of it on the same node.
const VERDICT_KEPT: std::time::Duration = std::time::Duration::from_secs(120);
/// Verdicts remembered at most (the oldest are forgotten first beyond).
const VERDICTS_MAX: usize = 65_536;

/// A [`Journal`] whose [`Journal::settle`] is asked once per hold token on this node, however
/// many sinks hold the same removal (the webhooks and the Redis stream sinks each hold their
/// copy): settling takes the hold away, so a second settle of the same token would wrongly
/// find it gone. The first sink to ask settles it; later ones get the same verdict, for
/// [`VERDICT_KEPT`]. Everything else is passed to the wrapped journal.
pub struct SettleOnce {
    inner: std::sync::Arc<dyn Journal>,
    verdicts: Mutex<Verdicts>,
}

#[derive(Default)]
struct Verdicts {
    by_token: std::collections::HashMap<u64, std::sync::Arc<tokio::sync::OnceCell<bool>>>,
    order: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl SettleOnce {
    pub fn new(inner: std::sync::Arc<dyn Journal>) -> SettleOnce {
        SettleOnce {
            inner,
            verdicts: Mutex::new(Verdicts::default()),
        }
    }

    /// The verdict cell of `token`, made on first use; forgets cells past their time.
    fn cell(&self, token: u64) -> std::sync::Arc<tokio::sync::OnceCell<bool>> {
        let now = std::time::Instant::now();
        let mut v = self.verdicts.lock();
        while let Some(&(at, old)) = v.order.front() {
            if now.saturating_duration_since(at) < VERDICT_KEPT && v.order.len() < VERDICTS_MAX {
                break;
            }
            v.order.pop_front();
            v.by_token.remove(&old);
        }
        if let Some(cell) = v.by_token.get(&token) {
            return cell.clone();
        }
        let cell = std::sync::Arc::new(tokio::sync::OnceCell::new());
        v.by_token.insert(token, cell.clone());
        v.order.push_back((now, token));
        cell
    }
}

#[async_trait]
impl Journal for SettleOnce {
    async fn record(&self, entry: &JournalEntry) -> Option<JournalId> {
        self.inner.record(entry).await
    }

    async fn forget(&self, id: &JournalId) {
        self.inner.forget(id).await
    }

    async fn settle(&self, app_id: &str, due: &[(&WebhookEvent, u64)]) -> Vec<bool> {
        let mut out = Vec::with_capacity(due.len());
        for &(event, token) in due {
            // No lock is held while the wrapped journal answers: the cell itself makes a
            // second asker of the same token wait for the first one's verdict.
            let cell = self.cell(token);
            let kept = cell
                .get_or_init(|| async {
                    let verdict = self.inner.settle(app_id, &[(event, token)]).await;
                    verdict.first().copied().unwrap_or(true)
                })
                .await;
            out.push(*kept);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_stored_form() {
        let entry = JournalEntry {
            app_id: "1".into(),
            url: "https://example.test/hooks?token=a".into(),
            events: vec![
                WebhookEvent::ChannelOccupied {
                    channel: "a".into(),
                },
                WebhookEvent::MemberRemoved {
                    channel: "presence-b".into(),
                    user_id: "42".into(),
                },
            ],
        };
        let text = entry.encode().unwrap();
        assert!(
            text.starts_with(r#"{"a":"1","u":"https://example.test"#),
            "{text}"
        );
        assert_eq!(JournalEntry::decode(&text).unwrap(), entry);
        assert!(JournalEntry::decode("{}").is_err());
    }

    #[tokio::test]
    async fn memory_journal_keeps_what_is_not_forgotten_in_order() {
        let journal = MemoryJournal::default();
        let entry = |n: &str| JournalEntry {
            app_id: "1".into(),
            url: "http://127.0.0.1/h".into(),
            events: vec![WebhookEvent::ChannelOccupied { channel: n.into() }],
        };
        let a = journal.record(&entry("a")).await.unwrap();
        let _b = journal.record(&entry("b")).await.unwrap();
        let c = journal.record(&entry("c")).await.unwrap();
        journal.forget(&a).await;
        journal.forget(&c).await;
        assert_eq!(journal.pending(), vec![entry("b")]);
    }

    /// Settles by taking each hold away, as the cluster's store does: a second settle of the
    /// same token finds nothing.
    #[derive(Default)]
    struct TakingJournal {
        asked: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl Journal for TakingJournal {
        async fn record(&self, _: &JournalEntry) -> Option<JournalId> {
            None
        }
        async fn forget(&self, _: &JournalId) {}
        async fn settle(&self, _: &str, due: &[(&WebhookEvent, u64)]) -> Vec<bool> {
            let mut asked = self.asked.lock();
            due.iter()
                .map(|(_, token)| {
                    let first = !asked.contains(token);
                    asked.push(*token);
                    first && token % 2 == 1
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn settle_once_gives_every_sink_the_first_verdict() {
        let inner = std::sync::Arc::new(TakingJournal::default());
        let once = SettleOnce::new(inner.clone());
        let vacated = WebhookEvent::ChannelVacated {
            channel: "a".into(),
        };
        assert_eq!(
            once.settle("1", &[(&vacated, 3), (&vacated, 4)]).await,
            [true, false]
        );
        assert_eq!(once.settle("1", &[(&vacated, 3)]).await, [true]);
        assert_eq!(once.settle("1", &[(&vacated, 4)]).await, [false]);
        assert_eq!(
            *inner.asked.lock(),
            [3, 4],
            "the store is asked once per token"
        );
    }
}
