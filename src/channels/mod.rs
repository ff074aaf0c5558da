//! `ChannelRegistry`: the one index of this node's subscriptions, per app, together with the
//! last event of cache channels (kept even when nobody is subscribed, protocol.md 2.7).
//!
//! Subscribing inserts the connection and enqueues its `subscription_succeeded` (and cached
//! event) under the same shard lock a publish takes, so a socket never sees a channel event
//! before that channel's `subscription_succeeded`, and never misses an event published while it
//! was joining. No lock here is held across an `.await`: every method is synchronous.
//!
//! Presence channels also keep each subscriber's roster exact. A roster is read (from the
//! presence store, possibly on another machine) while member events of other nodes are on
//! their way, so an event may describe a change the roster already shows, or one it does not
//! show yet. The registry therefore tracks what every presence subscriber has been told:
//! `member_added` goes only to subscribers that do not list the user, `member_removed` only to
//! those that do. The node's view of the members (`Channel::members`) is shared; a subscriber
//! whose roster differs from it keeps only the difference (`ViewDiff`, empty once the events in
//! flight have arrived). Member events that reach the channel while a join is reading its
//! roster are kept (`Channel::recent`, bounded) and replayed through the same rule right after
//! that subscriber's `subscription_succeeded`, so none is missed.
//!
//! A channel with history in a cluster keeps its events in the shared store (protocol.md
//! 11.2). A resuming subscriber reads what it missed there while the channel's live events
//! keep arriving: from `begin_resume` on, they are held for it (`Channel::held`, bounded in
//! bytes) and released right after its replay and `resound:recovery`, without those the
//! replay already had (by position), so every event arrives once, in order. Those events are
//! delivered in the order of their positions (`Sequence`): one that arrives ahead of a
//! missing one waits for it, `REORDER_WAIT` at most (`release_waiting`).
//!
//! A cache channel in a cluster has its last event in the shared store, read while the channel's
//! live events keep arriving. The last event that reached the channel during that read
//! (`Channel::latest`) is at least as new as what the read returned, so it is the one a new
//! subscriber gets as the cached event.

pub mod users;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::mapref::one::RefMut;
use dashmap::DashMap;

use crate::cluster::{Kind, Publication, Stamp, Target};
use crate::connection::deflate::{DeflatePolicy, SharedFrame};
use crate::connection::handle::{ConnRef, Delivery};
use crate::history::{ChannelHistory, Failure, Replay};
use crate::metrics::AppMetrics;
use crate::protocol::resume::{self, Resume};
use crate::protocol::{
    message, ChannelKind, ChannelName, MemberChange, PresenceMember, SocketId, UserId,
};

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
    /// Where the members this subscriber was told of differ from the channel's view (`None`:
    /// they do not).
    view: Option<Box<ViewDiff>>,
    /// A shared resume's position: events at or before it reached the subscriber in its
    /// replay (or are covered by what a failed resume refetches), so one that arrives late
    /// from a slower node is not delivered again.
    resumed_at: Option<Box<Stamp>>,
}

/// How a presence subscriber's members differ from its channel's `members`.
struct ViewDiff {
    /// Users it was told of that the channel's view does not hold (yet).
    extra: Vec<UserId>,
    /// Users of the channel's view it was not told of (their removal is on its way).
    missing: Vec<UserId>,
}

impl Subscriber {
    /// Whether this subscriber lists `user` (`known`: the channel's view does); settles the
    /// difference for `user`, since the change at hand brings the two views together.
    fn lists(&mut self, user: &UserId, known: bool) -> bool {
        let Some(diff) = self.view.as_deref_mut() else {
            return known;
        };
        let answer = if let Some(i) = diff.extra.iter().position(|u| u == user) {
            diff.extra.swap_remove(i);
            true
        } else if let Some(i) = diff.missing.iter().position(|u| u == user) {
            diff.missing.swap_remove(i);
            false
        } else {
            known
        };
        if diff.extra.is_empty() && diff.missing.is_empty() {
            self.view = None;
        }
        answer
    }
}

/// A member event kept while a join reads its roster.
struct RecentChange {
    seq: u64,
    change: MemberChange,
    frame: Bytes,
}

