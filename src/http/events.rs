//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events` (protocol.md 5.4–5.6.2). Every event is
//! validated before any is published; publishing goes through the broadcaster and the reply
//! never waits for the fan-out.
//!
//! Idempotency keys (protocol.md 11.1) are found here — the `Idempotency-Key` (or
//! `X-Idempotency-Key`) header, the body's `idempotency_key`, and a batch item's — and
//! checked through `ServerState::idempotency` once the request is valid: a remembered key is
//! answered with the first answer, byte for byte, and publishes nothing.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{json, Map, Value};

use super::{ok_json, ApiError, ApiRequest};
use crate::cluster::Claim;
use crate::hub::AppHub;
use crate::protocol::auth::md5_hex;
use crate::protocol::socket_id::is_valid_socket_id;
use crate::protocol::{ChannelName, SocketId};
use crate::state::ServerState;
use crate::tap::{self, Entry, Source};

/// One validated event.
struct Event {
    name: String,
    data: String,
    channels: Vec<ChannelName>,
    socket_id: Option<String>,
    info: Vec<String>,
    /// The item's `idempotency_key`, with the fingerprint of the item.
    key: Option<Keyed>,
}

/// An idempotency key and the fingerprint of what it was sent with.
struct Keyed {
    key: String,
    fingerprint: String,
}

/// The longest idempotency key accepted.
const MAX_KEY_LEN: usize = 128;

/// The headers that carry a request's idempotency key.
const KEY_HEADERS: [&str; 2] = ["idempotency-key", "x-idempotency-key"];

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "An idempotency key is 1 to {MAX_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

/// The request's idempotency key from its headers, and `body_key` (the one event's
/// `idempotency_key` of `/events`); where several are given they must agree. `None` when the
/// app's window is zero (keys are ignored).
fn request_key(
    r: &ApiRequest,
    body_key: Option<&Keyed>,
    route: &str,
) -> Result<Option<Keyed>, ApiError> {
    let mut found: Option<&str> = body_key.map(|k| k.key.as_str());
    for name in KEY_HEADERS {
        for v in r.headers.get_all(name) {
            let v = v.to_str().map_err(|_| {
                ApiError::BadRequest("The idempotency key header must be ASCII".into())
            })?;
            check_key(v)?;
            if found.is_some_and(|f| f != v) {
                return Err(ApiError::BadRequest(
                    "The request carries two different idempotency keys".into(),
                ));
            }
            found = Some(v);
        }
    }
    if r.app.settings.idempotency_window.is_zero() {
        return Ok(None);
    }
    Ok(found.map(|key| {
        let mut signed = Vec::with_capacity(route.len() + 1 + r.body.len());
        signed.extend_from_slice(route.as_bytes());
        signed.push(b'\n');
        signed.extend_from_slice(&r.body);
        Keyed {
            key: key.to_string(),
            fingerprint: md5_hex(&signed),
        }
    }))
}

