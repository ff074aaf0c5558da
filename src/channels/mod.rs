//! `ChannelRegistry`: the one index of this node's subscriptions, per app, together with the
//! last event of cache channels (kept even when nobody is subscribed, spec 2.7).
//!
//! Subscribing inserts the connection and enqueues its `subscription_succeeded` (and cached
//! event) under the same shard lock a publish takes, so a socket never sees a channel event
//! before that channel's `subscription_succeeded`, and never misses an event published while it
//! was joining. No lock here is held across an `.await`: every method is synchronous.

pub mod users;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use crate::connection::handle::{ConnRef, Delivery};
use crate::metrics::AppMetrics;
use crate::protocol::{ChannelKind, ChannelName, PresenceMember, SocketId};

/// The last event published to a cache channel.
#[derive(Clone, Debug)]
pub struct CachedEvent {
    /// The encoded event, ready to send.
    pub frame: Bytes,
    /// The publisher's `data` string (for `info=cache`).
    pub data: Arc<str>,
    pub expires: Instant,
}

/// A local subscriber, with the presence member it joined as.
struct Subscriber {
    conn: ConnRef,
    member: Option<PresenceMember>,
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<SocketId, Subscriber>,
    cache: Option<CachedEvent>,
    /// When the last `subscription_count` event went out (throttled on big channels).
    last_count_event: Option<Instant>,
}

impl Channel {
    fn live_cache(&self, now: Instant) -> Option<&CachedEvent> {
        self.cache.as_ref().filter(|c| c.expires > now)
    }
}

/// The result of a subscribe.
#[derive(Debug, Clone, Copy)]
pub struct Subscribed {
    /// The channel went from 0 to 1 subscriber on this node.
    pub occupied: bool,
    pub count: usize,
    /// A cached event was enqueued after `subscription_succeeded`.
    pub cache_hit: bool,
}

/// The result of an unsubscribe.
#[derive(Debug, Clone, Copy)]
pub struct Unsubscribed {
    /// The channel went from 1 to 0 subscribers on this node.
    pub vacated: bool,
    pub count: usize,
}

/// What a publish reached.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fanout {
    pub delivered: usize,
    pub overflowed: usize,
}

pub struct ChannelRegistry {
    channels: DashMap<ChannelName, Channel>,
    metrics: AppMetrics,
}

/// `subscription_count` events on channels above this size go out at most every 5 s (spec 2.9).
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE: Duration = Duration::from_secs(5);

impl ChannelRegistry {
    pub fn new(metrics: AppMetrics) -> Self {
        ChannelRegistry {
            channels: DashMap::new(),
            metrics,
        }
    }

