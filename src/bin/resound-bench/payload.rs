//! What the bench puts on the wire and how it reads what comes back: the stamped payload that
//! carries publisher, channel, sequence number and publish time, the Pusher envelopes the
//! clients send, and the classification of frames the clients receive.
//!
//! Pure functions, no IO. Stamped deliveries are found by a byte scan instead of a JSON parse so
//! that the measuring clients spend as little of the shared CPU as possible; everything else
//! (handshake, subscription replies, errors) is rare and parsed with serde_json.

use serde::Deserialize;
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds since the Unix epoch. Every process of a run shares the machine's
/// clock, so a timestamp taken by a publisher can be compared with one taken by a subscriber.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The identity and send time of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Who published: HTTP publisher task number, or a client-event sender's id.
    pub publisher: u64,
    /// Channel index (the channel's name is a prefix plus this number).
    pub channel: u64,
    /// Per (publisher, channel) sequence number, from 0.
    pub seq: u64,
    /// `now_ns()` just before the message left the publisher.
    pub sent_ns: u64,
}

/// The JSON object carried as event data: `{"bench":[publisher,channel,seq,sent_ns]}` plus an
/// optional `pad` string so payload size can be varied. The padding reads like the rows of a
/// dashboard (ids, prices, symbols, without quotes), so it compresses as real JSON does
/// (about 5×) rather than as one repeated byte.
pub fn stamp_json(stamp: Stamp, pad: usize) -> String {
    let mut out = format!(
        "{{\"bench\":[{},{},{},{}]",
        stamp.publisher, stamp.channel, stamp.seq, stamp.sent_ns
    );
    if pad > 0 {
        out.push_str(",\"pad\":\"");
        out.push_str(&dashboard_rows(stamp.seq, pad));
        out.push('"');
    }
    out.push('}');
    out
}

/// `len` bytes of quote-free, dashboard-like rows, varied by `seed`.
fn dashboard_rows(seed: u64, len: usize) -> String {
    let mut out = String::with_capacity(len + 64);
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut id = 0u64;
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let price = (x >> 33) % 100_000;
        out.push_str(&format!(
            "{{id:{id},sym:SYM{},px:{}.{:02},chg:-0.{},st:open}},",
            (x >> 20) % 40,
            price / 100,
            price % 100,
            (x >> 12) % 10
        ));
        id += 1;
    }
    out.truncate(len);
    out
}

/// The marker that precedes the stamp array, in both encodings the bench receives: inside a
/// JSON string (HTTP events, double encoded) and inside an object (client events).
const MARKER: &[u8] = b"bench";