/// An event that reached a channel while a resume was reading the shared history.
struct Held {
    seq: u64,
    frame: Bytes,
    stamp: Option<Stamp>,
    except: Option<SocketId>,
}

/// Bytes of events held per channel for resumes in progress. Overflow policy: drop the
/// oldest; a resume that would have needed it fails (`window_exceeded`).
const HELD_BYTES: usize = 1 << 20;

/// An event of a shared history that arrived ahead of one with a lower offset.
struct Waiting {
    frame: Bytes,
    except: Option<SocketId>,
}

/// Where a channel's events of a shared history are in their order on this node: events
/// published through different nodes at once can arrive in another order than their
/// offsets, so one that arrives ahead of a missing one waits for it (`REORDER_WAIT` at most,
/// `WAITING_BYTES` at most; then the missing one is given up and what waits goes on).
struct Sequence {
    epoch: String,
    /// The offset delivered next.
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    bytes: usize,
    /// When the oldest of `waiting` began to wait.
    since: Option<Instant>,
}

/// The longest an event waits for one with a lower offset (see `Sequence`).
pub const REORDER_WAIT: Duration = Duration::from_millis(250);
/// Bytes of events waiting per channel; beyond, the missing one is given up at once.
const WAITING_BYTES: usize = 1 << 20;

/// Member events kept for joins in progress, per channel. Overflow policy: drop the oldest (a
/// join outlasting this many member changes of its channel misses the oldest of them).
const RECENT_CHANGES: usize = 256;

/// Applies `change` to `members`; `true` when it changed them (the event is news to whoever
/// holds them).
fn apply(change: &MemberChange, members: &mut HashSet<UserId>) -> bool {
    match change {
        MemberChange::Added(u) => members.insert(u.clone()),
        MemberChange::Removed(u) => members.remove(u),
    }
}

#[derive(Default)]
struct Channel {
    subscribers: HashMap<SocketId, Subscriber>,
    cache: Option<CachedEvent>,
    /// When the last `subscription_count` event went out (throttled on big channels).
    last_count_event: Option<Instant>,
    /// Presence: the members as this node knows them (the first local roster, then every
    /// member event since); `None` while no local subscriber lists anyone.
    members: Option<HashSet<UserId>>,
    /// Events counted so far: member events, and a cache channel's events during joins
    /// (numbers `RecentChange::seq`, `latest` and a join's mark).
    changes: u64,
    /// Joins reading a roster or a shared cached event now; the entry stays while any is in
    /// progress.
    joining: u32,
    /// Presence: member events since the oldest join in progress began.
    recent: VecDeque<RecentChange>,
    /// Cache channels: the last cacheable event that arrived while a join was in progress,
    /// with its number.
    latest: Option<(u64, Bytes)>,
    /// Resumes reading the shared history now (`begin_resume`); the channel's events are
    /// held for them meanwhile.
    resuming: u32,
    held: VecDeque<Held>,
    held_bytes: usize,
    /// The number of the newest held event dropped for the bound (0: none).
    held_dropped: u64,
    /// The order of the channel's events of a shared history (`None` until the first).
    sequence: Option<Box<Sequence>>,
}

impl Channel {
    fn live_cache(&self, now: Instant) -> Option<&CachedEvent> {
        self.cache.as_ref().filter(|c| c.expires > now)
    }

    /// Nothing left worth keeping: no subscriber, no join in progress, no live cached event.
    fn disposable(&self, now: Instant) -> bool {
        self.subscribers.is_empty()
            && self.joining == 0
            && self.resuming == 0
            && self.live_cache(now).is_none()
    }

    /// Keeps an event for the resumes in progress (see `held`).
    fn hold(&mut self, frame: &Bytes, stamp: Option<&Stamp>, except: Option<SocketId>) {
        if self.resuming == 0 {
            return;
        }
        self.changes += 1;
        self.held_bytes += frame.len();
        self.held.push_back(Held {
            seq: self.changes,
            frame: frame.clone(),
            stamp: stamp.cloned(),
            except,
        });
        while self.held_bytes > HELD_BYTES {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(h.frame.len());
            self.held_dropped = h.seq;
        }
    }

