//! Taps: what happens in one app on this node, as a live feed for the debug console
//! (`http::console`). One bounded `tokio::sync::broadcast` per app (`Tap`), fed where the
//! state changes are already reported (connections opened and closed, subscriptions, presence
//! members, API-published and client events, webhook deliveries).
//!
//! A tap costs nothing unless a console is watching: with the console off it holds no channel
//! at all, and with it on an entry is only built when the channel has a receiver
//! (`receiver_count`). The channel keeps the last `capacity` entries; a viewer that falls
//! further behind is told how many it missed (`RecvError::Lagged`) instead of slowing
//! anyone down: the publisher never waits. It owns no delivery, no socket and no state of the
//! app; it is not a record (nothing is kept once every viewer has read it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::webhooks::{DeliveryReport, DeliveryWatch};

/// The most bytes of an event's data an entry carries (the rest is cut at a character
/// boundary and `data_truncated` is set): the console shows events, it does not archive them.
pub const MAX_DATA_BYTES: usize = 2048;

/// Where an API event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The signed HTTP API.
    Api,
    /// The console's event creator.
    Console,
}

/// One thing that happened, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    ConnectionOpened {
        socket_id: String,
        transport: &'static str,
    },
    ConnectionClosed {
        socket_id: String,
        /// The close code (1000 when the client left on its own).
        code: u16,
    },
    Subscribed {
        channel: String,
        socket_id: String,
    },
    Unsubscribed {
        channel: String,
        socket_id: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ApiEvent {
        channel: String,
        event: String,
        data: String,
        data_truncated: bool,
        source: Source,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        data_truncated: bool,
        socket_id: String,
        user_id: Option<String>,
    },
    /// A webhook request finished (delivered, rejected or given up).
    Webhook {
        /// `host:port` of the target (its URL may carry credentials).
        host: String,
        /// `event_name:channel` of each event in the request.
        events: Vec<String>,
        outcome: &'static str,
        /// The receiver's status, when it answered.
        status: Option<u16>,
        attempts: u32,
        failure: Option<String>,
    },
}

/// An entry with the time it was made, as the console's stream sends it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// `data` cut to `MAX_DATA_BYTES` at a character boundary, and whether it was cut.
pub fn clip(data: &str) -> (String, bool) {
    if data.len() <= MAX_DATA_BYTES {
        return (data.to_string(), false);
    }
    let mut end = MAX_DATA_BYTES;
    while !data.is_char_boundary(end) {
        end -= 1;
    }
    (data[..end].to_string(), true)
}

/// One app's feed: the channel and the count of its viewers.
#[derive(Debug)]
struct Feed {
    tx: broadcast::Sender<Arc<Record>>,
    /// Open `Watch`es. Kept apart from the channel's own count, which takes a lock to read:
    /// the paths that record read this on every event.
    viewers: AtomicUsize,
}

/// One app's feed. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Tap(Option<Arc<Feed>>);

/// A viewer of one app's feed, from when it was made; counted until dropped.
#[derive(Debug)]
pub struct Watch {
    pub rx: broadcast::Receiver<Arc<Record>>,
    feed: Arc<Feed>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.feed.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tap {
    /// True when a console is watching: one atomic load (nothing at all with the console
    /// off).
    pub fn watched(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|f| f.viewers.load(Ordering::Acquire) > 0)
    }

