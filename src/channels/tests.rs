//! The registry's unit tests: subscriptions, cache channels, presence member events.

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
    let f = r.publish(
        &at(&ch, Bytes::from_static(b"cached"), None),
        None,
        Some((&ch, cached)),
    );
    assert_eq!(f.delivered, 0);
    let conn = ConnHandle::new(SocketId::from_parts(1, 1), 8);
    let s = r.subscribe(&ch, &conn, &Bytes::from_static(b"ok"), None, None);
    assert!(s.is_some_and(|s| s.occupied && s.cache_hit));
    r.publish(&at(&ch, Bytes::from_static(b"live"), None), None, None);
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
    let f = r.publish(
        &at(&ch, Bytes::from_static(b"ev"), Some(a.socket_id)),
        None,
        None,
    );
    assert_eq!(f.delivered, 1);
    assert!(a.take_queued().is_empty());
    assert_eq!(&text(b.take_queued().pop_front())[..], b"ev");
    assert!(r.unsubscribe(&ch, a.socket_id).is_some_and(|u| !u.vacated));
    assert!(r.unsubscribe(&ch, a.socket_id).is_none());
    assert!(r.unsubscribe(&ch, b.socket_id).is_some_and(|u| u.vacated));
    assert!(r.occupied("").is_empty());
}

fn member(id: &str) -> PresenceMember {
    PresenceMember {
        user_id: UserId::new(id).unwrap_or_else(|| panic!("user id")),
        user_info: None,
    }
}

fn added(id: &str) -> Bytes {
    crate::protocol::message::member_added("presence-room", id, None)
}

fn removed(id: &str) -> Bytes {
    crate::protocol::message::member_removed("presence-room", id)
}

/// An event on `ch`.
fn at(ch: &ChannelName, frame: Bytes, except: Option<SocketId>) -> Publication {
    Publication::event(Target::Channel(ch.to_string()), frame, except)
}

fn uid(id: &str) -> UserId {
    UserId::new(id).unwrap_or_else(|| panic!("user id {id}"))
}

/// `id`'s `member_added` on `ch`.
fn add(ch: &ChannelName, id: &str, except: Option<SocketId>) -> Publication {
    Publication {
        kind: Kind::Member(MemberChange::Added(uid(id))),
        ..at(ch, added(id), except)
    }
}

/// `id`'s `member_removed` on `ch`.
fn rem(ch: &ChannelName, id: &str, except: Option<SocketId>) -> Publication {
    Publication {
        kind: Kind::Member(MemberChange::Removed(uid(id))),
        ..at(ch, removed(id), except)
    }
}

/// Joins `conn` as `id` with `roster` (ids), the join having begun at `mark`.
fn join(r: &ChannelRegistry, conn: &ConnRef, id: &str, roster: &[&str], mark: u64) {
    let roster: Vec<PresenceMember> = roster.iter().map(|u| member(u)).collect();
    let joined = Joined {
        mark,
        presence: Some((member(id), &roster)),
    };
    let ok = Bytes::from_static(b"ok");
    let s = r.subscribe(&name("presence-room"), conn, &ok, None, Some(joined));
    assert!(s.is_some());
}

/// A registry, its `presence-room` and two connections, not subscribed yet.
fn presence_room() -> (ChannelRegistry, ChannelName, ConnRef, ConnRef) {
    (
        registry(),
        name("presence-room"),
        ConnHandle::new(SocketId::from_parts(1, 1), 16),
        ConnHandle::new(SocketId::from_parts(2, 2), 16),
    )
}

fn frames(conn: &ConnRef) -> Vec<Bytes> {
    conn.take_queued()
        .into_iter()
        .map(|o| text(Some(o)))
        .collect()
}