    /// Puts an event of a shared history in its order: returns the events to deliver now, in
    /// order (none when it waits for a lower offset, or came after its turn was given up).
    fn sequence(
        &mut self,
        stamp: &Stamp,
        frame: &Bytes,
        except: Option<SocketId>,
        now: Instant,
    ) -> Vec<(u64, Bytes, Option<SocketId>)> {
        let mut ready = Vec::new();
        let seq = match self.sequence.as_deref_mut() {
            Some(seq) if seq.epoch == stamp.epoch => seq,
            _ => {
                // A first event, or a new history: what waited of the old one goes first.
                // Where the order starts is not known yet (`next` 0): the event waits for
                // `anchor` (a subscriber's read) or, at most `REORDER_WAIT`, for lower ones.
                if let Some(old) = self.sequence.take() {
                    ready.extend(old.waiting.into_iter().map(|(o, w)| (o, w.frame, w.except)));
                }
                self.sequence = Some(Box::new(Sequence {
                    epoch: stamp.epoch.clone(),
                    next: 0,
                    waiting: BTreeMap::new(),
                    bytes: 0,
                    since: None,
                }));
                match self.sequence.as_deref_mut() {
                    Some(seq) => seq,
                    None => return ready,
                }
            }
        };
        if stamp.offset < seq.next || seq.waiting.contains_key(&stamp.offset) {
            // Given up on (or here already): delivering it now would break the order.
            return ready;
        }
        if stamp.offset > seq.next {
            seq.bytes += frame.len();
            seq.since.get_or_insert(now);
            seq.waiting.insert(
                stamp.offset,
                Waiting {
                    frame: frame.clone(),
                    except,
                },
            );
            if seq.bytes > WAITING_BYTES {
                seq.give_up(&mut ready);
            }
            return ready;
        }
        ready.push((stamp.offset, frame.clone(), except));
        seq.next += 1;
        seq.advance(&mut ready);
        ready
    }

    /// A resume begun with `begin_resume` ended: the held events go once no other resume
    /// needs them.
    fn end_resume(&mut self) {
        self.resuming = self.resuming.saturating_sub(1);
        if self.resuming == 0 {
            self.held.clear();
            self.held_bytes = 0;
            self.held_dropped = 0;
        }
    }

    /// Applies a member event: delivers it to the subscribers whose roster it changes, keeps
    /// it for joins in progress and updates the channel's view.
    fn member_change(
        &mut self,
        change: &MemberChange,
        frame: &Bytes,
        except: Option<SocketId>,
        fanout: &mut Fanout,
    ) {
        self.changes += 1;
        if self.joining > 0 {
            if self.recent.len() == RECENT_CHANGES {
                self.recent.pop_front();
            }
            self.recent.push_back(RecentChange {
                seq: self.changes,
                change: change.clone(),
                frame: frame.clone(),
            });
        }
        let Some(members) = self.members.as_mut() else {
            return;
        };
        let user = change.user();
        let known = members.contains(user);
        for (id, sub) in &mut self.subscribers {
            let lists = sub.lists(user, known);
            let tells = match change {
                MemberChange::Added(_) => !lists,
                MemberChange::Removed(_) => lists,
            };
            if tells && Some(*id) != except {
                count(sub.conn.deliver(frame), fanout);
            }
        }
        apply(change, members);
    }

    /// Keeps a cache channel's event for the joins in progress (see `latest`).
    fn note_latest(&mut self, frame: &Bytes) {
        if self.joining > 0 {
            self.changes += 1;
            self.latest = Some((self.changes, frame.clone()));
        }
    }

    /// A join begun with `begin_join` ended: its kept events go once no other join needs them.
    fn end_join(&mut self) {
        self.joining = self.joining.saturating_sub(1);
        if self.joining == 0 {
            self.recent.clear();
            self.latest = None;
        }
    }

    /// Records `view` as what subscriber `socket` was told: the channel's view when it has
    /// none yet, else the difference from it.
    fn settle_view(&mut self, socket: SocketId, view: HashSet<UserId>) {
        let Some(members) = self.members.as_ref() else {
            self.members = Some(view);
            return;
        };
        let diff = ViewDiff {
            extra: view.difference(members).cloned().collect(),
            missing: members.difference(&view).cloned().collect(),
        };
        let diff = (!diff.extra.is_empty() || !diff.missing.is_empty()).then(|| Box::new(diff));
        if let Some(sub) = self.subscribers.get_mut(&socket) {
            sub.view = diff;
        }
    }
}