    /// Sends the entry `make` builds, if anyone is watching (else `make` is not called).
    /// Never blocks; the oldest entry a slow viewer has not read is overwritten.
    pub fn record(&self, make: impl FnOnce() -> Entry) {
        let Some(feed) = &self.0 else {
            return;
        };
        if feed.viewers.load(Ordering::Acquire) == 0 {
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // An error means the last viewer left since the check: nothing to do.
        let _ = feed.tx.send(Arc::new(Record {
            time_ms,
            entry: make(),
        }));
    }

    /// A new viewer of this feed, from now on; `None` when the console is off.
    pub fn subscribe(&self) -> Option<Watch> {
        let feed = self.0.as_ref()?;
        let rx = feed.tx.subscribe();
        feed.viewers.fetch_add(1, Ordering::AcqRel);
        Some(Watch {
            rx,
            feed: feed.clone(),
        })
    }
}

/// The node's taps, one per app id, made on first use; `off` makes taps without a channel.
#[derive(Debug)]
pub struct Taps {
    /// Entries kept per app for viewers that fall behind; `None`: the console is off.
    capacity: Option<usize>,
    apps: DashMap<String, Tap>,
}

impl Taps {
    /// Taps that keep `capacity` entries per app (at least 1).
    pub fn new(capacity: usize) -> Taps {
        Taps {
            capacity: Some(capacity.max(1)),
            apps: DashMap::new(),
        }
    }

    /// Taps that never carry anything (the console is off).
    pub fn off() -> Taps {
        Taps {
            capacity: None,
            apps: DashMap::new(),
        }
    }

    /// The tap of app `id`, made on first use.
    pub fn tap(&self, id: &str) -> Tap {
        let Some(capacity) = self.capacity else {
            return Tap(None);
        };
        if let Some(t) = self.apps.get(id) {
            return t.clone();
        }
        self.apps
            .entry(id.to_string())
            .or_insert_with(|| {
                Tap(Some(Arc::new(Feed {
                    tx: broadcast::channel(capacity).0,
                    viewers: AtomicUsize::new(0),
                })))
            })
            .clone()
    }
}

impl DeliveryWatch for Taps {
    fn watching(&self, app_id: &str) -> bool {
        self.capacity.is_some() && self.apps.get(app_id).is_some_and(|t| t.watched())
    }

    fn finished(&self, report: DeliveryReport) {
        let Some(tap) = self.apps.get(report.app_id.as_str()).map(|t| t.clone()) else {
            return;
        };
        tap.record(|| Entry::Webhook {
            host: report.host,
            events: report.events,
            outcome: report.outcome,
            status: report.status,
            attempts: report.attempts,
            failure: report.failure,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn opened(n: u32) -> Entry {
        Entry::ConnectionOpened {
            socket_id: format!("{n}.1"),
            transport: "ws",
        }
    }

    #[test]
    fn nothing_is_built_without_a_viewer() {
        let taps = Taps::new(4);
        let tap = taps.tap("1");
        tap.record(|| panic!("built with nobody watching"));
        Taps::off()
            .tap("1")
            .record(|| panic!("built with the console off"));
        assert!(Taps::off().tap("1").subscribe().is_none());
    }

    #[test]
    fn a_viewer_that_falls_behind_is_told_how_many_it_missed() {
        let taps = Taps::new(4);
        let tap = taps.tap("1");
        let mut watch = tap.subscribe().unwrap();
        assert!(taps.tap("1").watched(), "the same feed for the same app");
        for n in 0..10 {
            tap.record(|| opened(n));
        }
        assert!(matches!(
            watch.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(watch.rx.try_recv().unwrap().entry, opened(6));
        drop(watch);
        assert!(!tap.watched(), "no viewer once the watch is dropped");
        tap.record(|| panic!("built after the viewer left"));
    }

    #[test]
    fn long_data_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_DATA_BYTES);
        let (cut, truncated) = clip(&long);
        assert!(truncated);
        assert!(cut.len() <= MAX_DATA_BYTES && cut.len() > MAX_DATA_BYTES - 2);
        assert_eq!(clip("short"), ("short".to_string(), false));
    }

    #[test]
    fn entries_serialise_flat_with_their_kind() {
        let r = Record {
            time_ms: 5,
            entry: Entry::Subscribed {
                channel: "news".into(),
                socket_id: "1.2".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"time_ms": 5, "kind": "subscribed", "channel": "news", "socket_id": "1.2"})
        );
    }
}
