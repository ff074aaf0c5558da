//! The cluster wire format: how a publication crosses the backend between nodes.
//!
//! Binary and length-prefixed so the already-encoded Pusher frame is carried as is (never
//! re-encoded): `version u8 | kind u8 | origin u64 | flags u8 | except u64 | [sent_at u64] |
//! app | target | [user] | payload`, where `app`, `target` and `user` are `u16` length + UTF-8
//! and `payload` is the rest. `sent_at` (the publisher's wall clock, ms since the Unix epoch)
//! is there from version 2 on. Version 3 says what a publication is: a presence member event
//! has its own kinds (6 added, 7 removed) with the member's `user`; before it, member events
//! went as channel events (kind 1) and a reader recognises them by their frame (the one place
//! a frame is read, for those older senders only). Version 4 carries the position of an event
//! of a channel with a shared history (flag 2: `epoch` as `u16` length + UTF-8 and `offset
//! u64`, after `target`), so every node stamps the same `resound_position` and can tell a
//! replayed event from a live one; the frame already holds the position, so older versions
//! deliver it unchanged, only without the position beside it.
//!
//! Version 5 adds two control messages for skipping what no other node hears
//! (`redis/quiet.rs`): `interest` (kind 8; `target` is a topic this node just subscribed to)
//! and `sync` (kind 9; `target` empty, then `seq u64`), both with an empty `app`. They are
//! always sent as version 5: an older node ignores and counts them, and no node skips while
//! an older one is live.
//!
//! A node ignores (and counts) messages of a version it does not know. Older nodes do not read
//! newer versions, so a node sends the oldest version any live node reads (see
//! `redis/lease.rs`, `P:wire`); every version reads the older ones.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::{Kind, Publication, RemoteEvent, Stamp, Target};
use crate::app::AppId;
use crate::protocol::{MemberChange, SocketId, UserId};

/// The newest version this node reads (and advertises).
pub const VERSION: u8 = 5;
/// The version that has `interest` and `sync`: no node skips a publish while an older one
/// is live.
pub const QUIET_VERSION: u8 = 5;

const KIND_CHANNEL: u8 = 1;
const KIND_USER: u8 = 2;
const KIND_TERMINATE: u8 = 3;
const KIND_TERMINATE_PRESENCE: u8 = 4;
const KIND_WATCHERS: u8 = 5;
const KIND_MEMBER_ADDED: u8 = 6;
const KIND_MEMBER_REMOVED: u8 = 7;
const KIND_INTEREST: u8 = 8;
const KIND_SYNC: u8 = 9;

const FLAG_EXCEPT: u8 = 1;
/// Version 4: the event's position in its channel's shared history follows `target`.
const FLAG_STAMP: u8 = 2;

/// A decoded cluster message with its header.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The publishing node.
    pub origin: u64,
    /// The publisher's wall clock at publishing (ms since the Unix epoch), from version 2 on.
    pub sent_at: Option<u64>,
    pub message: WireMessage,
}