impl Sequence {
    /// Moves the waiting events that are next in line to `ready`.
    fn advance(&mut self, ready: &mut Vec<(u64, Bytes, Option<SocketId>)>) {
        while let Some(w) = self.waiting.remove(&self.next) {
            self.bytes = self.bytes.saturating_sub(w.frame.len());
            ready.push((self.next, w.frame, w.except));
            self.next += 1;
        }
        if self.waiting.is_empty() {
            self.since = None;
        }
    }

    /// Gives up the missing offsets before the first waiting event: it and those after it
    /// that are in line go to `ready`.
    fn give_up(&mut self, ready: &mut Vec<(u64, Bytes, Option<SocketId>)>) {
        if let Some(first) = self.waiting.keys().next().copied() {
            self.next = first;
            self.since = None;
            self.advance(ready);
            if !self.waiting.is_empty() {
                self.since = Some(Instant::now());
            }
        }
    }
}

/// A subscription whose join began with `ChannelRegistry::begin_join` (presence, and cache
/// channels): what it read from the cluster while the channel's events kept arriving.
pub struct Joined<'a> {
    /// The channel's event count when the join began (from `begin_join`).
    pub mark: u64,
    /// Presence: the member it joins as and the roster its join read.
    pub presence: Option<(PresenceMember, &'a [PresenceMember])>,
}

/// A subscription that asks to resume a channel's history (protocol.md 11.2).
pub struct Resuming<'a> {
    /// The app's histories on this node; `None`: it keeps none (every resume fails, unless
    /// `shared` answers).
    pub history: Option<&'a ChannelHistory>,
    pub from: &'a Resume,
    /// A cluster: what the shared history gave the resume begun with `begin_resume` (its
    /// mark), or why it could not.
    pub shared: Option<(u64, Result<Replay, Failure>)>,
}

/// The result of a subscribe.
#[derive(Debug, Clone, Copy)]
pub struct Subscribed {
    /// The channel went from 0 to 1 subscriber on this node.
    pub occupied: bool,
    pub count: usize,
    /// A cached event was enqueued after `subscription_succeeded`.
    pub cache_hit: bool,
    /// A resume's outcome: `recovered`, or why not (`Failure::as_str`).
    pub resumed: Option<&'static str>,
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
    /// Channels with events waiting for a lower offset (see `Sequence`), for
    /// `release_waiting`. Lock order: a channel's shard, then this.
    waiting: parking_lot::Mutex<HashSet<ChannelName>>,
}

/// `subscription_count` events on channels above this size go out at most every 5 s (protocol.md 2.9).
const COUNT_THROTTLE_ABOVE: usize = 100;
const COUNT_THROTTLE: Duration = Duration::from_secs(5);

