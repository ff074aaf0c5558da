//! Messages on the socket (protocol.md 1.5): `ClientMessage` parsed from a text frame, and the encoders
//! of every server message. Encoders return `Bytes` ready to be framed, so a broadcast is
//! encoded once and shared by every recipient.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::ErrorKind;
use super::presence::json_string;
use super::resume::Resume;
use super::SocketId;

/// A message from a client, after the envelope rules of protocol.md 1.5.
#[derive(Debug, Clone)]
pub enum ClientMessage {
    Ping,
    /// Any `pusher:pong`: only activity.
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        /// The exact `channel_data` string received (presence).
        channel_data: Option<String>,
        /// `resound_resume`: the client asks to resume the channel's history (protocol.md 11.2).
        resume: Option<Resume>,
    },
    Unsubscribe {
        channel: String,
    },
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-` event; `data` is the raw JSON text as received, relayed verbatim.
    ClientEvent {
        event: String,
        channel: String,
        data: Option<Box<RawValue>>,
    },
    /// A `pusher:`/`pusher_internal:` event we do not know: ignored for forward compatibility.
    UnknownProtocolEvent(String),
    /// An event that is neither `pusher:` nor `client-` (ignored, protocol.md 1.8).
    Unsupported(String),
}

impl PartialEq for ClientMessage {
    fn eq(&self, other: &Self) -> bool {
        use ClientMessage as M;
        match (self, other) {
            (M::Ping, M::Ping) | (M::Pong, M::Pong) => true,
            (
                M::Subscribe {
                    channel: a,
                    auth: b,
                    channel_data: c,
                    resume: d,
                },
                M::Subscribe {
                    channel: x,
                    auth: y,
                    channel_data: z,
                    resume: w,
                },
            ) => a == x && b == y && c == z && d == w,
            (M::Unsubscribe { channel: a }, M::Unsubscribe { channel: b }) => a == b,
            (
                M::Signin {
                    auth: a,
                    user_data: b,
                },
                M::Signin {
                    auth: x,
                    user_data: y,
                },
            ) => a == x && b == y,
            (
                M::ClientEvent {
                    event: a,
                    channel: b,
                    data: c,
                },
                M::ClientEvent {
                    event: x,
                    channel: y,
                    data: z,
                },
            ) => a == x && b == y && c.as_ref().map(|d| d.get()) == z.as_ref().map(|d| d.get()),
            (M::UnknownProtocolEvent(a), M::UnknownProtocolEvent(b))
            | (M::Unsupported(a), M::Unsupported(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a frame could not be read as a message. All of them answer 4200 and keep the socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed JSON")]
    MalformedJson,
    #[error("missing or non-string event")]
    MissingEvent,
    #[error("invalid data for {0}")]
    InvalidData(&'static str),
}

impl ParseError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidMessageFormat
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: Option<serde_json::Value>,
    auth: Option<serde_json::Value>,
    channel_data: Option<serde_json::Value>,
    resound_resume: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: Option<serde_json::Value>,
    user_data: Option<serde_json::Value>,
}

/// `data` of a `pusher:` event may be an object or a JSON string holding one (protocol.md 1.5).
fn protocol_data<'de, T: Deserialize<'de>>(
    raw: Option<&'de RawValue>,
    owned: &'de mut String,
    what: &'static str,
) -> Result<T, ParseError> {
    let raw = raw.ok_or(ParseError::InvalidData(what))?;
    let text = raw.get();
    if text.starts_with('"') {
        *owned = serde_json::from_str::<String>(text).map_err(|_| ParseError::InvalidData(what))?;
        serde_json::from_str(owned).map_err(|_| ParseError::InvalidData(what))
    } else {
        serde_json::from_str(text).map_err(|_| ParseError::InvalidData(what))
    }
}

fn string_field(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

impl ClientMessage {
    /// Reads one text frame's payload.
    pub fn parse(payload: &[u8]) -> Result<ClientMessage, ParseError> {
        let env: Envelope<'_> =
            serde_json::from_slice(payload).map_err(|_| ParseError::MalformedJson)?;
        let event: String = env
            .event
            .and_then(|e| serde_json::from_str(e.get()).ok())
            .ok_or(ParseError::MissingEvent)?;
        match event.as_str() {
            "pusher:ping" => Ok(ClientMessage::Ping),
            "pusher:pong" => Ok(ClientMessage::Pong),
            "pusher:subscribe" => {
                let mut owned = String::new();
                let d: SubscribeData = protocol_data(env.data, &mut owned, "pusher:subscribe")?;
                let channel = string_field(d.channel).ok_or(ParseError::InvalidData("channel"))?;
                let channel_data = match d.channel_data {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s),
                    // Old docs show an object: verify against its compact form (last resort).
                    Some(other) => Some(other.to_string()),
                };
                Ok(ClientMessage::Subscribe {
                    channel,
                    auth: string_field(d.auth),
                    channel_data,
                    resume: d.resound_resume.as_ref().and_then(Resume::parse),
                })
            }
            "pusher:unsubscribe" => {
                let mut owned = String::new();
                let d: SubscribeData = protocol_data(env.data, &mut owned, "pusher:unsubscribe")?;
                let channel = string_field(d.channel).ok_or(ParseError::InvalidData("channel"))?;
                Ok(ClientMessage::Unsubscribe { channel })
            }
            "pusher:signin" => {
                let mut owned = String::new();
                let d: SigninData = protocol_data(env.data, &mut owned, "pusher:signin")?;
                Ok(ClientMessage::Signin {
                    auth: string_field(d.auth).ok_or(ParseError::InvalidData("auth"))?,
                    user_data: string_field(d.user_data)
                        .ok_or(ParseError::InvalidData("user_data"))?,
                })
            }
            e if e.starts_with("client-") => {
                let channel: String = env
                    .channel
                    .and_then(|c| serde_json::from_str(c.get()).ok())
                    .ok_or(ParseError::InvalidData("channel"))?;
                Ok(ClientMessage::ClientEvent {
                    event,
                    channel,
                    data: env.data.map(|d| d.to_owned()),
                })
            }
            e if e.starts_with("pusher:") || e.starts_with("pusher_internal:") => {
                Ok(ClientMessage::UnknownProtocolEvent(event))
            }
            _ => Ok(ClientMessage::Unsupported(event)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client encoders.

#[derive(Serialize)]
struct Event<'a, D: Serialize + ?Sized> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: &'a D,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn encode<D: Serialize + ?Sized>(
    event: &str,
    channel: Option<&str>,
    data: &D,
    user_id: Option<&str>,
) -> Bytes {
    let ev = Event {
        event,
        channel,
        data,
        user_id,
    };
    // Serialising strings, raw values and integers into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&ev).unwrap_or_default())
}

/// `pusher:connection_established`, `data` string-encoded (protocol.md 1.4).
pub fn connection_established(socket_id: SocketId, activity_timeout: u64) -> Bytes {
    let inner = format!(r#"{{"socket_id":"{socket_id}","activity_timeout":{activity_timeout}}}"#);
    encode("pusher:connection_established", None, &inner, None)
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: Option<u16>,
    message: &'a str,
}

/// `pusher:error` with object data (protocol.md 1.8); `channel` when it concerns one channel.
pub fn error(kind: &ErrorKind, channel: Option<&str>) -> Bytes {
    let message = kind.message();
    let data = ErrorData {
        code: Some(kind.code()),
        message: &message,
    };
    encode("pusher:error", channel, &data, None)
}

/// Soketi-style `pusher:subscription_error` (opt-in, protocol.md 2.4) so Echo's `.error()` fires.
pub fn subscription_error(kind: &ErrorKind, channel: &str, status: u16) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        error: &'a str,
        status: u16,
    }
    let message = kind.message();
    let t = match kind {
        _ if status == 401 => "AuthError",
        ErrorKind::PresenceUnavailable => "ServerError",
        _ => "LimitReached",
    };
    let data = Data {
        kind: t,
        error: &message,
        status,
    };
    encode("pusher:subscription_error", Some(channel), &data, None)
}

pub fn pong() -> Bytes {
    Bytes::from_static(br#"{"event":"pusher:pong","data":"{}"}"#)
}

pub fn ping() -> Bytes {
    Bytes::from_static(br#"{"event":"pusher:ping","data":"{}"}"#)
}

/// `subscription_succeeded` for non-presence channels: `data` is the string `"{}"`.
pub fn subscription_succeeded(channel: &str) -> Bytes {
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
        None,
    )
}

/// Presence `subscription_succeeded`; `roster_json` from `presence::roster_json`.
pub fn presence_subscription_succeeded(channel: &str, roster_json: &str) -> Bytes {
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        roster_json,
        None,
    )
}

pub fn member_added(channel: &str, user_id: &str, user_info: Option<&RawValue>) -> Bytes {
    let inner = match user_info {
        Some(info) => format!(
            r#"{{"user_id":{},"user_info":{}}}"#,
            json_string(user_id),
            info.get()
        ),
        None => format!(r#"{{"user_id":{}}}"#, json_string(user_id)),
    };
    encode("pusher_internal:member_added", Some(channel), &inner, None)
}

pub fn member_removed(channel: &str, user_id: &str) -> Bytes {
    let inner = format!(r#"{{"user_id":{}}}"#, json_string(user_id));
    encode(
        "pusher_internal:member_removed",
        Some(channel),
        &inner,
        None,
    )
}

pub fn cache_miss(channel: &str) -> Bytes {
    encode("pusher:cache_miss", Some(channel), "{}", None)
}

pub fn subscription_count(channel: &str, count: u64) -> Bytes {
    let inner = format!(r#"{{"subscription_count":{count}}}"#);
    encode(
        "pusher_internal:subscription_count",
        Some(channel),
        &inner,
        None,
    )
}

/// `pusher:signin_success` echoing `user_data` as the same string (protocol.md 3.5).
pub fn signin_success(user_data: &str) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        user_data: &'a str,
    }
    encode("pusher:signin_success", None, &Data { user_data }, None)
}

/// `pusher_internal:watchlist_events` (protocol.md 3.8): `events` is `[(name, ids)]`.
pub fn watchlist_events(events: &[(&str, Vec<String>)]) -> Bytes {
    #[derive(Serialize)]
    struct Item<'a> {
        name: &'a str,
        user_ids: &'a [String],
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        events: Vec<Item<'a>>,
    }
    let inner = Inner {
        events: events
            .iter()
            .map(|(name, ids)| Item {
                name,
                user_ids: ids,
            })
            .collect(),
    };
    let inner = serde_json::to_string(&inner).unwrap_or_default();
    encode("pusher_internal:watchlist_events", None, &inner, None)
}

/// An application event from the HTTP API: `data` is the publisher's string, untouched.
pub fn channel_event(event: &str, channel: &str, data: &str) -> Bytes {
    encode(event, Some(channel), data, None)
}

/// Whether an encoded channel frame, from this node or another, is one a cache channel
/// remembers: an event published through the HTTP API, not a client event (`client-`) nor a
/// `pusher:`/`pusher_internal:` one. Only the event name's start is looked at, so an API event
/// named `client-…` counts as a client event here.
pub fn is_cacheable(frame: &[u8]) -> bool {
    const START: &[u8] = br#"{"event":""#;
    let Some(name) = frame.strip_prefix(START) else {
        return false;
    };
    !name.starts_with(b"client-") && !name.starts_with(b"pusher")
}

/// A relayed client event: only `event`, `channel`, `data` (verbatim) and, on presence
/// channels, the sender's `user_id` (protocol.md 4.2, 4.3).
pub fn client_event(
    event: &str,
    channel: &str,
    data: Option<&RawValue>,
    user_id: Option<&str>,
) -> Bytes {
    #[derive(Serialize)]
    struct Ev<'a> {
        event: &'a str,
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    let ev = Ev {
        event,
        channel,
        data,
        user_id,
    };
    Bytes::from(serde_json::to_vec(&ev).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parse(s: &str) -> ClientMessage {
        ClientMessage::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap_or(Value::Null)
    }

    #[test]
    fn ping_in_every_data_form() {
        for s in [
            r#"{"event":"pusher:ping"}"#,
            r#"{"event":"pusher:ping","data":{}}"#,
            r#"{"event":"pusher:ping","data":"{}"}"#,
        ] {
            assert_eq!(parse(s), ClientMessage::Ping);
        }
    }

    #[test]
    fn subscribe_data_object_or_string() {
        let a = parse(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#);
        let b = parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"my-channel\"}"}"#);
        for m in [a, b] {
            match m {
                ClientMessage::Subscribe { channel, .. } => assert_eq!(channel, "my-channel"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn presence_channel_data_kept_as_exact_string() {
        let s = r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\": \"42\", \"user_info\": {\"name\": \"Zo\\u00eb\"}}","channel":"presence-room"}}"#;
        match parse(s) {
            ClientMessage::Subscribe { channel_data, .. } => assert_eq!(
                channel_data.as_deref(),
                Some(r#"{"user_id": "42", "user_info": {"name": "Zo\u00eb"}}"#)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input_is_a_parse_error() {
        for bad in [
            "",
            "not json",
            "[]",
            "42",
            r#"{"data":{}}"#,
            r#"{"event":5}"#,
        ] {
            assert!(ClientMessage::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            ClientMessage::parse(br#"{"event":"pusher:subscribe","data":{}}"#),
            Err(ParseError::InvalidData("channel"))
        );
        assert!(ClientMessage::parse(br#"{"event":"pusher:subscribe"}"#).is_err());
    }

    #[test]
    fn client_event_data_is_relayed_verbatim() {
        let m = parse(
            r#"{"event":"client-typing","channel":"private-chat","data":{ "a" : 1 },"user_id":"fake"}"#,
        );
        let ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } = m
        else {
            panic!("not a client event")
        };
        let out = client_event(&event, &channel, data.as_deref(), None);
        assert_eq!(
            &out[..],
            br#"{"event":"client-typing","channel":"private-chat","data":{ "a" : 1 }}"#
        );
        let out = client_event(&event, &channel, data.as_deref(), Some("42"));
        assert_eq!(json(&out)["user_id"], "42");
    }

    #[test]
    fn unknown_events_are_not_errors() {
        assert_eq!(
            parse(r#"{"event":"pusher:whatever"}"#),
            ClientMessage::UnknownProtocolEvent("pusher:whatever".into())
        );
        assert_eq!(
            parse(r#"{"event":"hello"}"#),
            ClientMessage::Unsupported("hello".into())
        );
    }

    #[test]
    fn double_encoding_rules() {
        let ce = json(&connection_established(
            SocketId::from_parts(1234, 1234),
            120,
        ));
        let inner: Value =
            serde_json::from_str(ce["data"].as_str().unwrap_or("")).unwrap_or(Value::Null);
        assert_eq!(inner["socket_id"], "1234.1234");
        assert_eq!(inner["activity_timeout"], 120);
        let ss = json(&subscription_succeeded("my-channel"));
        assert_eq!(ss["data"], "{}");
        let err = json(&error(&ErrorKind::InvalidSignature, Some("private-x")));
        assert_eq!(err["data"]["code"], 4009);
        assert_eq!(err["channel"], "private-x");
        let ma = json(&member_added("presence-x", "10", None));
        assert_eq!(ma["data"], r#"{"user_id":"10"}"#);
        assert_eq!(json(&pong())["data"], "{}");
        let ev = json(&channel_event("foo", "project-3", r#"{"some":"data"}"#));
        assert_eq!(ev["data"], r#"{"some":"data"}"#);
        let s = json(&signin_success(r#"{"id":"12345"}"#));
        assert_eq!(s["data"]["user_data"], r#"{"id":"12345"}"#);
    }

    #[test]
    fn only_api_events_are_cacheable() {
        assert!(is_cacheable(&channel_event(
            "price",
            "cache-ticker",
            r#"{"v":1}"#
        )));
        assert!(is_cacheable(&channel_event(
            "App\\Events\\Shipped",
            "private-cache-x",
            "{}"
        )));
        let typing = RawValue::from_string("{}".into()).unwrap_or_else(|e| panic!("{e}"));
        for other in [
            client_event("client-typing", "private-cache-x", Some(&typing), None),
            subscription_count("cache-ticker", 3),
            member_added("presence-cache-x", "1", None),
            subscription_succeeded("cache-ticker"),
        ] {
            assert!(!is_cacheable(&other), "{other:?}");
        }
    }
}