/// What a cluster message asks.
#[derive(Debug, Clone, PartialEq)]
pub enum WireMessage {
    Event(RemoteEvent),
    Terminate {
        app: AppId,
        user: String,
        presence: bool,
    },
    /// The sender subscribed to `topic` (version 5).
    Interest {
        topic: String,
    },
    /// The sender's own sync `seq` (version 5).
    Sync {
        seq: u64,
    },
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown version {0}")]
    Version(u8),
    #[error("truncated or malformed message")]
    Malformed,
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Writes `version` (1 to `VERSION`): `sent_at` from version 2 on.
fn header(
    buf: &mut BytesMut,
    version: u8,
    kind: u8,
    origin: u64,
    except: Option<SocketId>,
    stamped: bool,
    sent_at: u64,
) {
    buf.put_u8(version);
    buf.put_u8(kind);
    buf.put_u64(origin);
    let stamp_flag = if stamped { FLAG_STAMP } else { 0 };
    match except {
        Some(s) => {
            buf.put_u8(FLAG_EXCEPT | stamp_flag);
            buf.put_u64((u64::from(s.hi()) << 32) | u64::from(s.lo()));
        }
        None => {
            buf.put_u8(stamp_flag);
            buf.put_u64(0);
        }
    }
    if version >= 2 {
        buf.put_u64(sent_at);
    }
}

/// Encodes a publication as `version` (the oldest any live node reads), stamped `sent_at`
/// from version 2 on. Before version 3, a member event goes as a channel event.
pub fn encode_event(origin: u64, e: &RemoteEvent, version: u8, sent_at: u64) -> Bytes {
    let p = &e.publication;
    let (kind, target) = match &p.target {
        Target::Channel(c) => (KIND_CHANNEL, c.as_str()),
        Target::User(u) => (KIND_USER, u.as_str()),
        Target::Watchers(u) => (KIND_WATCHERS, u.as_str()),
    };
    let member = match (&p.kind, kind, version >= 3) {
        (Kind::Member(MemberChange::Added(u)), KIND_CHANNEL, true) => {
            Some((KIND_MEMBER_ADDED, u.as_str()))
        }
        (Kind::Member(MemberChange::Removed(u)), KIND_CHANNEL, true) => {
            Some((KIND_MEMBER_REMOVED, u.as_str()))
        }
        _ => None,
    };
    let kind = member.map_or(kind, |(k, _)| k);
    let stamp = p
        .stamp
        .as_ref()
        .filter(|_| version >= 4 && kind == KIND_CHANNEL);
    let mut buf = BytesMut::with_capacity(
        40 + e.app.as_str().len()
            + target.len()
            + member.map_or(0, |(_, u)| u.len())
            + stamp.map_or(0, |s| 10 + s.epoch.len())
            + p.frame.len(),
    );
    header(
        &mut buf,
        version,
        kind,
        origin,
        p.except,
        stamp.is_some(),
        sent_at,
    );
    put_str(&mut buf, e.app.as_str());
    put_str(&mut buf, target);
    if let Some((_, user)) = member {
        put_str(&mut buf, user);
    }
    if let Some(s) = stamp {
        put_str(&mut buf, &s.epoch);
        buf.put_u64(s.offset);
    }
    buf.put_slice(&p.frame);
    buf.freeze()
}

/// Encodes a terminate request as `version`.
pub fn encode_terminate(
    origin: u64,
    app: &AppId,
    user: &str,
    presence: bool,
    version: u8,
    sent_at: u64,
) -> Bytes {
    let mut buf = BytesMut::new();
    let kind = if presence {
        KIND_TERMINATE_PRESENCE
    } else {
        KIND_TERMINATE
    };
    header(&mut buf, version, kind, origin, None, false, sent_at);
    put_str(&mut buf, app.as_str());
    put_str(&mut buf, user);
    buf.freeze()
}

/// Encodes an announcement: `origin` subscribed to `topic` (always version 5).
pub fn encode_interest(origin: u64, topic: &str, sent_at: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(40 + topic.len());
    header(
        &mut buf,
        QUIET_VERSION,
        KIND_INTEREST,
        origin,
        None,
        false,
        sent_at,
    );
    put_str(&mut buf, "");
    put_str(&mut buf, topic);
    buf.freeze()
}

/// Encodes `origin`'s sync `seq` (always version 5).
pub fn encode_sync(origin: u64, seq: u64, sent_at: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(40);
    header(
        &mut buf,
        QUIET_VERSION,
        KIND_SYNC,
        origin,
        None,
        false,
        sent_at,
    );
    put_str(&mut buf, "");
    put_str(&mut buf, "");
    buf.put_u64(seq);
    buf.freeze()
}

/// The number of a sync (read only when the message is one).
pub fn sync_of(msg: &[u8]) -> Option<u64> {
    if msg.first().is_some_and(|v| *v >= QUIET_VERSION) && msg.get(1) == Some(&KIND_SYNC) {
        match decode(&Bytes::copy_from_slice(msg)) {
            Ok(Received {
                message: WireMessage::Sync { seq },
                ..
            }) => Some(seq),
            _ => None,
        }
    } else {
        None
    }
}

/// The publishing node of a message, read before anything is copied (a node skips its own).
pub fn origin(msg: &[u8]) -> Option<u64> {
    let b: [u8; 8] = msg.get(2..10)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[derive(Deserialize)]
struct MemberFrameShape<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MemberDataShape<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
}

const MEMBER_PREFIX: &[u8] = br#"{"event":"pusher_internal:member_"#;

/// What a channel event of a version-1 or -2 sender is: those wrote member events as channel
/// events, recognisable by the frame they encoded (only its prefix is looked at for others).
fn legacy_kind(frame: &[u8]) -> Kind {
    if !frame.starts_with(MEMBER_PREFIX) {
        return Kind::Event;
    }
    let parsed = serde_json::from_slice::<MemberFrameShape<'_>>(frame)
        .ok()
        .and_then(|outer| {
            let inner: MemberDataShape<'_> = serde_json::from_str(&outer.data).ok()?;
            let user = UserId::new(&inner.user_id)?;
            match outer.event.as_ref() {
                "pusher_internal:member_added" => Some(MemberChange::Added(user)),
                "pusher_internal:member_removed" => Some(MemberChange::Removed(user)),
                _ => None,
            }
        });
    parsed.map_or(Kind::Event, Kind::Member)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| WireError::Malformed)?;
        Ok(u64::from_be_bytes(b))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| WireError::Malformed)?;
        let len = usize::from(u16::from_be_bytes(b));
        let s = self.take(len)?;
        String::from_utf8(s.to_vec()).map_err(|_| WireError::Malformed)
    }
}