/// Claims `k`: `Some(answer)` when a request with it was answered within the window.
async fn claim(state: &ServerState, hub: &AppHub, k: &Keyed) -> Result<Option<Bytes>, ApiError> {
    match state.idempotency.claim(hub, &k.key, &k.fingerprint).await {
        Ok(Claim::New) => Ok(None),
        Ok(Claim::Done(answer)) => Ok(Some(answer)),
        Ok(Claim::InProgress) => Err(ApiError::Conflict(
            "A request with this idempotency key is in progress".into(),
        )),
        Ok(Claim::Mismatch) => Err(ApiError::Conflict(
            "This idempotency key was used for a different request".into(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "idempotency key not checked: cluster backend failed");
            Err(ApiError::Unavailable)
        }
    }
}

/// A 200 answer with `body` (the JSON of a first answer, or of one remembered for a key).
fn answer(body: Bytes, replayed: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if replayed {
        h.insert(
            "idempotent-replayed",
            http::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// Ends a keyed request: its answer is remembered under `key`, or on failure the key is
/// freed so that a retry publishes.
async fn finish(
    state: &ServerState,
    hub: &AppHub,
    key: Option<Keyed>,
    result: Result<Value, ApiError>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(k) = key else {
        return result.map(|v| ok_json(&v));
    };
    match result {
        Ok(v) => {
            let body = Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec()));
            state
                .idempotency
                .complete(hub, &k.key, &k.fingerprint, &body)
                .await;
            Ok(answer(body, false))
        }
        Err(e) => {
            state.idempotency.release(hub, &k.key, &k.fingerprint).await;
            Err(e)
        }
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::BadRequest(format!("`{key}` must be a string"))),
    }
}

fn validate(hub: &AppHub, v: &Value, batch: bool) -> Result<Event, ApiError> {
    let s = &hub.app().settings;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("An event must be a JSON object".into()))?;
    let name = str_field(obj, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("`name` is required".into()))?;
    if name.chars().count() > s.max_event_name_length {
        return Err(ApiError::BadRequest(format!(
            "Event name is longer than {} characters",
            s.max_event_name_length
        )));
    }
    if name.starts_with("pusher_internal:") {
        return Err(ApiError::BadRequest(
            "Event names may not start with pusher_internal:".into(),
        ));
    }
    let data = match obj.get("data") {
        None => return Err(ApiError::BadRequest("`data` is required".into())),
        Some(Value::String(d)) => d.clone(),
        // Some SDKs send objects: deliver their compact form.
        Some(other) => other.to_string(),
    };
    if data.len() > s.max_event_payload_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "Event data is {} bytes; the limit is {} bytes",
            data.len(),
            s.max_event_payload_bytes
        )));
    }
    let names: Vec<String> = match (obj.get("channels"), obj.get("channel")) {
        (Some(Value::Array(list)), _) => list
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::BadRequest("`channels` must be strings".into()))
            })
            .collect::<Result<_, _>>()?,
        (Some(_), _) => return Err(ApiError::BadRequest("`channels` must be an array".into())),
        (None, Some(Value::String(c))) => vec![c.clone()],
        (None, Some(_)) => return Err(ApiError::BadRequest("`channel` must be a string".into())),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "`channel` or `channels` is required".into(),
            ))
        }
    };
    if names.is_empty() {
        return Err(ApiError::BadRequest("`channels` must not be empty".into()));
    }
    if batch && names.len() > 1 {
        return Err(ApiError::BadRequest(
            "A batch item targets exactly one channel".into(),
        ));
    }
    if names.len() > s.max_event_channels {
        return Err(ApiError::BadRequest(format!(
            "An event may target at most {} channels",
            s.max_event_channels
        )));
    }
    let mut channels = Vec::with_capacity(names.len());
    for n in &names {
        let c = ChannelName::parse(n, s.max_channel_name_length)
            .map_err(|e| ApiError::BadRequest(format!("Invalid channel name {n:?}: {e}")))?;
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.len() > 1 && channels.iter().any(|c| c.kind().is_encrypted()) {
        return Err(ApiError::BadRequest(
            "An event for an encrypted channel must target that channel alone".into(),
        ));
    }
    let socket_id = str_field(obj, "socket_id")?.map(str::to_string);
    if let Some(sid) = &socket_id {
        if !is_valid_socket_id(sid) {
            return Err(ApiError::BadRequest(format!("Invalid socket_id {sid:?}")));
        }
    }
    let info = str_field(obj, "info")?
        .map(|i| {
            i.split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let key = match str_field(obj, "idempotency_key")? {
        Some(k) => {
            check_key(k)?;
            Some(Keyed {
                key: k.to_string(),
                fingerprint: md5_hex(v.to_string().as_bytes()),
            })
        }
        None => None,
    };
    Ok(Event {
        name: name.to_string(),
        data,
        channels,
        socket_id,
        info,
        key,
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Malformed JSON body: {e}")))
}

fn check_backend_quota(hub: &AppHub, events: &[Event]) -> Result<(), ApiError> {
    let cost: usize = events.iter().map(|e| e.channels.len()).sum();
    if hub.take_backend_events(u32::try_from(cost).unwrap_or(u32::MAX)) {
        Ok(())
    } else {
        hub.metrics.backend_rate_limited.inc();
        Err(ApiError::TooManyRequests(
            "Backend event rate limit exceeded".into(),
        ))
    }
}

async fn publish(state: &ServerState, hub: &AppHub, e: &Event, source: Source) {
    let except = e
        .socket_id
        .as_deref()
        .and_then(|s| s.parse::<SocketId>().ok());
    for c in &e.channels {
        hub.tap.record(|| {
            let (data, data_truncated) = tap::clip(&e.data);
            Entry::ApiEvent {
                channel: c.to_string(),
                event: e.name.clone(),
                data,
                data_truncated,
                source,
            }
        });
        state
            .broadcaster
            .publish_event(hub, c, &e.name, &e.data, except)
            .await;
        state.report_api_event(
            &hub.app(),
            c.as_str(),
            &e.name,
            &e.data,
            e.socket_id.as_deref(),
        );
    }
}

/// The `channels` info object of a publish (protocol.md 5.6.1): every unique target channel, with the
/// requested attributes that apply to it.
async fn info(state: &ServerState, hub: &AppHub, e: &Event) -> Value {
    let mut out = Map::new();
    for c in &e.channels {
        let mut attrs = Map::new();
        for a in &e.info {
            match a.as_str() {
                "user_count" if c.kind().is_presence() => {
                    let n = state
                        .presence
                        .members(&hub.id, c.as_str())
                        .await
                        .map_or(0, |m| m.len());
                    attrs.insert("user_count".into(), json!(n));
                }
                "subscription_count" => {
                    // Best effort (protocol.md 5.5): an unreachable backend omits the count.
                    if let Ok(n) = state.cluster.subscription_count(hub, c.as_str()).await {
                        attrs.insert("subscription_count".into(), json!(n));
                    }
                }
                _ => {}
            }
        }
        out.insert(c.to_string(), Value::Object(attrs));
    }
    Value::Object(out)
}

pub(super) async fn trigger(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let v = parse_body(&r.body)?;
    let e = validate(&r.hub, &v, false)?;
    let key = request_key(r, e.key.as_ref(), "events")?;
    if let Some(k) = &key {
        if let Some(first) = claim(state, &r.hub, k).await? {
            return Ok(answer(first, true));
        }
    }
    let result = async {
        check_backend_quota(&r.hub, std::slice::from_ref(&e))?;
        publish(state, &r.hub, &e, Source::Api).await;
        if e.info.is_empty() {
            return Ok(json!({}));
        }
        Ok(json!({ "channels": info(state, &r.hub, &e).await }))
    }
    .await;
    finish(state, &r.hub, key, result).await
}

/// Publishes one event from the debug console's event creator: validated and published as
/// `POST /events` does (the app's limits and backend quota included), without idempotency
/// keys or `info`.
pub(super) async fn trigger_from_console(
    state: &ServerState,
    hub: &AppHub,
    event: &Value,
) -> Result<(), ApiError> {
    let e = validate(hub, event, false)?;
    check_backend_quota(hub, std::slice::from_ref(&e))?;
    publish(state, hub, &e, Source::Console).await;
    Ok(())
}

pub(super) async fn batch(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let v = parse_body(&r.body)?;
    let items = v
        .get("batch")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("`batch` must be an array".into()))?;
    let max = r.hub.app().settings.max_batch_size;
    if items.len() > max {
        return Err(ApiError::BadRequest(format!(
            "A batch may hold at most {max} events"
        )));
    }
    // All or nothing: validate every item before publishing any. An oversized item is 413.
    let mut events = Vec::with_capacity(items.len());
    let mut first_error = None;
    for (i, item) in items.iter().enumerate() {
        match validate(&r.hub, item, true) {
            Ok(e) => events.push(e),
            Err(ApiError::PayloadTooLarge(m)) => {
                return Err(ApiError::PayloadTooLarge(format!("batch[{i}]: {m}")))
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(ApiError::BadRequest(format!("batch[{i}]: {e}")));
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let key = request_key(r, None, "batch_events")?;
    if let Some(k) = &key {
        if let Some(first) = claim(state, &r.hub, k).await? {
            return Ok(answer(first, true));
        }
    }
    let result = publish_batch(state, &r.hub, &events).await;
    finish(state, &r.hub, key, result).await
}

/// Publishes a validated batch (but the events whose own key was seen within the window)
/// and builds its answer.
async fn publish_batch(
    state: &ServerState,
    hub: &AppHub,
    events: &[Event],
) -> Result<Value, ApiError> {
    check_backend_quota(hub, events)?;
    // Claim every item's key first, so that a conflict publishes nothing.
    let keyed = !hub.app().settings.idempotency_window.is_zero();
    let mut claimed: Vec<&Keyed> = Vec::new();
    let mut skip = vec![false; events.len()];
    for (i, e) in events.iter().enumerate() {
        let Some(k) = e.key.as_ref().filter(|_| keyed) else {
            continue;
        };
        let refused = match state.idempotency.claim(hub, &k.key, &k.fingerprint).await {
            Ok(Claim::New) => {
                claimed.push(k);
                None
            }
            // Published by an earlier request, or being published by another one.
            Ok(Claim::Done(_) | Claim::InProgress) => {
                skip[i] = true;
                None
            }
            Ok(Claim::Mismatch) => Some(ApiError::Conflict(format!(
                "batch[{i}]: this idempotency key was used for a different event"
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "idempotency key not checked: cluster backend failed");
                Some(ApiError::Unavailable)
            }
        };
        if let Some(err) = refused {
            for k in claimed {
                state.idempotency.release(hub, &k.key, &k.fingerprint).await;
            }
            return Err(err);
        }
    }
    for (e, skipped) in events.iter().zip(&skip) {
        if !skipped {
            publish(state, hub, e, Source::Api).await;
        }
    }
    let done = Bytes::from_static(b"{}");
    for k in claimed {
        state
            .idempotency
            .complete(hub, &k.key, &k.fingerprint, &done)
            .await;
    }
    if events.iter().all(|e| e.info.is_empty()) {
        return Ok(json!({}));
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if e.info.is_empty() {
            out.push(json!({}));
        } else {
            // One channel per item: its attributes directly.
            let channels = info(state, hub, e).await;
            let attrs = channels
                .as_object()
                .and_then(|m| m.values().next().cloned())
                .unwrap_or_else(|| json!({}));
            out.push(attrs);
        }
    }
    Ok(json!({ "batch": out }))
}
