//! Idempotent publishing (protocol.md 11.1): an HTTP API request, or one event of a batch,
//! may carry a key; a retry with the same key within the app's window is answered like the
//! first and publishes nothing again. `Idempotency` decides where keys live: in the shared
//! store of a cluster (`cluster::SharedKeys`), so a retry that lands on another node is
//! recognised, or on one node in the app's `KeyStore`. It does not parse requests: the HTTP
//! layer finds the keys and the fingerprint and renders the outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntCounter;

use crate::cluster::{Claim, ClusterError, SharedKeys, PENDING};
use crate::hub::AppHub;

/// Where idempotency keys live (see the module docs).
pub struct Idempotency {
    shared: Option<Arc<dyn SharedKeys>>,
    replays: IntCounter,
}

impl Idempotency {
    /// `shared`: the cluster's store, `None` on a single node. `replays` counts requests
    /// answered from a remembered key.
    pub fn new(shared: Option<Arc<dyn SharedKeys>>, replays: IntCounter) -> Idempotency {
        Idempotency { shared, replays }
    }

    /// Takes `key` for a request with `fingerprint`, or says what holds it. A cluster whose
    /// store cannot be reached gives an error: the key cannot be checked cluster-wide.
    pub async fn claim(
        &self,
        hub: &AppHub,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, ClusterError> {
        let claim = match &self.shared {
            Some(store) => store.claim_key(&hub.id, key, fingerprint).await?,
            None => hub.idempotency.claim(key, fingerprint, Instant::now()),
        };
        if matches!(claim, Claim::Done(_)) {
            self.replays.inc();
        }
        Ok(claim)
    }

    /// Remembers the answer of the request that claimed `key`, for the app's window.
    pub async fn complete(&self, hub: &AppHub, key: &str, fingerprint: &str, answer: &Bytes) {
        let window = hub.app().settings.idempotency_window;
        match &self.shared {
            Some(store) => {
                if let Err(e) = store
                    .complete_key(&hub.id, key, fingerprint, answer, window)
                    .await
                {
                    // The pending claim expires on its own; until then retries get 409.
                    tracing::warn!(error = %e, "idempotency key answer not recorded");
                }
            }
            None => hub
                .idempotency
                .complete(key, fingerprint, answer, window, Instant::now()),
        }
    }

    /// Frees a claimed `key` whose request failed, so that a retry publishes.
    pub async fn release(&self, hub: &AppHub, key: &str, fingerprint: &str) {
        match &self.shared {
            Some(store) => {
                if let Err(e) = store.release_key(&hub.id, key, fingerprint).await {
                    tracing::warn!(error = %e, "idempotency key not released");
                }
            }
            None => hub.idempotency.release(key, fingerprint),
        }
    }
}

/// One remembered key.
struct Entry {
    fingerprint: String,
    /// `None` while its request is handled.
    answer: Option<Bytes>,
    expires: Instant,
    /// Which `order` entry is current for this key.
    seq: u64,
}

impl Entry {
    fn size(&self, key: &str) -> usize {
        // The key is held twice (map and order), plus the fixed parts.
        2 * key.len() + self.fingerprint.len() + self.answer.as_ref().map_or(0, Bytes::len) + 64
    }
}

#[derive(Default)]
struct Keys {
    entries: HashMap<String, Entry>,
    /// Keys in the order they were last written, oldest first (stale `seq`s are skipped).
    order: VecDeque<(String, u64)>,
    bytes: usize,
    next_seq: u64,
}

/// One app's idempotency keys on a single node, bounded in count (`idempotency_max_keys`)
/// and bytes (`idempotency_max_bytes`). Overflow policy: the oldest key is forgotten first
/// (counted in `idempotency_evictions_total`); a retry of a forgotten key publishes again.
pub struct KeyStore {
    keys: Mutex<Keys>,
    max_keys: usize,
    max_bytes: usize,
    evictions: IntCounter,
}

impl KeyStore {
    pub fn new(max_keys: usize, max_bytes: usize, evictions: IntCounter) -> KeyStore {
        KeyStore {
            keys: Mutex::new(Keys::default()),
            max_keys,
            max_bytes,
            evictions,
        }
    }