impl ChannelRegistry {
    pub fn new(metrics: AppMetrics) -> Self {
        ChannelRegistry {
            channels: DashMap::new(),
            metrics,
            waiting: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// Adds `conn` to `channel` and, atomically with it, enqueues `succeeded` followed by the
    /// cached event of a cache channel: one that arrived during the join, else the one held
    /// here, else `shared_cache` (the cluster's, read during the join). Returns `None` when the
    /// connection was already subscribed.
    ///
    /// `joined` ends the join begun with `begin_join` (also when `None` is returned). A
    /// presence subscription passes its member and roster there: member events that arrived
    /// since the join began are replayed to it where its roster does not show them yet.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        conn: &ConnRef,
        succeeded: &Bytes,
        shared_cache: Option<&CachedEvent>,
        joined: Option<Joined<'_>>,
    ) -> Option<Subscribed> {
        self.subscribe_with(channel, conn, succeeded, shared_cache, joined, None)
    }

    /// `subscribe`, resuming the channel's history (protocol.md 11.2) when `resuming` says
    /// so: the events the client missed, then `resound:recovery`, are enqueued after
    /// `subscription_succeeded` under the same lock that records and delivers the channel's
    /// events (`publish_recorded`), so a replay and the live events after it neither overlap
    /// nor leave a gap.
    pub fn subscribe_with(
        &self,
        channel: &ChannelName,
        conn: &ConnRef,
        succeeded: &Bytes,
        shared_cache: Option<&CachedEvent>,
        joined: Option<Joined<'_>>,
        resuming: Option<Resuming<'_>>,
    ) -> Option<Subscribed> {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        if entry.subscribers.contains_key(&conn.socket_id) {
            if joined.is_some() {
                entry.end_join();
            }
            if resuming.is_some_and(|r| r.shared.is_some()) {
                entry.end_resume();
            }
            return None;
        }
        let occupied = entry.subscribers.is_empty();
        let mark = joined.as_ref().map(|j| j.mark);
        let (member, roster) = match joined.and_then(|j| j.presence) {
            Some((member, roster)) => (Some(member), Some(roster)),
            None => (None, None),
        };
        entry.subscribers.insert(
            conn.socket_id,
            Subscriber {
                conn: conn.clone(),
                member,
                view: None,
                resumed_at: None,
            },
        );
        conn.deliver(succeeded);
        let mut cache_hit = false;
        if channel.kind().is_cache() {
            let now = Instant::now();
            let arrived = entry
                .latest
                .as_ref()
                .filter(|(seq, _)| mark.is_some_and(|m| *seq > m))
                .map(|(_, frame)| frame);
            let cached = arrived.or_else(|| {
                entry
                    .live_cache(now)
                    .or(shared_cache.filter(|c| c.expires > now))
                    .map(|c| &c.frame)
            });
            if let Some(frame) = cached {
                conn.deliver(frame);
                cache_hit = true;
            }
        }
        // Member events that arrived while the roster was read, where it lacks them.
        if let (Some(roster), Some(mark)) = (roster, mark) {
            let mut view: HashSet<UserId> = roster.iter().map(|m| m.user_id.clone()).collect();
            for r in entry.recent.iter().filter(|r| r.seq > mark) {
                if apply(&r.change, &mut view) {
                    conn.deliver(&r.frame);
                }
            }
            entry.settle_view(conn.socket_id, view);
        }
        let mut resumed = None;
        if let Some(r) = resuming {
            let name = channel.as_str();
            let (held_from, replay) = match r.shared {
                Some((mark, found)) => {
                    // Events held for this resume dropped for the bound: it cannot be whole.
                    let found = found.map(|replay| {
                        if entry.held_dropped > mark && replay.outcome.is_ok() {
                            Replay {
                                frames: Vec::new(),
                                outcome: Err(Failure::WindowExceeded),
                                position: replay.position,
                            }
                        } else {
                            replay
                        }
                    });
                    (Some(mark), Some(found))
                }
                None => (
                    None,
                    r.history
                        .filter(|h| h.covers(name))
                        .map(|h| Ok(h.replay(name, r.from, Instant::now()))),
                ),
            };
            let (outcome, position) = match replay {
                Some(Ok(replay)) => {
                    for f in &replay.frames {
                        conn.deliver(f);
                    }
                    (replay.outcome.map_err(Failure::as_str), replay.position)
                }
                Some(Err(f)) => (Err(f.as_str()), None),
                None => (Err(Failure::NoHistory.as_str()), None),
            };
            resumed = Some(outcome.map_or_else(|reason| reason, |_| "recovered"));
            conn.deliver(&resume::recovery(name, outcome, position.as_ref()));
            if let Some(mark) = held_from {
                release_held(&entry, mark, position.as_ref(), r.from, conn);
                entry.end_resume();
                if let (Some(p), Some(sub)) = (position, entry.subscribers.get_mut(&conn.socket_id))
                {
                    sub.resumed_at = Some(Box::new(Stamp {
                        epoch: p.epoch,
                        offset: p.offset,
                    }));
                }
            }
        }
        if mark.is_some() {
            entry.end_join();
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
            resumed,
        })
    }

    /// A join of `channel` begins: until `subscribe` (or `abandon_join`) ends it, the channel's
    /// member events, and a cache channel's last event, are kept for it. Returns the mark for
    /// `Joined::mark`. Call it before this node takes interest in the channel and reads the
    /// roster or the shared cached event.
    pub fn begin_join(&self, channel: &ChannelName) -> u64 {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        entry.joining += 1;
        entry.changes
    }

    /// A join begun with `begin_join` ends without a subscription (refused, or its connection
    /// went away).
    pub fn abandon_join(&self, channel: &ChannelName) {
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.end_join();
        drop(entry);
        let now = Instant::now();
        self.channels.remove_if(channel, |_, c| c.disposable(now));
    }

