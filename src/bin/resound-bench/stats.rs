//! Accounting for what the clients receive: per-stream sequence tracking (unique, duplicate,
//! lost), latency histograms that can cross process boundaries and be merged, and the
//! summaries printed in reports.
//!
//! Pure data structures, no IO and no clocks: callers pass timestamps in.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Largest gap (in sequence numbers) the tracker keeps open before it gives up on the oldest
/// missing messages. Late arrivals older than that are counted as duplicates.
const MAX_WINDOW_BITS: u64 = 1 << 20;

/// What one received sequence number was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

/// Tracks which sequence numbers of one (publisher, channel) stream a client has seen.
///
/// Every number below `base` has been seen; `words` is a bitmap of the numbers from `base`
/// on. In-order delivery keeps the bitmap to one word; reordering grows it up to
/// `MAX_WINDOW_BITS`.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    base: u64,
    words: VecDeque<u64>,
    unique: u64,
    duplicates: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq < self.base {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        if seq - self.base >= MAX_WINDOW_BITS {
            // Too far ahead: declare the oldest gap lost and slide the window forward.
            let new_base = (seq - MAX_WINDOW_BITS + 1).next_multiple_of(64);
            let drop_words = (new_base - self.base) / 64;
            for _ in 0..drop_words {
                if self.words.pop_front().is_none() {
                    break;
                }
            }
            self.base = new_base;
        }
        let offset = seq - self.base;
        let word = usize::try_from(offset / 64).unwrap_or(usize::MAX);
        let bit = 1u64 << (offset % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let seen = match self.words.get_mut(word) {
            Some(w) if *w & bit != 0 => Seen::Duplicate,
            Some(w) => {
                *w |= bit;
                Seen::New
            }
            // `resize` above made `word` a valid index.
            None => Seen::Duplicate,
        };
        match seen {
            Seen::New => self.unique += 1,
            Seen::Duplicate => self.duplicates += 1,
        }
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        seen
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// Lost and surplus messages of one subscription given how many were published to it.
/// Surplus happens when a publish reported as failed was delivered anyway.
pub fn loss(expected: u64, unique: u64) -> (u64, u64) {
    (
        expected.saturating_sub(unique),
        unique.saturating_sub(expected),
    )
}

/// Latencies in nanoseconds, 1 µs to 10 min, three significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Option<Histogram<u64>>,
}

const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 600_000_000_000;

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3).ok(),
        }
    }

    /// Records one latency; values outside the range are clamped to it.
    pub fn record_ns(&mut self, ns: u64) {
        if let Some(h) = self.histogram.as_mut() {
            h.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
        }
    }

    /// Records the time from `sent_ns` to `received_ns` (zero if the clocks disagree).
    pub fn record_between(&mut self, sent_ns: u64, received_ns: u64) {
        self.record_ns(received_ns.saturating_sub(sent_ns));
    }

    /// The recorded buckets as (value, count) pairs, for sending to another process.
    pub fn encode(&self) -> Vec<(u64, u64)> {
        self.histogram.as_ref().map_or_else(Vec::new, |h| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        })
    }

    /// Adds buckets produced by `encode` (possibly in another process).
    pub fn merge_encoded(&mut self, buckets: &[(u64, u64)]) {
        if let Some(h) = self.histogram.as_mut() {
            for &(value, count) in buckets {
                // Values come from a histogram with the same bounds, so they are in range.
                let _ = h.record_n(value.clamp(LOWEST_NS, HIGHEST_NS), count);
            }
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        if let (Some(h), Some(o)) = (self.histogram.as_mut(), other.histogram.as_ref()) {
            let _ = h.add(o);
        }
    }

    pub fn summary(&self) -> LatencySummary {
        match self.histogram.as_ref() {
            Some(h) if !h.is_empty() => {
                let us = |ns: u64| ns as f64 / 1_000.0;
                LatencySummary {
                    count: h.len(),
                    mean_us: h.mean() / 1_000.0,
                    p50_us: us(h.value_at_quantile(0.50)),
                    p95_us: us(h.value_at_quantile(0.95)),
                    p99_us: us(h.value_at_quantile(0.99)),
                    p999_us: us(h.value_at_quantile(0.999)),
                    max_us: us(h.max()),
                }
            }
            _ => LatencySummary::default(),
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss_and_a_small_window() {
        let mut t = SeqTracker::default();
        for seq in 0..10_000 {
            assert_eq!(t.record(seq), Seen::New);
        }
        assert_eq!(t.unique(), 10_000);
        assert_eq!(t.duplicates(), 0);
        assert!(t.words.len() <= 1);
        assert_eq!(loss(10_000, t.unique()), (0, 0));
    }

    #[test]
    fn reordering_is_not_loss_and_repeats_are_duplicates() {
        let mut t = SeqTracker::default();
        for seq in [1, 0, 3, 2, 5, 4, 4, 0, 200, 100] {
            t.record(seq);
        }
        assert_eq!(t.unique(), 8);
        assert_eq!(t.duplicates(), 2);
        // 0..=5, 100 and 200 arrived: of 201 published, 193 are missing.
        assert_eq!(loss(201, t.unique()), (193, 0));
        // A late arrival fills a gap.
        assert_eq!(t.record(150), Seen::New);
        assert_eq!(t.record(150), Seen::Duplicate);
    }

    #[test]
    fn gaps_count_as_lost() {
        let mut t = SeqTracker::default();
        for seq in (0..1000).filter(|s| s % 10 != 0) {
            t.record(seq);
        }
        assert_eq!(loss(1000, t.unique()), (100, 0));
    }

    #[test]
    fn surplus_when_more_arrive_than_expected() {
        assert_eq!(loss(5, 7), (0, 2));
    }

    #[test]
    fn huge_jump_slides_the_window() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(MAX_WINDOW_BITS * 3);
        assert!(t.words.len() as u64 <= MAX_WINDOW_BITS / 64 + 1);
        assert_eq!(t.unique(), 2);
        // Something from before the window is now indistinguishable from a duplicate.
        assert_eq!(t.record(1), Seen::Duplicate);
    }

    #[test]
    fn latency_merges_across_encodings() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=1000u64 {
            a.record_ns(i * 1_000); // 1 µs .. 1 ms
        }
        b.record_ns(50_000_000); // one 50 ms outlier
        let mut merged = Latency::new();
        merged.merge_encoded(&a.encode());
        merged.merge_encoded(&b.encode());
        let s = merged.summary();
        assert_eq!(s.count, 1001);
        assert!((s.p50_us - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 5.0, "{s:?}");
        assert!((s.max_us - 50_000.0).abs() < 50.0, "{s:?}");
    }

    #[test]
    fn latency_between_clamps_clock_disagreement() {
        let mut l = Latency::new();
        l.record_between(2_000_000, 1_000_000);
        l.record_between(1_000_000, 3_000_000);
        let s = l.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 1_999.0 && s.max_us <= 2_001.0);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