    /// Takes `key` (held for `PENDING`) or says what holds it.
    pub fn claim(&self, key: &str, fingerprint: &str, now: Instant) -> Claim {
        let mut k = self.keys.lock();
        k.expire(now);
        if let Some(e) = k.entries.get(key) {
            if e.fingerprint != fingerprint {
                return Claim::Mismatch;
            }
            return match &e.answer {
                Some(a) => Claim::Done(a.clone()),
                None => Claim::InProgress,
            };
        }
        let entry = Entry {
            fingerprint: fingerprint.to_string(),
            answer: None,
            expires: now + PENDING,
            seq: 0,
        };
        self.insert(&mut k, key, entry);
        Claim::New
    }

    /// Remembers `answer` for `key` until `window` has passed.
    pub fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &Bytes,
        window: Duration,
        now: Instant,
    ) {
        let mut k = self.keys.lock();
        k.remove(key);
        let entry = Entry {
            fingerprint: fingerprint.to_string(),
            answer: Some(answer.clone()),
            expires: now + window,
            seq: 0,
        };
        self.insert(&mut k, key, entry);
    }

    /// Forgets a claimed `key` whose request failed.
    pub fn release(&self, key: &str, fingerprint: &str) {
        let mut k = self.keys.lock();
        let pending = k
            .entries
            .get(key)
            .is_some_and(|e| e.answer.is_none() && e.fingerprint == fingerprint);
        if pending {
            k.remove(key);
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, k: &mut Keys, key: &str, mut entry: Entry) {
        let size = entry.size(key);
        if size > self.max_bytes {
            self.evictions.inc();
            return;
        }
        while k.entries.len() >= self.max_keys || k.bytes + size > self.max_bytes {
            if !k.evict_oldest() {
                break;
            }
            self.evictions.inc();
        }
        k.next_seq += 1;
        entry.seq = k.next_seq;
        k.order.push_back((key.to_string(), entry.seq));
        k.bytes += size;
        k.entries.insert(key.to_string(), entry);
    }
}

impl Keys {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(e.size(key));
        }
    }

    /// Forgets the oldest live key; `false` when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.remove(&key);
                return true;
            }
        }
        false
    }

    /// Forgets expired keys (oldest first; a key rewritten later sits further back).
    fn expire(&mut self, now: Instant) {
        while let Some((key, seq)) = self.order.front() {
            match self.entries.get(key) {
                Some(e) if e.seq == *seq && e.expires > now => break,
                Some(e) if e.seq == *seq => {
                    let key = key.clone();
                    self.order.pop_front();
                    self.remove(&key);
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_keys: usize, max_bytes: usize) -> KeyStore {
        let evictions = IntCounter::new("evictions", "test").unwrap_or_else(|e| panic!("{e}"));
        KeyStore::new(max_keys, max_bytes, evictions)
    }

    #[test]
    fn a_key_is_held_then_answered_then_forgotten_after_the_window() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(s.claim("k", "f", t0), Claim::New);
        assert_eq!(s.claim("k", "f", t0), Claim::InProgress);
        assert_eq!(s.claim("k", "other", t0), Claim::Mismatch);
        let answer = Bytes::from_static(b"{}");
        s.complete("k", "f", &answer, Duration::from_secs(60), t0);
        assert_eq!(s.claim("k", "f", t0), Claim::Done(answer));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(s.claim("k", "f", later), Claim::New);
    }

    #[test]
    fn a_released_key_may_be_claimed_again() {
        let s = store(10, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(s.claim("k", "f", t0), Claim::New);
        s.release("k", "other");
        assert_eq!(s.claim("k", "f", t0), Claim::InProgress);
        s.release("k", "f");
        assert_eq!(s.claim("k", "f", t0), Claim::New);
    }

    #[test]
    fn the_oldest_key_is_forgotten_first_beyond_the_count_and_the_bytes() {
        let s = store(2, 1 << 20);
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let a = Bytes::from_static(b"{}");
        for k in ["a", "b", "c"] {
            assert_eq!(s.claim(k, "f", t0), Claim::New);
            s.complete(k, "f", &a, w, t0);
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.claim("a", "f", t0), Claim::New, "a was evicted");
        assert_eq!(s.claim("c", "f", t0), Claim::Done(a.clone()));
        assert_eq!(s.evictions.get(), 2, "a, then b for a's new claim");

        let s = store(1000, 300);
        let big = Bytes::from(vec![b'x'; 100]);
        for k in ["a", "b", "c"] {
            assert_eq!(s.claim(k, "f", t0), Claim::New);
            s.complete(k, "f", &big, w, t0);
        }
        assert!(s.len() < 3, "bounded by bytes: {}", s.len());
        assert_eq!(s.claim("c", "f", t0), Claim::Done(big));
    }
}
