//! The cluster wire format: how an event crosses the backend between nodes.
//!
//! Binary and length-prefixed so the already-encoded Pusher frame is carried as is (never
//! re-encoded): `version u8 | kind u8 | origin u64 | flags u8 | except u64 | app | target |
//! payload`, where `app` and `target` are `u16` length + UTF-8 and `payload` is the rest.
//! A node ignores (and counts) messages of a version it does not know, so a rolling upgrade
//! that adds version 2 keeps version-1 nodes running.

use bytes::{BufMut, Bytes, BytesMut};

use super::{RemoteEvent, Target};
use crate::app::AppId;
use crate::protocol::SocketId;

pub const VERSION: u8 = 1;

const KIND_CHANNEL: u8 = 1;
const KIND_USER: u8 = 2;
const KIND_TERMINATE: u8 = 3;
const KIND_TERMINATE_PRESENCE: u8 = 4;
const KIND_WATCHERS: u8 = 5;

const FLAG_EXCEPT: u8 = 1;

/// A decoded cluster message.
#[derive(Debug, Clone, PartialEq)]
pub enum WireMessage {
    Event {
        origin: u64,
        event: RemoteEvent,
    },
    Terminate {
        origin: u64,
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

fn header(buf: &mut BytesMut, kind: u8, origin: u64, except: Option<SocketId>) {
    buf.put_u8(VERSION);
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
}

pub fn encode_event(origin: u64, e: &RemoteEvent) -> Bytes {
    let (kind, target) = match &e.target {
        Target::Channel(c) => (KIND_CHANNEL, c.as_str()),
        Target::User(u) => (KIND_USER, u.as_str()),
        Target::Watchers(u) => (KIND_WATCHERS, u.as_str()),
    };
    let mut buf = BytesMut::with_capacity(24 + e.app.as_str().len() + target.len() + e.frame.len());
    header(&mut buf, kind, origin, e.except);
    put_str(&mut buf, e.app.as_str());
    put_str(&mut buf, target);
    buf.put_slice(&e.frame);
    buf.freeze()
}

pub fn encode_terminate(origin: u64, app: &AppId, user: &str, presence: bool) -> Bytes {
    let mut buf = BytesMut::new();
    let kind = if presence {
        KIND_TERMINATE_PRESENCE
    } else {
        KIND_TERMINATE
    };
    header(&mut buf, kind, origin, None);
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

pub fn decode(msg: &Bytes) -> Result<WireMessage, WireError> {
    let mut r = Reader { b: msg };
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let origin = r.u64()?;
    let flags = r.u8()?;
    let except_raw = r.u64()?;
    let except = (flags & FLAG_EXCEPT != 0).then(|| {
        SocketId::from_parts((except_raw >> 32) as u32, (except_raw & 0xffff_ffff) as u32)
    });
    let app = AppId(r.str()?.into());
    let target = r.str()?;
    let consumed = msg.len() - r.b.len();
    match kind {
        KIND_CHANNEL | KIND_USER | KIND_WATCHERS => {
            let target = match kind {
                KIND_CHANNEL => Target::Channel(target),
                KIND_USER => Target::User(target),
                _ => Target::Watchers(target),
            };
            Ok(WireMessage::Event {
                origin,
                event: RemoteEvent {
                    app,
                    target,
                    frame: msg.slice(consumed..),
                    except,
                },
            })
        }
        KIND_TERMINATE | KIND_TERMINATE_PRESENCE => Ok(WireMessage::Terminate {
            origin,
            app,
            user: target,
            presence: kind == KIND_TERMINATE_PRESENCE,
        }),
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_with_the_frame_untouched() {
        let e = RemoteEvent {
            app: AppId("app-1".into()),
            target: Target::Channel("presence-room".into()),
            frame: Bytes::from_static(
                br#"{"event":"x","channel":"presence-room","data":"{\"a\":1}"}"#,
            ),
            except: Some(SocketId::from_parts(123, 456)),
        };
        let wire = encode_event(42, &e);
        assert_eq!(
            decode(&wire),
            Ok(WireMessage::Event {
                origin: 42,
                event: e.clone()
            })
        );
        let u = RemoteEvent {
            target: Target::User("user with spaces".into()),
            except: None,
            ..e
        };
        assert_eq!(
            decode(&encode_event(7, &u)),
            Ok(WireMessage::Event {
                origin: 7,
                event: u
            })
        );
    }

    #[test]
    fn terminate_round_trips() {
        let w = encode_terminate(9, &AppId("a".into()), "u1", true);
        assert_eq!(
            decode(&w),
            Ok(WireMessage::Terminate {
                origin: 9,
                app: AppId("a".into()),
                user: "u1".into(),
                presence: true
            })
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors_not_panics() {
        let mut w = encode_terminate(9, &AppId("a".into()), "u1", false).to_vec();
        w[0] = 2;
        assert_eq!(decode(&Bytes::from(w)), Err(WireError::Version(2)));
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\x01\x00",
            b"\x01\x09aaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(decode(&Bytes::copy_from_slice(junk)).is_err());
        }
    }
}
