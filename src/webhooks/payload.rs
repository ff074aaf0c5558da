//! Builds one signed webhook request: the body `{"time_ms":...,"events":[...]}`, its
//! signature, and the headers of protocol.md 6.1. Pure: no IO, no clock (the caller passes
//! `time_ms`), so protocol.md's vectors W1/W2 can be checked byte for byte.
//!
//! The body is serialised once and signed over exactly those bytes; retries reuse the same
//! [`OutgoingRequest`] unchanged (protocol.md 6.1: never re-serialise after signing).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::Uri;
use serde::Serialize;
use sha2::Sha256;

use super::endpoint::{Endpoint, X_PUSHER_KEY, X_PUSHER_SIGNATURE};
use super::error::BuildError;
use super::event::WebhookEvent;

/// Sent unless a target's custom headers name their own `User-Agent`.
const USER_AGENT_VALUE: &str = concat!("Resound-Webhooks/", env!("CARGO_PKG_VERSION"));

/// The request body; field order is the wire order (`time_ms` first, as in protocol.md).
#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: &'a [WebhookEvent],
}

/// Serialises the body of one request.
pub(crate) fn encode_body(time_ms: u64, events: &[WebhookEvent]) -> Result<Bytes, BuildError> {
    let bytes = serde_json::to_vec(&Body { time_ms, events })?;
    Ok(Bytes::from(bytes))
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with the app secret (`X-Pusher-Signature`).
pub(crate) fn sign(secret: &str, body: &[u8]) -> Result<String, BuildError> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| BuildError::SigningKey)?;
    mac.update(body);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Milliseconds since the Unix epoch by the wall clock (for `time_ms`).
pub(crate) fn unix_time_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One request, built and signed once, sent as often as the retry policy allows.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingRequest {
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Number of events in the body, for metrics and logs.
    pub(crate) events: usize,
}