pub fn decode(msg: &Bytes) -> Result<Received, WireError> {
    let mut r = Reader { b: msg };
    let version = r.u8()?;
    if !(1..=VERSION).contains(&version) {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let origin = r.u64()?;
    let flags = r.u8()?;
    let except_raw = r.u64()?;
    let sent_at = if version >= 2 { Some(r.u64()?) } else { None };
    let except = (flags & FLAG_EXCEPT != 0).then(|| {
        SocketId::from_parts((except_raw >> 32) as u32, (except_raw & 0xffff_ffff) as u32)
    });
    let app = AppId(r.str()?.into());
    let target = r.str()?;
    let member = match kind {
        KIND_MEMBER_ADDED | KIND_MEMBER_REMOVED if version >= 3 => {
            let user = UserId::new(&r.str()?).ok_or(WireError::Malformed)?;
            Some(if kind == KIND_MEMBER_ADDED {
                MemberChange::Added(user)
            } else {
                MemberChange::Removed(user)
            })
        }
        _ => None,
    };
    let stamp = if version >= 4 && kind == KIND_CHANNEL && flags & FLAG_STAMP != 0 {
        let epoch = r.str()?;
        let offset = r.u64()?;
        Some(Stamp { epoch, offset })
    } else {
        None
    };
    let consumed = msg.len() - r.b.len();
    let event = |target: Target, kind: Kind| {
        WireMessage::Event(RemoteEvent {
            app: app.clone(),
            publication: Publication {
                target,
                kind,
                frame: msg.slice(consumed..),
                except,
                stamp: stamp.clone(),
            },
        })
    };
    let message = match (kind, member) {
        (KIND_CHANNEL, _) => {
            let frame = &msg[consumed..];
            let kind = if version >= 3 {
                Kind::Event
            } else {
                legacy_kind(frame)
            };
            event(Target::Channel(target), kind)
        }
        (KIND_MEMBER_ADDED | KIND_MEMBER_REMOVED, Some(change)) => {
            event(Target::Channel(target), Kind::Member(change))
        }
        (KIND_USER, _) => event(Target::User(target), Kind::Event),
        (KIND_WATCHERS, _) => event(Target::Watchers(target), Kind::Event),
        (KIND_TERMINATE | KIND_TERMINATE_PRESENCE, _) => WireMessage::Terminate {
            app,
            user: target,
            presence: kind == KIND_TERMINATE_PRESENCE,
        },
        (KIND_INTEREST, _) if version >= QUIET_VERSION => WireMessage::Interest { topic: target },
        (KIND_SYNC, _) if version >= QUIET_VERSION => WireMessage::Sync { seq: r.u64()? },
        _ => return Err(WireError::Malformed),
    };
    Ok(Received {
        origin,
        sent_at,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RemoteEvent {
        RemoteEvent {
            app: AppId("app-1".into()),
            publication: Publication::event(
                Target::Channel("presence-room".into()),
                Bytes::from_static(
                    br#"{"event":"x","channel":"presence-room","data":"{\"a\":1}"}"#,
                ),
                Some(SocketId::from_parts(123, 456)),
            ),
        }
    }

    fn member(change: MemberChange, frame: &'static [u8]) -> RemoteEvent {
        let mut e = event();
        e.publication.kind = Kind::Member(change);
        e.publication.frame = Bytes::from_static(frame);
        e
    }

    const ADDED: &[u8] = br#"{"event":"pusher_internal:member_added","channel":"presence-room","data":"{\"user_id\":\"u 1\",\"user_info\":{}}"}"#;
    const REMOVED: &[u8] = br#"{"event":"pusher_internal:member_removed","channel":"presence-room","data":"{\"user_id\":\"u 1\"}"}"#;

    fn user() -> UserId {
        UserId::new("u 1").expect("user id")
    }

    #[test]
    fn events_round_trip_with_the_frame_untouched() {
        let e = event();
        let wire = encode_event(42, &e, VERSION, 1_700_000_000_123);
        assert_eq!(wire[0], 5);
        assert_eq!(
            decode(&wire),
            Ok(Received {
                origin: 42,
                sent_at: Some(1_700_000_000_123),
                message: WireMessage::Event(e.clone())
            })
        );
        let mut u = e;
        u.publication.target = Target::User("user with spaces".into());
        u.publication.except = None;
        assert_eq!(
            decode(&encode_event(7, &u, VERSION, 5)),
            Ok(Received {
                origin: 7,
                sent_at: Some(5),
                message: WireMessage::Event(u)
            })
        );
    }

    /// Version 3 says what a publication is; the frame is carried untouched.
    #[test]
    fn version_3_carries_the_kind_of_member_events() {
        for (e, kind) in [
            (
                member(MemberChange::Added(user()), ADDED),
                KIND_MEMBER_ADDED,
            ),
            (
                member(MemberChange::Removed(user()), REMOVED),
                KIND_MEMBER_REMOVED,
            ),
        ] {
            let wire = encode_event(42, &e, 3, 9);
            assert_eq!((wire[0], wire[1]), (3, kind));
            assert_eq!(
                decode(&wire),
                Ok(Received {
                    origin: 42,
                    sent_at: Some(9),
                    message: WireMessage::Event(e)
                })
            );
        }
        // An event whose frame looks like a member event is still an event (no sniffing).
        let mut e = event();
        e.publication.frame = Bytes::from_static(ADDED);
        let Ok(Received {
            message: WireMessage::Event(read),
            ..
        }) = decode(&encode_event(1, &e, 3, 0))
        else {
            panic!("not an event")
        };
        assert_eq!(read.publication.kind, Kind::Event);
    }

    /// For a node of the previous releases, a member event goes as a channel event, as
    /// before; what they send is recognised by its frame.
    #[test]
    fn older_versions_carry_member_events_as_channel_events() {
        for version in [1, 2] {
            let e = member(MemberChange::Removed(user()), REMOVED);
            let wire = encode_event(42, &e, version, 9);
            assert_eq!((wire[0], wire[1]), (version, KIND_CHANNEL));
            let Ok(Received {
                message: WireMessage::Event(read),
                ..
            }) = decode(&wire)
            else {
                panic!("not an event")
            };
            assert_eq!(read, e);
        }
        let plain = event();
        let Ok(Received {
            message: WireMessage::Event(read),
            ..
        }) = decode(&encode_event(42, &plain, 2, 9))
        else {
            panic!("not an event")
        };
        assert_eq!(read.publication.kind, Kind::Event);
    }

    /// Member frames of older senders, as the Pusher member events are encoded
    /// them, with an id that needs escaping; other frames stay events.
    #[test]
    fn legacy_member_frames_are_recognised_and_nothing_else() {
        let odd = "ü \"q\" 10";
        let user = UserId::new(odd).expect("user id");
        let added = r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"ü \\\"q\\\" 10\",\"user_info\":{\"name\":\"Ada\"}}"}"#;
        let removed = r#"{"event":"pusher_internal:member_removed","channel":"presence-x","data":"{\"user_id\":\"ü \\\"q\\\" 10\"}"}"#;
        assert_eq!(
            legacy_kind(added.as_bytes()),
            Kind::Member(MemberChange::Added(user.clone()))
        );
        assert_eq!(
            legacy_kind(removed.as_bytes()),
            Kind::Member(MemberChange::Removed(user))
        );
        for other in [
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{}"}"#,
            r#"{"event":"client-typing","channel":"presence-x","data":"{\"user_id\":\"1\"}"}"#,
            r#"{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{}"}"#,
            r#"{"event":"pusher_internal:member_other","channel":"presence-x","data":"{\"user_id\":\"1\"}"}"#,
        ] {
            assert_eq!(legacy_kind(other.as_bytes()), Kind::Event, "{other}");
        }
    }

    /// What a node of an older release sends, byte for byte; and what it reads, since a
    /// node sends it until every node reads a newer version.
    #[test]
    fn version_1_is_read_and_written_as_before() {
        let e = event();
        let mut v1 = vec![1u8, KIND_CHANNEL];
        v1.extend_from_slice(&42u64.to_be_bytes());
        v1.push(FLAG_EXCEPT);
        v1.extend_from_slice(&((123u64 << 32) | 456).to_be_bytes());
        v1.extend_from_slice(&5u16.to_be_bytes());
        v1.extend_from_slice(b"app-1");
        v1.extend_from_slice(&13u16.to_be_bytes());
        v1.extend_from_slice(b"presence-room");
        v1.extend_from_slice(&e.publication.frame);
        assert_eq!(encode_event(42, &e, 1, 77), Bytes::from(v1.clone()));
        assert_eq!(
            decode(&Bytes::from(v1)),
            Ok(Received {
                origin: 42,
                sent_at: None,
                message: WireMessage::Event(e)
            })
        );
    }

    /// Version 4 carries an event's position beside its frame; older versions carry the
    /// (stamped) frame alone, so their readers deliver it unchanged.
    #[test]
    fn version_4_carries_the_position_of_a_history_event() {
        let mut e = event();
        e.publication.stamp = Some(Stamp {
            epoch: "00ff00ff00ff00ff".into(),
            offset: 42,
        });
        let wire = encode_event(42, &e, 4, 9);
        assert_eq!(wire[0], 4);
        assert_eq!(
            decode(&wire),
            Ok(Received {
                origin: 42,
                sent_at: Some(9),
                message: WireMessage::Event(e.clone())
            })
        );
        let Ok(Received {
            message: WireMessage::Event(read),
            ..
        }) = decode(&encode_event(42, &e, 3, 9))
        else {
            panic!("not an event")
        };
        assert_eq!(read.publication.stamp, None);
        assert_eq!(read.publication.frame, e.publication.frame);
        assert_eq!(read.publication.except, e.publication.except);
    }

    #[test]
    fn terminate_round_trips() {
        for (version, sent_at) in [(1, None), (2, Some(77)), (3, Some(78))] {
            let w = encode_terminate(
                9,
                &AppId("a".into()),
                "u1",
                true,
                version,
                sent_at.unwrap_or(0),
            );
            assert_eq!(origin(&w), Some(9));
            assert_eq!(
                decode(&w),
                Ok(Received {
                    origin: 9,
                    sent_at,
                    message: WireMessage::Terminate {
                        app: AppId("a".into()),
                        user: "u1".into(),
                        presence: true
                    }
                })
            );
        }
    }

    #[test]
    fn version_5_carries_announcements_and_syncs_which_older_versions_do_not_read() {
        let w = encode_interest(7, "resound#c#app#room", 42);
        assert_eq!(origin(&w), Some(7));
        assert_eq!(
            decode(&w).map(|r| r.message),
            Ok(WireMessage::Interest {
                topic: "resound#c#app#room".into()
            })
        );
        let w = encode_sync(7, 1 << 40, 42);
        assert_eq!(
            decode(&w).map(|r| r.message),
            Ok(WireMessage::Sync { seq: 1 << 40 })
        );
        // Written as version 4, the same kinds are not read.
        let mut old = w.to_vec();
        old[0] = 4;
        assert_eq!(decode(&Bytes::from(old)), Err(WireError::Malformed));
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        let mut w = encode_terminate(9, &AppId("a".into()), "u1", false, 1, 0).to_vec();
        w[0] = VERSION + 1;
        assert_eq!(
            decode(&Bytes::from(w)),
            Err(WireError::Version(VERSION + 1))
        );
        // A member kind is only known from version 3 on.
        let mut w = encode_event(1, &member(MemberChange::Added(user()), ADDED), 3, 0).to_vec();
        w[0] = 2;
        assert!(decode(&Bytes::from(w)).is_err());
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\x01\x00",
            b"\x01\x09aaaaaaaaaaaaaaaaaaaaaaaaa",
            b"\x02\x01aaaaaaaaaaaaaaaaaa",
            b"\x03\x06aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(decode(&Bytes::copy_from_slice(junk)).is_err());
            let _ = origin(junk);
        }
    }
}