    /// Adds `conn` to `channel` and, atomically with it, enqueues `succeeded` followed by the
    /// cached event of a cache channel: the one held here, else `shared_cache` (the cluster's).
    /// Returns `None` when the connection was already subscribed.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        conn: &ConnRef,
        succeeded: &Bytes,
        member: Option<PresenceMember>,
        shared_cache: Option<&CachedEvent>,
    ) -> Option<Subscribed> {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        if entry.subscribers.contains_key(&conn.socket_id) {
            return None;
        }
        let occupied = entry.subscribers.is_empty();
        entry.subscribers.insert(
            conn.socket_id,
            Subscriber {
                conn: conn.clone(),
                member,
            },
        );
        conn.deliver(succeeded);
        let mut cache_hit = false;
        if channel.kind().is_cache() {
            let now = Instant::now();
            let cached = entry
                .live_cache(now)
                .or(shared_cache.filter(|c| c.expires > now));
            if let Some(cached) = cached {
                conn.deliver(&cached.frame);
                cache_hit = true;
            }
        }
        let count = entry.subscribers.len();
        drop(entry);
        self.metrics.subscriptions(channel.kind()).inc();
        if occupied {
            self.metrics.channels(channel.kind()).inc();
        }
        Some(Subscribed {
            occupied,
            count,
            cache_hit,
        })
    }

    /// Removes `socket_id` from `channel`; `None` when it was not subscribed.
    pub fn unsubscribe(&self, channel: &ChannelName, socket_id: SocketId) -> Option<Unsubscribed> {
        let mut entry = self.channels.get_mut(channel)?;
        entry.subscribers.remove(&socket_id)?;
        let count = entry.subscribers.len();
        drop(entry);
        self.metrics.subscriptions(channel.kind()).dec();
        let vacated = count == 0;
        if vacated {
            self.metrics.channels(channel.kind()).dec();
            // Keep the entry only while it still holds a live cached event.
            let now = Instant::now();
            self.channels.remove_if(channel, |_, c| {
                c.subscribers.is_empty() && c.live_cache(now).is_none()
            });
        }
        Some(Unsubscribed { vacated, count })
    }

    /// Delivers `frame` to every subscriber of `channel` but `except`. For cache channels with
    /// `cache`, the event is remembered first (even with no subscribers).
    pub fn publish(
        &self,
        channel: &ChannelName,
        frame: &Bytes,
        except: Option<SocketId>,
        cache: Option<CachedEvent>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        match cache {
            Some(cached) => {
                let mut entry = self.channels.entry(channel.clone()).or_default();
                entry.cache = Some(cached);
                deliver_all(&entry.subscribers, frame, except, &mut fanout);
            }
            None => {
                if let Some(entry) = self.channels.get(channel) {
                    deliver_all(&entry.subscribers, frame, except, &mut fanout);
                }
            }
        }
        fanout
    }

    pub fn subscription_count(&self, channel: &str) -> usize {
        self.channels
            .get(channel)
            .map_or(0, |c| c.subscribers.len())
    }

    /// Whether a `subscription_count` event may go out now (and records that it does).
    pub fn take_count_event_slot(&self, channel: &ChannelName) -> bool {
        // No local subscriber left (the change came from here, the audience is elsewhere).
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return true;
        };
        let now = Instant::now();
        if entry.subscribers.len() > COUNT_THROTTLE_ABOVE {
            if let Some(last) = entry.last_count_event {
                if now.duration_since(last) < COUNT_THROTTLE {
                    return false;
                }
            }
        }
        entry.last_count_event = Some(now);
        true
    }

    /// The live cached event of a cache channel.
    pub fn cached(&self, channel: &str) -> Option<CachedEvent> {
        let now = Instant::now();
        self.channels
            .get(channel)
            .and_then(|c| c.live_cache(now).cloned())
    }

    /// Occupied channels (≥ 1 subscriber on this node) whose name starts with `prefix`, with
    /// their subscription counts. `#server-to-user-` channels are not listed.
    pub fn occupied(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        self.channels
            .iter()
            .filter(|e| {
                !e.value().subscribers.is_empty()
                    && e.key().kind() != ChannelKind::ServerToUser
                    && e.key().as_str().starts_with(prefix)
            })
            .map(|e| (e.key().clone(), e.value().subscribers.len()))
            .collect()
    }

    /// Every channel with local subscribers (server-to-user channels included) and its count.
    pub fn occupied_all(&self) -> Vec<(ChannelName, usize)> {
        self.channels
            .iter()
            .filter(|e| !e.value().subscribers.is_empty())
            .map(|e| (e.key().clone(), e.value().subscribers.len()))
            .collect()
    }

    /// Every local presence subscription: channel, socket and member.
    pub fn presence_members(&self) -> Vec<(ChannelName, SocketId, PresenceMember)> {
        let mut out = Vec::new();
        for e in self.channels.iter() {
            for (id, sub) in &e.value().subscribers {
                if let Some(m) = &sub.member {
                    out.push((e.key().clone(), *id, m.clone()));
                }
            }
        }
        out
    }

    /// Drops expired cached events of channels nobody is subscribed to.
    pub fn sweep_expired(&self) {
        let now = Instant::now();
        self.channels
            .retain(|_, c| !(c.subscribers.is_empty() && c.live_cache(now).is_none()));
    }
}

