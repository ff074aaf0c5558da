//! `ClientMessage::parse` (`protocol/message.rs`) on arbitrary frame payloads. Invariants: no
//! panic; a parsed message, written back as the JSON a client would send, parses to the same
//! message (the fields the server acts on survive a round trip; `client-` data is kept verbatim).
#![no_main]

use libfuzzer_sys::fuzz_target;
use resound::protocol::message::ClientMessage;
use serde_json::{json, Map, Value};

/// The JSON a client would send for `m`.
fn reencode(m: &ClientMessage) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    match m {
        ClientMessage::Ping => json!({"event": "pusher:ping", "data": {}}).to_string(),
        ClientMessage::Pong => json!({"event": "pusher:pong", "data": {}}).to_string(),
        ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
            resume,
        } => {
            let mut d = Map::new();
            d.insert("channel".into(), s(channel));
            if let Some(a) = auth {
                d.insert("auth".into(), s(a));
            }
            if let Some(c) = channel_data {
                d.insert("channel_data".into(), s(c));
            }
            if let Some(r) = resume {
                let mut m = Map::new();
                if let Some(p) = &r.position {
                    m.insert("epoch".into(), s(&p.epoch));
                    m.insert("offset".into(), json!(p.offset));
                }
                if let Some(id) = r.socket_id {
                    m.insert("socket_id".into(), s(&id.to_string()));
                }
                d.insert("resound_resume".into(), Value::Object(m));
            }
            json!({"event": "pusher:subscribe", "data": d}).to_string()
        }
        ClientMessage::Unsubscribe { channel } => {
            json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}).to_string()
        }
        ClientMessage::Signin { auth, user_data } => {
            // The string-encoded form of `data` (protocol.md 1.5), the other one the parser takes.
            let d = json!({"auth": auth, "user_data": user_data}).to_string();
            json!({"event": "pusher:signin", "data": d}).to_string()
        }
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            let head = format!("{{\"event\":{},\"channel\":{}", s(event), s(channel));
            match data {
                Some(d) => format!("{head},\"data\":{}}}", d.get()),
                None => format!("{head}}}"),
            }
        }
        ClientMessage::UnknownProtocolEvent(e) | ClientMessage::Unsupported(e) => {
            json!({"event": e}).to_string()
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ClientMessage::parse(data) else {
        return;
    };
    let again = reencode(&m);
    match ClientMessage::parse(again.as_bytes()) {
        Ok(back) => assert!(
            back == m,
            "round trip changed {m:?} into {back:?} via {again}"
        ),
        Err(e) => panic!("{m:?} written as {again} does not parse: {e}"),
    }
});
