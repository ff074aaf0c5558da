//! The framing of pusher-js's HTTP transports (protocol.md 1.9), with no IO: each frame is one
//! line — `o` (open), `a[...]` (an array of protocol messages, each a JSON string), `h`
//! (heartbeat), `c[code,"reason"]` (close) — and the `xhr_send` body, a JSON array of
//! messages. pusher-js splits a response on `\n` and reads the first character of a line.

use bytes::Bytes;

use crate::connection::handle::Outbound;
use crate::protocol::{message, ErrorKind};

/// The open frame: the session exists (pusher-js is then connected at transport level).
pub const OPEN: &[u8] = b"o\n";
/// A heartbeat: the session is alive and nothing happened.
pub const HEARTBEAT: &[u8] = b"h\n";
/// Bytes a stream starts with so that a browser's XHR reports progress from the first frame
/// on: some only do past a first block of 2 KiB. pusher-js reads it as one heartbeat line,
/// which it ignores before the open frame.
pub const PRELUDE_LEN: usize = 2048;

/// The stream prelude: 2048 `h` then a line end.
pub fn prelude() -> Vec<u8> {
    let mut b = vec![b'h'; PRELUDE_LEN];
    b.push(b'\n');
    b
}

/// Appends `a[...]` with each queued message as a JSON string; returns the payload bytes
/// taken (what the queue's bounds counted). Messages that are not UTF-8 (none are: every
/// server message is JSON) are skipped rather than corrupting the frame.
pub fn push_messages(buf: &mut Vec<u8>, items: impl IntoIterator<Item = Outbound>) -> usize {
    let mut taken = 0;
    let start = buf.len();
    buf.extend_from_slice(b"a[");
    for item in items {
        taken += item.len();
        let Outbound::Text(bytes) = item else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if buf.len() > start + 2 {
            buf.push(b',');
        }
        push_json_string(buf, text);
    }
    if buf.len() == start + 2 {
        buf.truncate(start);
        return taken;
    }
    buf.extend_from_slice(b"]\n");
    taken
}

/// Appends the close sequence for `kind`, as the WebSocket writer sends it: the
/// `pusher:error` message (4xxx codes) then `c[code,"reason"]`. Without a reason: 1000.
pub fn push_close(buf: &mut Vec<u8>, kind: Option<&ErrorKind>) {
    match kind {
        Some(k) => {
            if k.sends_error_event() {
                let err: Bytes = message::error(k, None);
                push_messages(buf, [Outbound::Text(err)]);
            }
            push_close_frame(buf, k.code(), &k.message());
        }
        None => push_close_frame(buf, 1000, "Normal closure"),
    }
}

fn push_close_frame(buf: &mut Vec<u8>, code: u16, reason: &str) {
    buf.extend_from_slice(b"c[");
    buf.extend_from_slice(code.to_string().as_bytes());
    buf.push(b',');
    push_json_string(buf, reason);
    buf.extend_from_slice(b"]\n");
}

fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    // Serialising a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// An event stream's heartbeat: a comment line, ignored by EventSource.
pub const SSE_HEARTBEAT: &[u8] = b": h\n\n";

/// A position in a channel's history (protocol.md 11.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What an event stream's `id:` carries (protocol.md 1.10, 11.2): the stream's `socket_id`
/// and the last position of each of its channels with history, so that the `Last-Event-ID`
/// EventSource sends when it reconnects resumes every one of them, not only the channel of
/// the last event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamPositions {
    pub socket_id: String,
    pub positions: std::collections::BTreeMap<String, Position>,
}

impl StreamPositions {
    /// Reads a `Last-Event-ID` this server wrote; `None` for anything else.
    pub fn parse(last_event_id: &str) -> Option<StreamPositions> {
        serde_json::from_str(last_event_id).ok()
    }
}

/// Appends one `event:`/`data:` record per queued message (protocol.md 1.10): `event` is the
/// message's event name, `data` the whole message (one line: JSON escapes line ends); an event
/// with a `resound_position` also updates `positions` and carries them as its `id:`. Returns
/// the payload bytes taken.
pub fn push_sse_messages(
    buf: &mut Vec<u8>,
    items: impl IntoIterator<Item = Outbound>,
    positions: &mut StreamPositions,
) -> usize {
    let mut taken = 0;
    for item in items {
        taken += item.len();
        let Outbound::Text(bytes) = item else {
            continue;
        };
        push_sse_record(buf, &bytes, Some(&mut *positions));
    }
    taken
}