fn deliver_all(
    subscribers: &HashMap<SocketId, Subscriber>,
    frame: &Bytes,
    except: Option<SocketId>,
    fanout: &mut Fanout,
) {
    for (id, sub) in subscribers {
        if Some(*id) == except {
            continue;
        }
        match sub.conn.deliver(frame) {
            Delivery::Queued => fanout.delivered += 1,
            Delivery::Overflow => fanout.overflowed += 1,
            Delivery::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::handle::{ConnHandle, Outbound};
    use crate::metrics::Metrics;

    fn registry() -> ChannelRegistry {
        let m = Metrics::new("test").unwrap_or_else(|e| panic!("{e}"));
        ChannelRegistry::new(m.app("a"))
    }

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s, 200).unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(out: Option<Outbound>) -> Bytes {
        match out {
            Some(Outbound::Text(b)) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn succeeded_comes_before_cached_event_and_later_events() {
        let r = registry();
        let ch = name("cache-prices");
        let cached = CachedEvent {
            frame: Bytes::from_static(b"cached"),
            data: Arc::from("{}"),
            expires: Instant::now() + Duration::from_secs(60),
        };
        // Published with nobody subscribed: still cached.
        let f = r.publish(&ch, &Bytes::from_static(b"cached"), None, Some(cached));
        assert_eq!(f.delivered, 0);
        let conn = ConnHandle::new(SocketId::from_parts(1, 1), 8);
        let s = r.subscribe(&ch, &conn, &Bytes::from_static(b"ok"), None, None);
        assert!(s.is_some_and(|s| s.occupied && s.cache_hit));
        r.publish(&ch, &Bytes::from_static(b"live"), None, None);
        let mut q = conn.take_queued();
        assert_eq!(&text(q.pop_front())[..], b"ok");
        assert_eq!(&text(q.pop_front())[..], b"cached");
        assert_eq!(&text(q.pop_front())[..], b"live");
    }

    #[test]
    fn exclusion_and_occupancy_transitions() {
        let r = registry();
        let ch = name("my-channel");
        let a = ConnHandle::new(SocketId::from_parts(1, 1), 8);
        let b = ConnHandle::new(SocketId::from_parts(2, 2), 8);
        let ok = Bytes::from_static(b"ok");
        assert!(r
            .subscribe(&ch, &a, &ok, None, None)
            .is_some_and(|s| s.occupied));
        assert!(r
            .subscribe(&ch, &b, &ok, None, None)
            .is_some_and(|s| !s.occupied && s.count == 2));
        assert!(
            r.subscribe(&ch, &b, &ok, None, None).is_none(),
            "duplicate subscribe"
        );
        let _ = (a.take_queued(), b.take_queued());
        let f = r.publish(&ch, &Bytes::from_static(b"ev"), Some(a.socket_id), None);
        assert_eq!(f.delivered, 1);
        assert!(a.take_queued().is_empty());
        assert_eq!(&text(b.take_queued().pop_front())[..], b"ev");
        assert!(r.unsubscribe(&ch, a.socket_id).is_some_and(|u| !u.vacated));
        assert!(r.unsubscribe(&ch, a.socket_id).is_none());
        assert!(r.unsubscribe(&ch, b.socket_id).is_some_and(|u| u.vacated));
        assert!(r.occupied("").is_empty());
    }

    #[test]
    fn a_full_queue_closes_only_that_connection() {
        let r = registry();
        let ch = name("my-channel");
        let slow = ConnHandle::new(SocketId::from_parts(1, 1), 2);
        let fast = ConnHandle::new(SocketId::from_parts(2, 2), 64);
        let ok = Bytes::from_static(b"ok");
        r.subscribe(&ch, &slow, &ok, None, None);
        r.subscribe(&ch, &fast, &ok, None, None);
        let mut overflowed = 0;
        for _ in 0..10 {
            overflowed += r
                .publish(&ch, &Bytes::from_static(b"ev"), None, None)
                .overflowed;
            let _ = fast.take_queued();
        }
        assert!(overflowed > 0);
        assert_eq!(
            slow.close_reason(),
            Some(crate::protocol::ErrorKind::SlowConsumer)
        );
        assert!(fast.close_reason().is_none());
    }
}
