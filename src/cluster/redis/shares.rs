//! This node's shares of the cluster-wide tallies (connections per app, subscriptions per
//! channel, signed-in connections per user) as the node itself counted them.
//!
//! Every own tally change is recorded here before it is sent, whether or not Redis then
//! records it; a resync writes these counts as the node's shares, adjusting the totals by the
//! difference, in one script per batch. The gate makes that exact: own tally changes hold it
//! shared for their one round trip, a resync holds it alone, so no own change is in flight
//! while the counts are read and written, and none can land after the resync having already
//! been counted by it. A change recorded here but lost by Redis (unreachable, restarted, a
//! failed command) is therefore repaired by the next resync, and nothing is counted twice.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::keys::Tally;

/// One share: a tally and the item it counts (`item` is empty for connections).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Share {
    pub what: Tally,
    pub app: Box<str>,
    pub item: Box<str>,
}

/// The node's own counts and the gate between own changes and a resync (see module docs).
#[derive(Default)]
pub(super) struct Shares {
    counts: Mutex<HashMap<Share, u64>>,
    gate: RwLock<()>,
}

impl Shares {
    /// Held by an own tally change while it is recorded and sent.
    pub(super) async fn changing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Held by a resync: waits for own changes in flight, holds back new ones.
    pub(super) async fn resyncing(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Records `delta` on a share; a count never goes below 0, and a share at 0 is forgotten.
    pub(super) fn add(&self, what: Tally, app: &str, item: &str, delta: i64) {
        let share = Share {
            what,
            app: app.into(),
            item: item.into(),
        };
        let mut counts = self.counts.lock();
        let now = counts
            .get(&share)
            .copied()
            .unwrap_or(0)
            .saturating_add_signed(delta);
        if now == 0 {
            counts.remove(&share);
        } else {
            counts.insert(share, now);
        }
    }

    /// Every share above 0.
    pub(super) fn all(&self) -> Vec<(Share, u64)> {
        self.counts
            .lock()
            .iter()
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_changes_and_forget_zero() {
        let s = Shares::default();
        s.add(Tally::Subscriptions, "a", "ch", 1);
        s.add(Tally::Subscriptions, "a", "ch", 1);
        s.add(Tally::Connections, "a", "", 1);
        s.add(Tally::Subscriptions, "a", "ch", -1);
        let mut all = s.all();
        all.sort_by_key(|(s, _)| s.item.clone());
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].0.item.as_ref(), "ch");
        assert_eq!(all[1].1, 1);
        s.add(Tally::Subscriptions, "a", "ch", -1);
        s.add(Tally::Connections, "a", "", -1);
        assert!(s.all().is_empty());
        // A removal never counted (Redis lost it before this node started) stays at 0.
        s.add(Tally::Users, "a", "u", -1);
        assert!(s.all().is_empty());
    }

    #[tokio::test]
    async fn a_resync_waits_for_changes_in_flight() {
        let s = std::sync::Arc::new(Shares::default());
        let change = s.changing().await;
        let s2 = s.clone();
        let resync = tokio::spawn(async move {
            let _alone = s2.resyncing().await;
        });
        tokio::task::yield_now().await;
        assert!(!resync.is_finished());
        drop(change);
        tokio::time::timeout(std::time::Duration::from_secs(1), resync)
            .await
            .expect("the resync proceeds once the change is done")
            .expect("joined");
    }
}
