//! The cluster wire format: how an event crosses the backend between nodes.
//!
//! Binary and length-prefixed so the already-encoded Pusher frame is carried as is (never
//! re-encoded): `version u8 | kind u8 | origin u64 | flags u8 | except u64 | [sent_at u64] |
//! app | target | payload`, where `app` and `target` are `u16` length + UTF-8 and `payload` is
//! the rest. `sent_at` (the publisher's wall clock, ms since the Unix epoch) is there from
//! version 2 on.
//!
//! A node ignores (and counts) messages of a version it does not know. Version-1 nodes do not
//! read version 2, so a node sends version 2 only once every live node says it reads it (see
//! `redis.rs`, `P:wire`); until then it sends version 1, which every version reads.

use bytes::{BufMut, Bytes, BytesMut};

use super::{RemoteEvent, Target};
use crate::app::AppId;
use crate::protocol::SocketId;

/// The newest version this node reads (and advertises).
pub const VERSION: u8 = 2;

const KIND_CHANNEL: u8 = 1;
const KIND_USER: u8 = 2;
const KIND_TERMINATE: u8 = 3;
const KIND_TERMINATE_PRESENCE: u8 = 4;
const KIND_WATCHERS: u8 = 5;

const FLAG_EXCEPT: u8 = 1;

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

/// `sent_at`: `Some` writes version 2, `None` version 1.
fn header(
    buf: &mut BytesMut,
    kind: u8,
    origin: u64,
    except: Option<SocketId>,
    sent_at: Option<u64>,
) {
    buf.put_u8(if sent_at.is_some() { 2 } else { 1 });
    buf.put_u8(kind);
    buf.put_u64(origin);
    match except {
        Some(s) => {
            buf.put_u8(FLAG_EXCEPT);
            buf.put_u64((u64::from(s.hi()) << 32) | u64::from(s.lo()));
        }
        None => {
            buf.put_u8(0);
            buf.put_u64(0);
        }
    }
    if let Some(t) = sent_at {
        buf.put_u64(t);
    }
}

/// Encodes an event; with `sent_at`, as version 2 (only once every node reads it).
pub fn encode_event(origin: u64, e: &RemoteEvent, sent_at: Option<u64>) -> Bytes {
    let (kind, target) = match &e.target {
        Target::Channel(c) => (KIND_CHANNEL, c.as_str()),
        Target::User(u) => (KIND_USER, u.as_str()),
        Target::Watchers(u) => (KIND_WATCHERS, u.as_str()),
    };
    let mut buf = BytesMut::with_capacity(32 + e.app.as_str().len() + target.len() + e.frame.len());
    header(&mut buf, kind, origin, e.except, sent_at);
    put_str(&mut buf, e.app.as_str());
    put_str(&mut buf, target);
    buf.put_slice(&e.frame);
    buf.freeze()
}

/// Encodes a terminate request; with `sent_at`, as version 2.
pub fn encode_terminate(
    origin: u64,
    app: &AppId,
    user: &str,
    presence: bool,
    sent_at: Option<u64>,
) -> Bytes {
    let mut buf = BytesMut::new();
    let kind = if presence {
        KIND_TERMINATE_PRESENCE
    } else {
        KIND_TERMINATE
    };
    header(&mut buf, kind, origin, None, sent_at);
    put_str(&mut buf, app.as_str());
    put_str(&mut buf, user);
    buf.freeze()
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
    let consumed = msg.len() - r.b.len();
    let message = match kind {
        KIND_CHANNEL | KIND_USER | KIND_WATCHERS => {
            let target = match kind {
                KIND_CHANNEL => Target::Channel(target),
                KIND_USER => Target::User(target),
                _ => Target::Watchers(target),
            };
            WireMessage::Event(RemoteEvent {
                app,
                target,
                frame: msg.slice(consumed..),
                except,
            })
        }
        KIND_TERMINATE | KIND_TERMINATE_PRESENCE => WireMessage::Terminate {
            app,
            user: target,
            presence: kind == KIND_TERMINATE_PRESENCE,
        },
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
            target: Target::Channel("presence-room".into()),
            frame: Bytes::from_static(
                br#"{"event":"x","channel":"presence-room","data":"{\"a\":1}"}"#,
            ),
            except: Some(SocketId::from_parts(123, 456)),
        }
    }

    #[test]
    fn events_round_trip_with_the_frame_untouched() {
        let e = event();
        let wire = encode_event(42, &e, Some(1_700_000_000_123));
        assert_eq!(wire[0], 2);
        assert_eq!(
            decode(&wire),
            Ok(Received {
                origin: 42,
                sent_at: Some(1_700_000_000_123),
                message: WireMessage::Event(e.clone())
            })
        );
        let u = RemoteEvent {
            target: Target::User("user with spaces".into()),
            except: None,
            ..e
        };
        assert_eq!(
            decode(&encode_event(7, &u, Some(5))),
            Ok(Received {
                origin: 7,
                sent_at: Some(5),
                message: WireMessage::Event(u)
            })
        );
    }

    /// What a node of the previous release sends, byte for byte; and what it reads, since a
    /// node sends it until every node reads version 2.
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
        v1.extend_from_slice(&e.frame);
        assert_eq!(encode_event(42, &e, None), Bytes::from(v1.clone()));
        assert_eq!(
            decode(&Bytes::from(v1)),
            Ok(Received {
                origin: 42,
                sent_at: None,
                message: WireMessage::Event(e)
            })
        );
    }

    #[test]
    fn terminate_round_trips() {
        for sent_at in [None, Some(77)] {
            let w = encode_terminate(9, &AppId("a".into()), "u1", true, sent_at);
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
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        let mut w = encode_terminate(9, &AppId("a".into()), "u1", false, None).to_vec();
        w[0] = 3;
        assert_eq!(decode(&Bytes::from(w)), Err(WireError::Version(3)));
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\x01\x00",
            b"\x01\x09aaaaaaaaaaaaaaaaaaaaaaaaa",
            b"\x02\x01aaaaaaaaaaaaaaaaaa",
        ] {
            assert!(decode(&Bytes::copy_from_slice(junk)).is_err());
        }
    }
}