/// Finds the stamp in a received frame, if it carries one.
pub fn find_stamp(frame: &[u8]) -> Option<Stamp> {
    let mut from = 0;
    while let Some(pos) = find(&frame[from..], MARKER) {
        let after = from + pos + MARKER.len();
        let rest = &frame[after..];
        let skip = if rest.starts_with(b"\\\":[") {
            Some(4)
        } else if rest.starts_with(b"\":[") {
            Some(3)
        } else {
            None
        };
        if let Some(skip) = skip {
            return parse_numbers(&rest[skip..]);
        }
        from = after;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses `a,b,c,d]` into a stamp.
fn parse_numbers(bytes: &[u8]) -> Option<Stamp> {
    let mut numbers = [0u64; 4];
    let mut index = 0;
    let mut current: Option<u64> = None;
    for &b in bytes {
        match b {
            b'0'..=b'9' => {
                let digit = u64::from(b - b'0');
                current = Some(current.unwrap_or(0).checked_mul(10)?.checked_add(digit)?);
            }
            b',' | b']' => {
                *numbers.get_mut(index)? = current?;
                index += 1;
                current = None;
                if b == b']' {
                    break;
                }
            }
            _ => return None,
        }
    }
    if index != 4 {
        return None;
    }
    Some(Stamp {
        publisher: numbers[0],
        channel: numbers[1],
        seq: numbers[2],
        sent_ns: numbers[3],
    })
}

/// A received frame that is not a stamped delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// `pusher:connection_established` with the assigned socket id.
    Established { socket_id: String },
    /// `pusher_internal:subscription_succeeded`.
    Subscribed { channel: String },
    /// `pusher:error` or `pusher:subscription_error`; `channel` is set when the error names one.
    Error {
        code: Option<i64>,
        message: String,
        channel: Option<String>,
    },
    /// `pusher:ping`: the client must answer with `pusher:pong`.
    Ping,
    /// Anything else (member_added, pong, application events without a stamp).
    Other,
    /// Not a JSON object with an `event` string.
    Malformed,
}

#[derive(Deserialize)]
struct Envelope {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// Classifies a frame that carried no stamp.
pub fn classify(frame: &[u8]) -> Control {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(frame) else {
        return Control::Malformed;
    };
    // `data` is double encoded on most server messages; accept both shapes.
    let data = match envelope.data {
        Some(Value::String(s)) => serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s)),
        Some(other) => other,
        None => Value::Null,
    };
    match envelope.event.as_str() {
        "pusher:connection_established" => match data.get("socket_id").and_then(Value::as_str) {
            Some(id) => Control::Established {
                socket_id: id.to_string(),
            },
            None => Control::Malformed,
        },
        "pusher_internal:subscription_succeeded" => Control::Subscribed {
            channel: envelope.channel.unwrap_or_default(),
        },
        "pusher:error" | "pusher:subscription_error" => Control::Error {
            code: data.get("code").and_then(Value::as_i64),
            message: data
                .get("message")
                .or_else(|| data.get("error"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            channel: envelope.channel,
        },
        "pusher:ping" => Control::Ping,
        _ => Control::Other,
    }
}

/// `pusher:subscribe` for a public channel (no auth), a private channel (`auth` only) or a
/// presence channel (`auth` and `channel_data`).
pub fn subscribe_message(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> String {
    let mut data = serde_json::Map::new();
    data.insert("channel".into(), Value::String(channel.to_string()));
    data.insert(
        "auth".into(),
        Value::String(auth.unwrap_or_default().to_string()),
    );
    if let Some(cd) = channel_data {
        data.insert("channel_data".into(), Value::String(cd.to_string()));
    }
    serde_json::json!({"event": "pusher:subscribe", "data": data}).to_string()
}

/// A client event whose `data` is the stamp object (relayed verbatim by the server).
pub fn client_event_message(event: &str, channel: &str, stamp: Stamp, pad: usize) -> String {
    format!(
        "{{\"event\":{},\"channel\":{},\"data\":{}}}",
        Value::String(event.to_string()),
        Value::String(channel.to_string()),
        stamp_json(stamp, pad)
    )
}

/// The reply to a server `pusher:ping`.
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// Presence `channel_data` for bench user `n`.
pub fn presence_channel_data(user: u64) -> String {
    format!(r#"{{"user_id":"{user}","user_info":{{"name":"u{user}"}}}}"#)
}

/// The body of `POST /apps/{id}/events` for one stamped event on one channel.
pub fn trigger_body(event: &str, channel: &str, stamp: Stamp, pad: usize) -> String {
    serde_json::json!({
        "name": event,
        "channels": [channel],
        "data": stamp_json(stamp, pad),
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        publisher: 3,
        channel: 17,
        seq: 42,
        sent_ns: 1_700_000_000_123_456_789,
    };

    #[test]
    fn stamp_round_trips_through_an_http_event_frame() {
        // What a server sends for an HTTP-published event: data is the publisher's string.
        let body = trigger_body("bench", "bench-17", STAMP, 10);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        let frame = serde_json::json!({
            "event": "bench", "channel": "bench-17", "data": parsed["data"]
        })
        .to_string();
        assert!(frame.contains(r#"\"bench\":["#));
        assert_eq!(find_stamp(frame.as_bytes()), Some(STAMP));
    }

    #[test]
    fn stamp_round_trips_through_a_client_event_frame() {
        let msg = client_event_message("client-typing", "presence-room-1", STAMP, 0);
        let relayed: Value = serde_json::from_str(&msg).unwrap();
        assert!(relayed["data"].is_object());
        let mut relayed = relayed;
        relayed["user_id"] = Value::String("5".into());
        assert_eq!(find_stamp(relayed.to_string().as_bytes()), Some(STAMP));
    }

    #[test]
    fn frames_without_a_stamp_are_not_mistaken_for_one() {
        let frame = br#"{"event":"bench","channel":"bench-1","data":"{\"bench\":\"no\"}"}"#;
        assert_eq!(find_stamp(frame), None);
        assert_eq!(find_stamp(br#"{"bench":[1,2,3]}"#), None);
        assert_eq!(find_stamp(br#"{"bench":[1,2,3,4,5]}"#), None);
        assert_eq!(find_stamp(br#"{"bench":[1,,3,4]}"#), None);
        assert_eq!(find_stamp(b""), None);
    }

    #[test]
    fn classifies_handshake_and_subscription_replies() {
        let est = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":120}"}"#;
        assert_eq!(
            classify(est),
            Control::Established {
                socket_id: "12.34".into()
            }
        );
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#;
        assert_eq!(
            classify(ok),
            Control::Subscribed {
                channel: "c".into()
            }
        );
        let err = br#"{"event":"pusher:error","channel":"private-x","data":{"code":4009,"message":"Invalid signature"}}"#;
        assert_eq!(
            classify(err),
            Control::Error {
                code: Some(4009),
                message: "Invalid signature".into(),
                channel: Some("private-x".into())
            }
        );
        assert_eq!(
            classify(br#"{"event":"pusher:ping","data":"{}"}"#),
            Control::Ping
        );
        assert_eq!(classify(b"[1]"), Control::Malformed);
    }

    #[test]
    fn subscribe_messages_have_the_documented_shape() {
        let m: Value =
            serde_json::from_str(&subscribe_message("presence-r", Some("k:s"), Some("{}")))
                .unwrap();
        assert_eq!(m["event"], "pusher:subscribe");
        assert_eq!(m["data"]["channel"], "presence-r");
        assert_eq!(m["data"]["auth"], "k:s");
        assert_eq!(m["data"]["channel_data"], "{}");
        assert_eq!(
            presence_channel_data(7),
            r#"{"user_id":"7","user_info":{"name":"u7"}}"#
        );
    }
}