    /// A resume of `channel`'s shared history begins: until `subscribe_with` (or
    /// `abandon_resume`) ends it, the channel's events are held for it. Returns the mark for
    /// `Resuming::shared`. Call it after this node took interest in the channel and before
    /// the shared history is read, so every event the read misses is held.
    pub fn begin_resume(&self, channel: &ChannelName) -> u64 {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        entry.resuming += 1;
        entry.changes
    }

    /// A resume begun with `begin_resume` ends without a subscription.
    pub fn abandon_resume(&self, channel: &ChannelName) {
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return;
        };
        entry.end_resume();
        drop(entry);
        let now = Instant::now();
        self.channels.remove_if(channel, |_, c| c.disposable(now));
    }

    /// Removes `socket_id` from `channel`; `None` when it was not subscribed.
    pub fn unsubscribe(&self, channel: &ChannelName, socket_id: SocketId) -> Option<Unsubscribed> {
        let mut entry = self.channels.get_mut(channel)?;
        entry.subscribers.remove(&socket_id)?;
        let count = entry.subscribers.len();
        if count == 0 {
            entry.members = None;
        }
        drop(entry);
        self.metrics.subscriptions(channel.kind()).dec();
        let vacated = count == 0;
        if vacated {
            self.metrics.channels(channel.kind()).dec();
            // Keep the entry only while it still holds a live cached event.
            let now = Instant::now();
            self.channels.remove_if(channel, |_, c| c.disposable(now));
        }
        Some(Unsubscribed { vacated, count })
    }

    /// Delivers a publication on a channel to every subscriber of it but `except`; a member
    /// event (by its kind) goes only to the subscribers whose roster it changes. `cache` (a
    /// cache channel's event published on this node, with its name) is remembered first, even
    /// with no subscribers. Remote publications are looked up by name, never parsed again: a
    /// channel without local subscribers costs one map lookup.
    ///
    /// An event frame at or above `deflate`'s threshold is compressed once, when the first
    /// subscriber that negotiated `permessage-deflate` is reached, and shared by all of them.
    pub fn publish(
        &self,
        p: &Publication,
        deflate: Option<&DeflatePolicy>,
        cache: Option<(&ChannelName, CachedEvent)>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let Target::Channel(channel) = &p.target else {
            return fanout;
        };
        let channel = channel.as_str();
        if let Kind::Member(change) = &p.kind {
            if let Some(mut entry) = self.channels.get_mut(channel) {
                entry.member_change(change, &p.frame, p.except, &mut fanout);
            }
            return fanout;
        }
        if let Some(stamp) = &p.stamp {
            return self.publish_in_order(channel, p, stamp, deflate, cache);
        }
        let (frame, except) = (&p.frame, p.except);
        let shared = SharedFrame::new(frame, deflate);
        match cache {
            Some((name, cached)) => {
                let mut entry = self.channels.entry(name.clone()).or_default();
                entry.cache = Some(cached);
                entry.hold(frame, None, except);
                deliver_all(&entry.subscribers, &shared, except, None, &mut fanout);
            }
            None => {
                let Some(entry) = self.channels.get(channel) else {
                    return fanout;
                };
                let noting = entry.joining > 0
                    && entry.key().kind().is_cache()
                    && message::is_cacheable(frame);
                if !noting && entry.resuming == 0 {
                    deliver_all(&entry.subscribers, &shared, except, None, &mut fanout);
                    return fanout;
                }
                // A join is reading the shared cached event, or a resume the shared history:
                // the write lock, to note or hold this one.
                drop(entry);
                if let Some(mut entry) = self.channels.get_mut(channel) {
                    if noting {
                        entry.note_latest(frame);
                    }
                    entry.hold(frame, None, except);
                    deliver_all(&entry.subscribers, &shared, except, None, &mut fanout);
                }
            }
        }
        fanout
    }

    /// Starts the order of `channel`'s events of a shared history at the position a
    /// subscriber read there (`at`: every event up to it was recorded before), unless it has
    /// one: so events that arrive out of order right after a first subscriber joined are put
    /// in order too, and those before its subscription are not delivered late.
    pub fn anchor(&self, channel: &ChannelName, at: &Stamp, deflate: Option<&DeflatePolicy>) {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        let mut ready = Vec::new();
        match entry.sequence.as_deref_mut() {
            None => {
                entry.sequence = Some(Box::new(Sequence {
                    epoch: at.epoch.clone(),
                    next: at.offset + 1,
                    waiting: BTreeMap::new(),
                    bytes: 0,
                    since: None,
                }));
            }
            // Events wait for where the order starts: up to `at` they came before it.
            Some(seq) if seq.next == 0 && seq.epoch == at.epoch => {
                seq.next = at.offset + 1;
                let before: Vec<u64> = seq.waiting.range(..=at.offset).map(|(o, _)| *o).collect();
                for o in before {
                    if let Some(w) = seq.waiting.remove(&o) {
                        seq.bytes = seq.bytes.saturating_sub(w.frame.len());
                    }
                }
                seq.advance(&mut ready);
            }
            Some(_) => {}
        }
        let mut fanout = Fanout::default();
        for (offset, frame, except) in &ready {
            let stamp = Stamp {
                epoch: at.epoch.clone(),
                offset: *offset,
            };
            deliver_event(&mut entry, frame, *except, &stamp, deflate, &mut fanout);
        }
    }

    /// Whether `channel`'s events of a shared history have their order here (see `anchor`).
    pub fn is_sequenced(&self, channel: &ChannelName) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.sequence.as_ref().is_some_and(|s| s.next > 0))
    }

    /// `publish` for an event of a shared history: it goes out in the order of its offset
    /// (see `Sequence`), with the events that waited for it.
    fn publish_in_order(
        &self,
        channel: &str,
        p: &Publication,
        stamp: &Stamp,
        deflate: Option<&DeflatePolicy>,
        cache: Option<(&ChannelName, CachedEvent)>,
    ) -> Fanout {
        let mut fanout = Fanout::default();
        let mut entry = match cache {
            Some((name, cached)) => {
                let mut entry = self.channels.entry(name.clone()).or_default();
                entry.cache = Some(cached);
                entry
            }
            None => match self.channels.get_mut(channel) {
                Some(entry) => entry,
                None => return fanout,
            },
        };
        let ready = entry.sequence(stamp, &p.frame, p.except, Instant::now());
        for (offset, frame, except) in &ready {
            let stamp = Stamp {
                epoch: stamp.epoch.clone(),
                offset: *offset,
            };
            deliver_event(&mut entry, frame, *except, &stamp, deflate, &mut fanout);
        }
        let waits = entry
            .sequence
            .as_ref()
            .is_some_and(|s| !s.waiting.is_empty());
        let name = entry.key().clone();
        drop(entry);
        if waits {
            self.waiting.lock().insert(name);
        }
        fanout
    }

    /// Gives up, on every channel, the missing events that waiting ones have waited for
    /// longer than `REORDER_WAIT` (a lost message, or a publisher gone between recording and
    /// publishing): the waiting ones go out in order. Called periodically.
    pub fn release_waiting(&self, deflate: Option<&DeflatePolicy>) {
        let names: Vec<ChannelName> = {
            let mut set = self.waiting.lock();
            if set.is_empty() {
                return;
            }
            set.drain().collect()
        };
        let now = Instant::now();
        let mut still = Vec::new();
        for name in names {
            let Some(mut entry) = self.channels.get_mut(&name) else {
                continue;
            };
            let mut ready = Vec::new();
            let mut epoch = String::new();
            if let Some(seq) = entry.sequence.as_deref_mut() {
                if seq
                    .since
                    .is_some_and(|t| now.duration_since(t) >= REORDER_WAIT)
                {
                    seq.give_up(&mut ready);
                }
                epoch.clone_from(&seq.epoch);
            }
            let mut fanout = Fanout::default();
            for (offset, frame, except) in &ready {
                let stamp = Stamp {
                    epoch: epoch.clone(),
                    offset: *offset,
                };
                deliver_event(&mut entry, frame, *except, &stamp, deflate, &mut fanout);
            }
            if entry
                .sequence
                .as_ref()
                .is_some_and(|s| !s.waiting.is_empty())
            {
                still.push(name);
            }
        }
        if !still.is_empty() {
            self.waiting.lock().extend(still);
        }
    }

    /// Delivers an event on a channel with history (`channel`, the target of `p`) after
    /// giving it its position in `history`, all under the channel's lock (see
    /// `subscribe_with`); `cache` as in `publish`. Returns the fan-out and the frame with its
    /// position (what every recipient got).
    pub fn publish_recorded(
        &self,
        channel: &ChannelName,
        p: &Publication,
        history: &ChannelHistory,
        deflate: Option<&DeflatePolicy>,
        cache: Option<CachedEvent>,
    ) -> (Fanout, Bytes) {
        let mut fanout = Fanout::default();
        let mut entry = self.channels.entry(channel.clone()).or_default();
        let frame = history.record(channel.as_str(), &p.frame, p.except, Instant::now());
        match cache {
            Some(cached) => {
                entry.cache = Some(CachedEvent {
                    frame: frame.clone(),
                    ..cached
                });
            }
            None if channel.kind().is_cache() && message::is_cacheable(&frame) => {
                entry.note_latest(&frame);
            }
            None => {}
        }
        deliver_all(
            &entry.subscribers,
            &SharedFrame::new(&frame, deflate),
            p.except,
            None,
            &mut fanout,
        );
        let empty = entry.subscribers.is_empty();
        drop(entry);
        if empty {
            let now = Instant::now();
            self.channels.remove_if(channel, |_, c| c.disposable(now));
        }
        (fanout, frame)
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

    /// Gives back the table of channels once most are gone (`hub::shrink_sparse`).
    pub fn shrink(&self) {
        crate::hub::shrink_sparse(&self.channels);
    }

    /// Drops expired cached events of channels nobody is subscribed to.
    pub fn sweep_expired(&self) {
        let now = Instant::now();
        self.channels.retain(|_, c| !c.disposable(now));
    }
}

