//! The channels one connection is subscribed to, as a vector searched in order.
//!
//! Most connections hold one to a few channels and `max_channels_per_connection` caps them
//! (100 by default), so a scan costs less than hashing the name, and the vector holds exactly
//! what it needs: a hash map's first insert reserves four buckets, about 400 bytes that every
//! idle connection carried for its one channel (BENCHMARKS.md, "Memory per connection").

use crate::protocol::ChannelName;

/// Channel name → what the subscription holds; at most one entry per name.
pub(super) struct Subscriptions<S> {
    entries: Vec<(ChannelName, S)>,
}

impl<S> Subscriptions<S> {
    pub(super) fn new() -> Self {
        Subscriptions {
            entries: Vec::new(),
        }
    }

    pub(super) fn get_key_value(&self, name: &str) -> Option<(&ChannelName, &S)> {
        self.entries
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(n, s)| (n, s))
    }

    pub(super) fn contains_key(&self, name: &ChannelName) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds or replaces the entry of `name`. The first entry takes room for one only; later
    /// ones grow the vector as usual.
    pub(super) fn insert(&mut self, name: ChannelName, sub: S) {
        if let Some(entry) = self.entries.iter_mut().find(|(n, _)| *n == name) {
            entry.1 = sub;
            return;
        }
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        self.entries.push((name, sub));
    }

    /// Removes the entry of `name` (the order of the others may change).
    pub(super) fn remove(&mut self, name: &ChannelName) -> Option<S> {
        let at = self.entries.iter().position(|(n, _)| n == name)?;
        let (_, sub) = self.entries.swap_remove(at);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(sub)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &S> {
        self.entries.iter().map(|(_, s)| s)
    }

    pub(super) fn names(&self) -> Vec<ChannelName> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        match ChannelName::parse(s, 200) {
            Ok(n) => n,
            Err(e) => panic!("{s}: {e:?}"),
        }
    }

    #[test]
    fn one_channel_takes_room_for_one() {
        let mut subs = Subscriptions::new();
        subs.insert(name("a"), 1u8);
        assert_eq!(subs.entries.capacity(), 1);
        assert_eq!(subs.get_key_value("a").map(|(_, s)| *s), Some(1));
        assert!(subs.contains_key(&name("a")));
        assert_eq!(subs.get_key_value("b"), None);
    }

    #[test]
    fn insert_replaces_and_remove_frees() {
        let mut subs = Subscriptions::new();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            subs.insert(name(n), i);
        }
        subs.insert(name("b"), 9);
        assert_eq!(subs.len(), 3);
        assert_eq!(subs.get_key_value("b").map(|(_, s)| *s), Some(9));
        assert_eq!(subs.remove(&name("a")), Some(0));
        assert_eq!(subs.remove(&name("a")), None);
        let mut left = subs.names();
        left.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(left, vec![name("b"), name("c")]);
        subs.remove(&name("b"));
        subs.remove(&name("c"));
        assert_eq!(subs.len(), 0);
        assert_eq!(subs.entries.capacity(), 0);
    }
}
