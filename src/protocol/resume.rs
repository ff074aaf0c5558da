//! The wire of history and resume (protocol.md 11.2), an extension other clients ignore:
//! `resound_position` on events of channels with history, `resound_resume` in the `data` of
//! `pusher:subscribe`, and the `resound:recovery` event that answers it.

use bytes::Bytes;
use serde_json::{json, Value};

use super::message::channel_event;
use super::SocketId;

/// The top-level field that carries an event's position.
pub const POSITION_FIELD: &str = "resound_position";
/// The field of `pusher:subscribe`'s `data` that asks to resume.
pub const RESUME_FIELD: &str = "resound_resume";
/// The event that answers a resume, on its channel.
pub const RECOVERY_EVENT: &str = "resound:recovery";

/// The longest epoch read from a client (the server's are 16 hex digits).
const MAX_EPOCH: usize = 64;

/// Where a client is in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a resuming subscriber asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// `None`: the client has no position yet (it asks for the current one).
    pub position: Option<Position>,
    /// The client's previous connection: events that skipped it are not replayed.
    pub socket_id: Option<SocketId>,
}

impl Resume {
    /// Reads `resound_resume` (`{"epoch", "offset", "socket_id"}`, every field optional). A
    /// position that is half there or malformed is kept as one that matches no history, so
    /// the answer is an explicit failure rather than a silent fresh start.
    pub fn parse(v: &Value) -> Option<Resume> {
        let obj = v.as_object()?;
        let epoch = obj.get("epoch").filter(|e| !e.is_null());
        let offset = obj.get("offset").filter(|o| !o.is_null());
        let position = match (epoch, offset) {
            (None, None) => None,
            (Some(Value::String(e)), Some(o)) if e.len() <= MAX_EPOCH && o.as_u64().is_some() => {
                Some(Position {
                    epoch: e.clone(),
                    offset: o.as_u64().unwrap_or(0),
                })
            }
            _ => Some(Position {
                epoch: String::new(),
                offset: 0,
            }),
        };
        let socket_id = obj
            .get("socket_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        Some(Resume {
            position,
            socket_id,
        })
    }
}

/// `frame`, an encoded channel event (a JSON object), with its position as the last
/// top-level field. Made once per event; every subscriber shares it.
pub fn with_position(frame: &Bytes, epoch: &str, offset: u64) -> Bytes {
    let Some(open) = frame.strip_suffix(b"}") else {
        return frame.clone();
    };
    let tail = format!(",\"{POSITION_FIELD}\":{{\"epoch\":\"{epoch}\",\"offset\":{offset}}}}}");
    let mut out = Vec::with_capacity(frame.len() + tail.len());
    out.extend_from_slice(open);
    out.extend_from_slice(tail.as_bytes());
    Bytes::from(out)
}

/// `resound:recovery` on `channel`: `recovered` events were replayed (or why not), and the
/// position the client is at now (none when the server could not give one).
pub fn recovery(channel: &str, outcome: Result<usize, &str>, at: Option<&Position>) -> Bytes {
    let mut data = match outcome {
        Ok(n) => json!({"status": "recovered", "recovered": n}),
        Err(reason) => json!({"status": "failed", "reason": reason}),
    };
    if let (Some(p), Some(obj)) = (at, data.as_object_mut()) {
        obj.insert("epoch".into(), json!(p.epoch));
        obj.insert("offset".into(), json!(p.offset));
    }
    channel_event(RECOVERY_EVENT, channel, &data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_appended_as_the_last_top_level_field() {
        let f = channel_event("e", "chat", "{}");
        let p = with_position(&f, "00ff", 7);
        let v: Value = serde_json::from_slice(&p).unwrap_or_default();
        assert_eq!(v["event"], "e");
        assert_eq!(v["data"], "{}");
        assert_eq!(v[POSITION_FIELD], json!({"epoch":"00ff","offset":7}));
    }

    #[test]
    fn resume_requests_are_read_leniently_but_never_as_a_fresh_start_by_mistake() {
        let p = |v: Value| Resume::parse(&v).and_then(|r| r.position);
        assert_eq!(Resume::parse(&json!("x")), None);
        assert_eq!(p(json!({})), None);
        assert_eq!(
            p(json!({"epoch":"ab","offset":3})),
            Some(Position {
                epoch: "ab".into(),
                offset: 3
            })
        );
        let broken = Some(Position {
            epoch: String::new(),
            offset: 0,
        });
        assert_eq!(p(json!({"epoch":"ab"})), broken);
        assert_eq!(p(json!({"epoch":"ab","offset":-1})), broken);
        assert_eq!(p(json!({"epoch":7,"offset":1})), broken);
        let r = Resume::parse(&json!({"socket_id":"1.2"}));
        assert_eq!(
            r.and_then(|r| r.socket_id).map(|s| s.to_string()),
            Some("1.2".into())
        );
    }

    #[test]
    fn the_recovery_event_says_what_happened_in_its_data_string() {
        let at = Position {
            epoch: "ab".into(),
            offset: 9,
        };
        let f = recovery("chat", Ok(3), Some(&at));
        let v: Value = serde_json::from_slice(&f).unwrap_or_default();
        assert_eq!(v["event"], RECOVERY_EVENT);
        assert_eq!(v["channel"], "chat");
        let data: Value =
            serde_json::from_str(v["data"].as_str().unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            data,
            json!({"status":"recovered","recovered":3,"epoch":"ab","offset":9})
        );
        let f = recovery("chat", Err("window_exceeded"), None);
        let v: Value = serde_json::from_slice(&f).unwrap_or_default();
        assert_eq!(
            v["data"],
            "{\"reason\":\"window_exceeded\",\"status\":\"failed\"}"
        );
    }
}