/// Delivers one event of a shared history, in its turn, to the channel's subscribers (and
/// notes or holds it for the joins and resumes in progress).
fn deliver_event(
    entry: &mut RefMut<'_, ChannelName, Channel>,
    frame: &Bytes,
    except: Option<SocketId>,
    stamp: &Stamp,
    deflate: Option<&DeflatePolicy>,
    fanout: &mut Fanout,
) {
    if entry.key().kind().is_cache() && message::is_cacheable(frame) {
        entry.note_latest(frame);
    }
    entry.hold(frame, Some(stamp), except);
    let shared = SharedFrame::new(frame, deflate);
    deliver_all(&entry.subscribers, &shared, except, Some(stamp), fanout);
}

/// Delivers to a resumed subscriber the events held for its resume (those after `mark`),
/// in the order they arrived, but those at or before `replayed` (the position its
/// `resound:recovery` gave: replayed, or covered by the state a failed resume refetches) and
/// those that skip it or its previous connection.
fn release_held(
    channel: &Channel,
    mark: u64,
    replayed: Option<&resume::Position>,
    from: &Resume,
    conn: &ConnRef,
) {
    for h in channel.held.iter().filter(|h| h.seq > mark) {
        let had = match (replayed, &h.stamp) {
            (Some(p), Some(s)) => s.epoch == p.epoch && s.offset <= p.offset,
            _ => false,
        };
        let skips =
            h.except == Some(conn.socket_id) || (h.except.is_some() && h.except == from.socket_id);
        if !had && !skips {
            conn.deliver(&h.frame);
        }
    }
}

fn deliver_all(
    subscribers: &HashMap<SocketId, Subscriber>,
    frame: &SharedFrame<'_>,
    except: Option<SocketId>,
    stamp: Option<&Stamp>,
    fanout: &mut Fanout,
) {
    for (id, sub) in subscribers {
        if Some(*id) == except {
            continue;
        }
        if let (Some(s), Some(at)) = (stamp, sub.resumed_at.as_deref()) {
            if s.offset <= at.offset && s.epoch == at.epoch {
                continue;
            }
        }
        count(sub.conn.deliver_shared(frame), fanout);
    }
}

fn count(delivery: Delivery, fanout: &mut Fanout) {
    match delivery {
        Delivery::Queued => fanout.delivered += 1,
        Delivery::Overflow => fanout.overflowed += 1,
        Delivery::Closed => {}
    }
}

#[cfg(test)]
mod tests;