fn push_sse_record(buf: &mut Vec<u8>, message: &[u8], positions: Option<&mut StreamPositions>) {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        event: std::borrow::Cow<'a, str>,
        #[serde(borrow, default)]
        channel: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        resound_position: Option<Position>,
    }
    let Ok(named) = serde_json::from_slice::<Named<'_>>(message) else {
        return;
    };
    // An event name with a line end would end the field early: such a name cannot be sent.
    if named.event.contains(['\n', '\r']) || message.contains(&b'\n') {
        return;
    }
    if let (Some(positions), Some(channel), Some(at)) =
        (positions, named.channel, named.resound_position)
    {
        positions.positions.insert(channel.into_owned(), at);
        // JSON has no raw line end or NUL, which would end or void the field.
        if let Ok(id) = serde_json::to_vec(&*positions) {
            buf.extend_from_slice(b"id: ");
            buf.extend_from_slice(&id);
            buf.push(b'\n');
        }
    }
    buf.extend_from_slice(b"event: ");
    buf.extend_from_slice(named.event.as_bytes());
    buf.extend_from_slice(b"\ndata: ");
    buf.extend_from_slice(message);
    buf.extend_from_slice(b"\n\n");
}

/// The end of an event stream closed by the server: the `pusher:error` record (4xxx codes,
/// as a socket gets before its close frame); the response then ends.
pub fn push_sse_close(buf: &mut Vec<u8>, kind: Option<&ErrorKind>) {
    if let Some(k) = kind {
        if k.sends_error_event() {
            push_sse_record(buf, &message::error(k, None), None);
        }
    }
}

/// Why an `xhr_send` body was refused (400).
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// Not a JSON array of strings.
    Malformed,
}

/// Parses an `xhr_send` body: a JSON array of messages, each a JSON string holding one
/// protocol message (`[]` is pusher-js's heartbeat).
pub fn parse_send(body: &[u8]) -> Result<Vec<String>, SendError> {
    serde_json::from_slice::<Vec<String>>(body).map_err(|_| SendError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Outbound {
        Outbound::Text(Bytes::from(s.to_string()))
    }

    #[test]
    fn messages_are_one_array_of_json_strings_on_one_line() {
        let mut b = Vec::new();
        let n = push_messages(
            &mut b,
            [
                text(r#"{"event":"a","data":"x\ny"}"#),
                text(r#"{"event":"b"}"#),
            ],
        );
        assert_eq!(n, 27 + 13);
        let line = std::str::from_utf8(&b).unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let arr: Vec<String> = serde_json::from_str(&line[1..line.len() - 1]).unwrap();
        assert_eq!(arr, [r#"{"event":"a","data":"x\ny"}"#, r#"{"event":"b"}"#]);
        assert!(line.starts_with('a'));
    }

    #[test]
    fn nothing_to_send_adds_nothing() {
        let mut b = b"h\n".to_vec();
        assert_eq!(push_messages(&mut b, []), 0);
        assert_eq!(b, b"h\n");
    }

    #[test]
    fn close_carries_the_error_event_then_the_code() {
        let mut b = Vec::new();
        push_close(&mut b, Some(&ErrorKind::AppNotFound));
        let text = String::from_utf8(b).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("a[") && lines[0].contains("4001"));
        let close: serde_json::Value = serde_json::from_str(&lines[1][1..]).unwrap();
        assert_eq!(close[0], 4001);
        assert!(close[1].is_string());
        let mut b = Vec::new();
        push_close(&mut b, None);
        assert_eq!(b, b"c[1000,\"Normal closure\"]\n");
    }

    #[test]
    fn send_bodies_are_arrays_of_strings() {
        assert_eq!(parse_send(b"[]"), Ok(vec![]));
        assert_eq!(
            parse_send(br#"["{\"event\":\"pusher:ping\",\"data\":{}}"]"#),
            Ok(vec![r#"{"event":"pusher:ping","data":{}}"#.to_string()])
        );
        for bad in [&b""[..], b"{}", b"[1]", b"[\"a\"", b"\xff"] {
            assert_eq!(parse_send(bad), Err(SendError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn sse_records_name_the_event_and_carry_the_whole_message() {
        let mut b = Vec::new();
        let n = push_sse_messages(
            &mut b,
            [
                text(r#"{"event":"tick","channel":"news","data":"{\"i\":1}"}"#),
                text(r#"{"event":"pusher:pong","data":"{}"}"#),
            ],
            &mut StreamPositions::default(),
        );
        assert!(n > 0);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "event: tick\ndata: {\"event\":\"tick\",\"channel\":\"news\",\"data\":\"{\\\"i\\\":1}\"}\n\n\
             event: pusher:pong\ndata: {\"event\":\"pusher:pong\",\"data\":\"{}\"}\n\n"
        );
        let mut b = Vec::new();
        push_sse_close(&mut b, Some(&ErrorKind::Terminated));
        let t = String::from_utf8(b).unwrap();
        assert!(
            t.starts_with("event: pusher:error\ndata: ") && t.contains("4009"),
            "{t}"
        );
    }

    #[test]
    fn prelude_is_one_heartbeat_line() {
        let p = prelude();
        assert_eq!(p.len(), PRELUDE_LEN + 1);
        assert_eq!(p.iter().filter(|&&c| c == b'\n').count(), 1);
        assert_eq!(p[0], b'h');
    }
}