#[test]
fn member_events_reach_only_the_subscribers_whose_roster_they_change() {
    let (r, ch, a, b) = presence_room();
    let mark = r.begin_join(&ch);
    join(&r, &a, "a", &["a"], mark);
    r.publish(&add(&ch, "a", Some(a.socket_id)), None, None);
    // b's roster already lists c, whose member_added is still on its way from another
    // node; a's does not.
    let mark = r.begin_join(&ch);
    join(&r, &b, "b", &["a", "b", "c"], mark);
    r.publish(&add(&ch, "b", Some(b.socket_id)), None, None);
    let _ = (frames(&a), frames(&b));
    let f = r.publish(&add(&ch, "c", None), None, None);
    assert_eq!(f.delivered, 1);
    assert_eq!(frames(&a), vec![added("c")]);
    assert!(frames(&b).is_empty(), "b was told of c twice");
    // Said again (a resync), it reaches nobody.
    assert_eq!(r.publish(&add(&ch, "c", None), None, None).delivered, 0);
    // A removal of someone nobody lists reaches nobody; of c, everybody.
    assert_eq!(r.publish(&rem(&ch, "zed", None), None, None).delivered, 0);
    assert_eq!(r.publish(&rem(&ch, "c", None), None, None).delivered, 2);
    assert_eq!(r.publish(&rem(&ch, "c", None), None, None).delivered, 0);
    // Other events on a presence channel reach everyone as before.
    let ev =
        Bytes::from_static(br#"{"event":"client-typing","channel":"presence-room","data":"{}"}"#);
    assert_eq!(
        r.publish(&at(&ch, ev.clone(), Some(a.socket_id)), None, None)
            .delivered,
        1
    );
}

#[test]
fn member_events_that_arrive_while_a_roster_is_read_are_replayed_where_it_lacks_them() {
    let (r, ch, a, b) = presence_room();
    let mark = r.begin_join(&ch);
    join(&r, &a, "a", &["a", "x"], mark);
    let _ = frames(&a);
    // b's join begins; while its roster is read, y joins and x leaves elsewhere.
    let mark = r.begin_join(&ch);
    r.publish(&add(&ch, "y", None), None, None);
    r.publish(&rem(&ch, "x", None), None, None);
    assert_eq!(frames(&a), vec![added("y"), removed("x")]);
    // The roster was read before both changes: b is told of both, after its roster.
    join(&r, &b, "b", &["a", "x", "b"], mark);
    assert_eq!(
        frames(&b),
        vec![Bytes::from_static(b"ok"), added("y"), removed("x")]
    );
    // From then on b is in step: nothing more about x or y.
    assert_eq!(r.publish(&rem(&ch, "x", None), None, None).delivered, 0);
    assert_eq!(r.publish(&add(&ch, "y", None), None, None).delivered, 0);

    // A roster read after the changes shows them already: nothing is replayed.
    let c = ConnHandle::new(SocketId::from_parts(3, 3), 16);
    let mark = r.begin_join(&ch);
    r.publish(&add(&ch, "z", None), None, None);
    join(&r, &c, "c", &["a", "b", "c", "y", "z"], mark);
    assert_eq!(frames(&c), vec![Bytes::from_static(b"ok")]);
}

#[test]
fn a_cache_event_that_arrives_while_the_shared_one_is_read_is_the_one_a_joiner_gets() {
    use crate::protocol::message::{channel_event, client_event, subscription_count};
    let r = registry();
    let ch = name("cache-ticker");
    let ok = Bytes::from_static(b"ok");
    let event = |v: &str| channel_event("price", "cache-ticker", v);
    let shared = |v: &str| CachedEvent {
        frame: event(v),
        data: Arc::from(v),
        expires: Instant::now() + Duration::from_secs(60),
    };
    let join = |conn: &ConnRef, read: &CachedEvent, mark: u64| {
        let joined = Joined {
            mark,
            presence: None,
        };
        r.subscribe(&ch, conn, &ok, Some(read), Some(joined))
    };
    // Nothing arrived during the read: the shared copy.
    let a = ConnHandle::new(SocketId::from_parts(1, 1), 16);
    let mark = r.begin_join(&ch);
    assert!(join(&a, &shared("1"), mark).is_some_and(|s| s.cache_hit));
    assert_eq!(frames(&a), vec![ok.clone(), event("1")]);
    // "2" reaches the node (from another node) while b's read still returns "1"; a client
    // event and a count are never cached.
    let b = ConnHandle::new(SocketId::from_parts(2, 2), 16);
    let mark = r.begin_join(&ch);
    r.publish(&at(&ch, event("2"), None), None, None);
    let typing =
        serde_json::value::RawValue::from_string("{}".into()).unwrap_or_else(|e| panic!("{e}"));
    r.publish(
        &at(
            &ch,
            client_event("client-typing", "cache-ticker", Some(&typing), None),
            None,
        ),
        None,
        None,
    );
    r.publish(
        &at(&ch, subscription_count("cache-ticker", 2), None),
        None,
        None,
    );
    assert!(join(&b, &shared("1"), mark).is_some());
    assert_eq!(frames(&b), vec![ok.clone(), event("2")]);
    // Events from before a join began are the shared read's business.
    let c = ConnHandle::new(SocketId::from_parts(3, 3), 16);
    r.publish(&at(&ch, event("3"), None), None, None);
    let mark = r.begin_join(&ch);
    assert!(join(&c, &shared("3"), mark).is_some());
    assert_eq!(frames(&c), vec![ok.clone(), event("3")]);
    assert!(r.channels.get(&ch).is_some_and(|c| c.latest.is_none()));
}

#[test]
fn a_join_that_ends_without_a_subscription_leaves_nothing_behind() {
    let r = registry();
    let ch = name("presence-room");
    r.begin_join(&ch);
    r.publish(&add(&ch, "y", None), None, None);
    assert_eq!(r.channels.get(&ch).map(|c| c.recent.len()), Some(1));
    r.abandon_join(&ch);
    assert!(r.channels.get(&ch).is_none());
    // The last subscriber leaving drops the channel's view with it.
    let a = ConnHandle::new(SocketId::from_parts(1, 1), 16);
    let mark = r.begin_join(&ch);
    join(&r, &a, "a", &["a", "y"], mark);
    assert!(r
        .channels
        .get(&ch)
        .is_some_and(|c| c.recent.is_empty() && c.joining == 0));
    assert!(r.unsubscribe(&ch, a.socket_id).is_some_and(|u| u.vacated));
    assert!(r.channels.get(&ch).is_none());
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
            .publish(&at(&ch, Bytes::from_static(b"ev"), None), None, None)
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

/// An event on `ch` with its position in the shared history (its frame says its offset).
fn stamped(ch: &ChannelName, offset: u64, except: Option<SocketId>) -> Publication {
    Publication {
        stamp: Some(Stamp {
            epoch: "ep".into(),
            offset,
        }),
        ..at(ch, Bytes::from(format!("e{offset}")), except)
    }
}

fn replayed_to(offset: u64, frames: &[&'static [u8]]) -> Replay {
    Replay {
        frames: frames.iter().map(|f| Bytes::from_static(f)).collect(),
        outcome: Ok(frames.len()),
        position: Some(resume::Position {
            epoch: "ep".into(),
            offset,
        }),
    }
}

#[test]
fn events_held_during_a_shared_resume_follow_its_recovery_without_duplicates() {
    let r = registry();
    let ch = name("chat-1");
    let old = SocketId::from_parts(9, 9);
    let conn = ConnHandle::new(SocketId::from_parts(1, 1), 64);
    let mark = r.begin_resume(&ch);
    // Arrive while the history is read: 3 is also in the read; 4 skipped the old
    // connection; 5 skips the new one; 6 is new.
    r.publish(&stamped(&ch, 3, None), None, None);
    r.publish(&stamped(&ch, 4, Some(old)), None, None);
    r.publish(&stamped(&ch, 5, Some(conn.socket_id)), None, None);
    r.publish(&stamped(&ch, 6, None), None, None);
    // The read found the history at 3: the order starts there (as `Membership` does).
    let read_at = Stamp {
        epoch: "ep".into(),
        offset: 3,
    };
    r.anchor(&ch, &read_at, None);
    let from = Resume {
        position: Some(resume::Position {
            epoch: "ep".into(),
            offset: 1,
        }),
        socket_id: Some(old),
    };
    let s = r.subscribe_with(
        &ch,
        &conn,
        &Bytes::from_static(b"ok"),
        None,
        None,
        Some(Resuming {
            history: None,
            from: &from,
            shared: Some((mark, Ok(replayed_to(3, &[b"e2", b"e3"])))),
        }),
    );
    assert_eq!(s.and_then(|s| s.resumed), Some("recovered"));
    // A slower node's event the replay had arrives late: not delivered again.
    r.publish(&stamped(&ch, 2, None), None, None);
    r.publish(&stamped(&ch, 7, None), None, None);
    let q: Vec<Bytes> = conn
        .take_queued()
        .into_iter()
        .map(|o| text(Some(o)))
        .collect();
    assert_eq!(q.len(), 6, "{q:?}");
    assert_eq!(&q[0][..], b"ok");
    assert_eq!((&q[1][..], &q[2][..]), (&b"e2"[..], &b"e3"[..]));
    let recovery: serde_json::Value = serde_json::from_slice(&q[3]).unwrap_or_default();
    assert_eq!(recovery["event"], "resound:recovery");
    assert_eq!((&q[4][..], &q[5][..]), (&b"e6"[..], &b"e7"[..]));
    // Nothing is held once no resume is in progress.
    assert!(r.channels.get(&ch).is_some_and(|c| c.held.is_empty()));
}

#[test]
fn a_shared_resume_that_lost_held_events_fails_and_an_abandoned_one_leaves_nothing() {
    let r = registry();
    let ch = name("chat-1");
    let conn = ConnHandle::new(SocketId::from_parts(1, 1), 4096);
    let mark = r.begin_resume(&ch);
    let big = Bytes::from(vec![b'x'; 64 << 10]);
    for _ in 0..20 {
        r.publish(&at(&ch, big.clone(), None), None, None);
    }
    let from = Resume {
        position: None,
        socket_id: None,
    };
    let s = r.subscribe_with(
        &ch,
        &conn,
        &Bytes::from_static(b"ok"),
        None,
        None,
        Some(Resuming {
            history: None,
            from: &from,
            shared: Some((mark, Ok(replayed_to(0, &[])))),
        }),
    );
    assert_eq!(s.and_then(|s| s.resumed), Some("window_exceeded"));
    // The held events that are left still follow (within the 1 MiB bound).
    let q = conn.take_queued();
    assert!(q.len() > 2 && q.len() < 22, "{}", q.len());

    let other = name("chat-2");
    r.begin_resume(&other);
    r.publish(&at(&other, big, None), None, None);
    r.abandon_resume(&other);
    assert!(r.channels.get(&other).is_none(), "nothing left behind");
}

#[test]
fn events_of_a_shared_history_go_out_in_the_order_of_their_offsets() {
    let r = registry();
    let ch = name("chat-1");
    let conn = ConnHandle::new(SocketId::from_parts(1, 1), 64);
    r.subscribe(&ch, &conn, &Bytes::from_static(b"ok"), None, None);
    let _ = conn.take_queued();
    // Until a subscriber's read says where the order starts, events wait.
    r.publish(&stamped(&ch, 1, None), None, None);
    assert!(conn.take_queued().is_empty());
    r.anchor(
        &ch,
        &Stamp {
            epoch: "ep".into(),
            offset: 0,
        },
        None,
    );
    let got = |c: &ConnHandle| -> Vec<Bytes> {
        c.take_queued().into_iter().map(|o| text(Some(o))).collect()
    };
    // 3 arrives before 2 (published at once through two nodes): it waits for 2.
    r.publish(&stamped(&ch, 3, None), None, None);
    assert_eq!(got(&conn), [Bytes::from_static(b"e1")]);
    r.publish(&stamped(&ch, 2, None), None, None);
    assert_eq!(
        got(&conn),
        [Bytes::from_static(b"e2"), Bytes::from_static(b"e3")]
    );
    // 4 never comes: 5 goes on after `REORDER_WAIT`, and 4 arriving later is dropped.
    r.publish(&stamped(&ch, 5, None), None, None);
    r.release_waiting(None);
    assert!(got(&conn).is_empty(), "5 waits for 4");
    std::thread::sleep(REORDER_WAIT + Duration::from_millis(20));
    r.release_waiting(None);
    assert_eq!(got(&conn), [Bytes::from_static(b"e5")]);
    r.publish(&stamped(&ch, 4, None), None, None);
    r.publish(&stamped(&ch, 6, None), None, None);
    assert_eq!(got(&conn), [Bytes::from_static(b"e6")]);
    // A new history (another epoch) starts its own order.
    let fresh = Publication {
        stamp: Some(Stamp {
            epoch: "other".into(),
            offset: 1,
        }),
        ..at(&ch, Bytes::from_static(b"n1"), None)
    };
    r.publish(&fresh, None, None);
    assert!(
        got(&conn).is_empty(),
        "where the new history starts is not known"
    );
    std::thread::sleep(REORDER_WAIT + Duration::from_millis(20));
    r.release_waiting(None);
    assert_eq!(got(&conn), [Bytes::from_static(b"n1")]);
}