/// Builds the request for `events` to `endpoint`: body, signature, `Content-Type:
/// application/json` (no charset: pusher-http-node rejects anything else), `X-Pusher-Key`,
/// `X-Pusher-Signature`, then the endpoint's custom headers (which can never name one of
/// those; [`Endpoint`] has already dropped such names).
pub(crate) fn build_request(
    endpoint: &Endpoint,
    key: &str,
    secret: &str,
    time_ms: u64,
    events: &[WebhookEvent],
) -> Result<OutgoingRequest, BuildError> {
    let body = encode_body(time_ms, events)?;
    let signature = sign(secret, &body)?;
    let mut headers = HeaderMap::with_capacity(3 + endpoint.headers.len());
    for (name, value) in &endpoint.headers {
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        HeaderName::from_static(X_PUSHER_KEY),
        HeaderValue::from_str(key).map_err(|_| BuildError::KeyHeader)?,
    );
    // Lowercase hex digits are always a valid header value.
    headers.insert(
        HeaderName::from_static(X_PUSHER_SIGNATURE),
        HeaderValue::from_str(&signature).map_err(|_| BuildError::SigningKey)?,
    );
    Ok(OutgoingRequest {
        uri: endpoint.uri.clone(),
        headers,
        body,
        events: events.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::webhooks::config::WebhookTarget;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    fn body_text(time_ms: u64, events: &[WebhookEvent]) -> String {
        String::from_utf8(encode_body(time_ms, events).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn vector_w1() {
        let events = [WebhookEvent::ChannelOccupied {
            channel: "test_channel".into(),
        }];
        let body = encode_body(1_327_078_148_132, &events).unwrap();
        assert_eq!(
            &body[..],
            br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#
        );
        assert_eq!(
            sign(SECRET, &body).unwrap(),
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
    }

    #[test]
    fn vector_w2() {
        let events = [
            WebhookEvent::MemberAdded {
                channel: "presence-room".into(),
                user_id: "42".into(),
            },
            WebhookEvent::ClientEvent {
                channel: "private-chat".into(),
                event: "client-typing".into(),
                data: r#"{"typing":true}"#.into(),
                socket_id: "123.456".into(),
                user_id: None,
            },
        ];
        let body = encode_body(1_700_000_000_000, &events).unwrap();
        assert_eq!(
            &body[..],
            br#"{"time_ms":1700000000000,"events":[{"name":"member_added","channel":"presence-room","user_id":"42"},{"name":"client_event","channel":"private-chat","event":"client-typing","data":"{\"typing\":true}","socket_id":"123.456"}]}"#
        );
        assert_eq!(
            sign(SECRET, &body).unwrap(),
            "5256d1fcc7a55eefd7c1ce51331b5f98e123824389de1cf6fe34a755a628f130"
        );
    }

    #[test]
    fn every_event_kind_has_the_shape_of_spec_6_2() {
        let cases = [
            (
                WebhookEvent::ChannelOccupied {
                    channel: "my-channel".into(),
                },
                r#"{"name":"channel_occupied","channel":"my-channel"}"#,
            ),
            (
                WebhookEvent::ChannelVacated {
                    channel: "my-channel".into(),
                },
                r#"{"name":"channel_vacated","channel":"my-channel"}"#,
            ),
            (
                WebhookEvent::MemberAdded {
                    channel: "presence-room".into(),
                    user_id: "42".into(),
                },
                r#"{"name":"member_added","channel":"presence-room","user_id":"42"}"#,
            ),
            (
                WebhookEvent::MemberRemoved {
                    channel: "presence-room".into(),
                    user_id: "42".into(),
                },
                r#"{"name":"member_removed","channel":"presence-room","user_id":"42"}"#,
            ),
            (
                WebhookEvent::ClientEvent {
                    channel: "private-chat".into(),
                    event: "client-typing".into(),
                    data: r#"{"typing":true}"#.into(),
                    socket_id: "123.456".into(),
                    user_id: None,
                },
                r#"{"name":"client_event","channel":"private-chat","event":"client-typing","data":"{\"typing\":true}","socket_id":"123.456"}"#,
            ),
            (
                WebhookEvent::ClientEvent {
                    channel: "presence-room".into(),
                    event: "client-typing".into(),
                    data: r#"{"typing":true}"#.into(),
                    socket_id: "123.456".into(),
                    user_id: Some("42".into()),
                },
                r#"{"name":"client_event","channel":"presence-room","event":"client-typing","data":"{\"typing\":true}","socket_id":"123.456","user_id":"42"}"#,
            ),
            (
                WebhookEvent::CacheMiss {
                    channel: "cache-prices".into(),
                },
                r#"{"name":"cache_miss","channel":"cache-prices"}"#,
            ),
            (
                WebhookEvent::SubscriptionCount {
                    channel: "my-channel".into(),
                    subscription_count: 3,
                },
                r#"{"name":"subscription_count","channel":"my-channel","subscription_count":3}"#,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(
                body_text(5, std::slice::from_ref(&event)),
                format!(r#"{{"time_ms":5,"events":[{expected}]}}"#)
            );
            let back: WebhookEvent = serde_json::from_str(expected).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn request_carries_protocol_headers_and_custom_ones() {
        let target = WebhookTarget {
            headers: vec![
                ("X-Custom".into(), "one".into()),
                ("X-Custom".into(), "two".into()),
                ("Content-Type".into(), "text/plain".into()),
            ],
            ..WebhookTarget::new("http://127.0.0.1:1/hook")
        };
        let (endpoint, skipped) = Endpoint::prepare(&target).unwrap();
        assert_eq!(skipped.len(), 1);
        let events = [WebhookEvent::ChannelOccupied {
            channel: "test_channel".into(),
        }];
        let request = build_request(&endpoint, KEY, SECRET, 1_327_078_148_132, &events).unwrap();
        assert_eq!(request.headers.get_all(CONTENT_TYPE).iter().count(), 1);
        assert_eq!(request.headers[CONTENT_TYPE], "application/json");
        assert_eq!(request.headers[X_PUSHER_KEY], KEY);
        assert_eq!(
            request.headers[X_PUSHER_SIGNATURE],
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
        let custom: Vec<_> = request.headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["one", "two"]);
        assert!(request.headers[USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("Resound-Webhooks/"));
        assert_eq!(request.events, 1);
        assert_eq!(request.uri, "http://127.0.0.1:1/hook");
    }

    #[test]
    fn key_that_is_not_a_header_value_is_an_error() {
        let (endpoint, _) = Endpoint::prepare(&WebhookTarget::new("http://127.0.0.1:1/")).unwrap();
        let events = [WebhookEvent::CacheMiss {
            channel: "cache-a".into(),
        }];
        assert!(matches!(
            build_request(&endpoint, "bad\nkey", SECRET, 1, &events),
            Err(BuildError::KeyHeader)
        ));
    }

    #[test]
    fn wall_clock_is_in_milliseconds() {
        // 2020-01-01 in ms; seconds would be three orders of magnitude smaller.
        assert!(unix_time_ms() > 1_577_836_800_000);
    }
}
