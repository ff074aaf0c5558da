//! pusher-js's HTTP transports (protocol.md 1.9): `xhr_streaming`, `xhr_polling` (`.../xhr`)
//! and `xhr_send`, under `/pusher/app/{key}/{server}/{session}/`. An HTTP session is a
//! connection like any other — admitted by the WebSocket's handshake checks, driven by the
//! same `Session`, drained from the same bounded queue (see `connection::Established`); this
//! module owns only the bytes: the session table, the framing (`frames`) and the requests.
//!
//! Sessions live on the node that created them: in a cluster, the load balancer sends every
//! request of one session to the same node (hash on the session's path; `docs/operations.md`).

mod frames;
mod session;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use super::edge::EdgeConn;
use super::error::ApiError;
use super::{read_body, ws, Body};
use crate::app::AppId;
use crate::config::FallbackConfig;
use crate::connection::handle::ConnHandle;
use crate::connection::{Admission, Established, Transport};
use crate::protocol::auth::{channel_string_to_sign, verify_token};
use crate::protocol::{ChannelName, ErrorKind, SocketId};
use crate::state::ServerState;
use session::{Kind, Receiver, Shared};

/// The longest `{server}/{session}` accepted (pusher-js sends at most 3 + 1 + 8 bytes).
const MAX_SESSION_ID: usize = 64;

/// What a fallback request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Streaming,
    Polling,
    Send,
    /// `GET .../eventsource`: a Server-Sent Events stream (protocol.md 1.10).
    EventSource,
    /// `POST .../subscribe`: a signed subscription for the session, checked before it is
    /// handed over (so a bad signature is a 401, not a frame on the stream).
    Subscribe,
}

impl Op {
    pub(super) fn parse(s: &str) -> Option<Op> {
        match s {
            "xhr_streaming" => Some(Op::Streaming),
            "xhr" => Some(Op::Polling),
            "xhr_send" => Some(Op::Send),
            "eventsource" => Some(Op::EventSource),
            "subscribe" => Some(Op::Subscribe),
            _ => None,
        }
    }

    /// The `endpoint` label of the HTTP metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Op::Streaming => "xhr_streaming",
            Op::Polling => "xhr_polling",
            Op::Send => "xhr_send",
            Op::EventSource => "eventsource",
            Op::Subscribe => "subscribe",
        }
    }

    fn method(self) -> Method {
        match self {
            Op::EventSource => Method::GET,
            _ => Method::POST,
        }
    }
}

/// The node's HTTP sessions, by app key and session id, with their count per app
/// (`server.fallback.max_sessions_per_app`).
pub struct Sessions {
    config: FallbackConfig,
    map: DashMap<String, Arc<Shared>>,
    per_app: DashMap<AppId, usize>,
}

impl Sessions {
    pub fn new(config: &FallbackConfig) -> Sessions {
        Sessions {
            config: config.clone(),
            map: DashMap::new(),
            per_app: DashMap::new(),
        }
    }

    /// HTTP sessions open on this node.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, key: &str) -> Option<Arc<Shared>> {
        self.map.get(key).map(|s| s.value().clone())
    }

    /// Counts a new session of `app` unless the app is at its cap.
    fn try_count(&self, app: &AppId) -> bool {
        let mut n = self.per_app.entry(app.clone()).or_insert(0);
        if *n >= self.config.max_sessions_per_app {
            return false;
        }
        *n += 1;
        true
    }

    fn uncount(&self, app: &AppId) {
        if let Some(mut n) = self.per_app.get_mut(app) {
            *n = n.saturating_sub(1);
        }
    }

    /// Forgets an ended session (its task calls this last).
    fn remove(&self, shared: &Arc<Shared>) {
        let removed = self
            .map
            .remove_if(&shared.key, |_, s| Arc::ptr_eq(s, shared))
            .is_some();
        if removed {
            self.uncount(&shared.app.id);
        }
    }
}

/// Handles one fallback request.
pub(super) async fn handle(
    req: Request<Incoming>,
    state: &Arc<ServerState>,
    key: &str,
    session: [&str; 2],
    op: Op,
) -> Response<Body> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == Method::OPTIONS {
        preflight(req.headers())
    } else if req.method() != op.method() {
        boxed(ApiError::MethodNotAllowed.into_response())
    } else {
        let id = format!("{}/{}", session[0], session[1]);
        if id.len() > MAX_SESSION_ID {
            boxed(ApiError::BadRequest("Session id too long".into()).into_response())
        } else {
            let table_key = format!("{key}/{id}");
            match op {
                Op::Send => boxed(
                    send(req, state, &table_key)
                        .await
                        .unwrap_or_else(ApiError::into_response),
                ),
                Op::Subscribe => boxed(
                    subscribe(req, state, &table_key)
                        .await
                        .unwrap_or_else(ApiError::into_response),
                ),
                Op::Streaming => receive(req, state, key, table_key, Kind::Streaming).await,
                Op::Polling => receive(req, state, key, table_key, Kind::Polling).await,
                Op::EventSource => receive(req, state, key, table_key, Kind::EventStream).await,
            }
        }
    };
    cors(resp.headers_mut(), origin);
    resp
}

fn boxed(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(BodyExt::boxed_unsync)
}

/// CORS for a page on another origin: the origin itself is allowed at the HTTP level; the
/// app's allowed origins are enforced as for a WebSocket, by the handshake checks (4009
/// delivered as frames the page can read) and on `xhr_send`. No credentials: nothing here
/// reads cookies.
fn cors(headers: &mut HeaderMap, origin: Option<HeaderValue>) {
    let Some(origin) = origin else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn preflight(req: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("OPTIONS, GET, POST"),
    );
    let allow_headers = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("Content-Type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

fn frames_response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=UTF-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
    );
    // A proxy must pass a stream's frames on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn full(bytes: Vec<u8>) -> Response<Body> {
    frames_response(Full::new(Bytes::from(bytes)).boxed_unsync())
}

/// `xhr_send`: a JSON array of messages for the session, handled in arrival order. 204; 404
/// for a session this node does not hold (pusher-js ignores it: the receiving request tells
/// it the session is gone); 400 for a body that is not an array of strings, and the session
/// goes on.
async fn send(
    req: Request<Incoming>,
    state: &Arc<ServerState>,
    table_key: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(shared) = state.fallback.get(table_key) else {
        return Err(ApiError::NotFound("Unknown session".into()));
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !shared.app.origin_allowed(origin) {
        return Err(ApiError::Forbidden("Origin not allowed".into()));
    }
    let (parts, body) = req.into_parts();
    if let Some(conn) = parts.extensions.get::<EdgeConn>() {
        conn.trusted();
    }
    let body = read_body(body, state.server.fallback.max_send_bytes, state).await?;
    state.metrics.http_received_bytes.inc_by(body.len() as u64);
    let messages = frames::parse_send(&body)
        .map_err(|_| ApiError::BadRequest("Body must be a JSON array of strings".into()))?;
    if !messages.is_empty() {
        forward(&shared, state, messages).await?;
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// A receiving request: a stream, or one poll. An unknown session is created (the client
/// is admitted as a WebSocket would be, and reads `o`); a refusal is `o`, the `pusher:error`
/// and `c[code,reason]`, exactly what a refused socket reads. An event stream is created by
/// its one request; a refusal is a 403 naming the code (EventSource does not retry it).
async fn receive(
    req: Request<Incoming>,
    state: &Arc<ServerState>,
    key: &str,
    table_key: String,
    kind: Kind,
) -> Response<Body> {
    let heartbeat = Duration::from_secs(state.server.fallback.heartbeat_interval);
    if let Some(shared) = state.fallback.get(&table_key) {
        if shared.kind != kind || kind == Kind::EventStream {
            return boxed(
                ApiError::BadRequest("The session is already open with another request".into())
                    .into_response(),
            );
        }
        if let Some(conn) = req.extensions().get::<EdgeConn>() {
            conn.trusted();
        }
        let receiver = shared.attach();
        return match kind {
            Kind::Polling => poll(receiver, heartbeat).await,
            _ => stream(receiver, frames::prelude(), heartbeat),
        };
    }
    match open(&req, state, key, table_key, kind).await {
        Err(refused) => {
            state.metrics.refused(refused.code());
            if kind == Kind::EventStream {
                return boxed(
                    ApiError::Forbidden(format!("{}: {}", refused.code(), refused.message()))
                        .into_response(),
                );
            }
            let mut buf = match kind {
                Kind::Streaming => frames::prelude(),
                _ => Vec::new(),
            };
            buf.extend_from_slice(frames::OPEN);
            frames::push_close(&mut buf, Some(&refused));
            full(buf)
        }
        Ok((receiver, created)) => match kind {
            Kind::Streaming => {
                let mut first = frames::prelude();
                if created {
                    first.extend_from_slice(frames::OPEN);
                }
                stream(receiver, first, heartbeat)
            }
            // The first poll is answered at once: the next one collects
            // `connection_established`.
            Kind::Polling if created => full(frames::OPEN.to_vec()),
            Kind::Polling => poll(receiver, heartbeat).await,
            Kind::EventStream => {
                let channels = super::signature::Query::parse(req.uri().query())
                    .get("channels")
                    .map(str::to_string);
                // EventSource's reconnection: the `id:` it last read names the previous
                // stream and where each of its channels with history was (protocol.md 11.2).
                let resumed = req
                    .headers()
                    .get("last-event-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(frames::StreamPositions::parse);
                let mut kept = frames::StreamPositions {
                    socket_id: receiver.shared.conn.socket_id.to_string(),
                    ..frames::StreamPositions::default()
                };
                let subscribes: Vec<String> = channels
                    .iter()
                    .flat_map(|c| c.split(','))
                    .filter(|c| !c.is_empty())
                    .map(|c| {
                        let mut data = serde_json::json!({"channel": c});
                        if let Some(r) = &resumed {
                            if let Some(at) = r.positions.get(c) {
                                data["resound_resume"] = serde_json::json!({
                                    "epoch": at.epoch,
                                    "offset": at.offset,
                                    "socket_id": r.socket_id,
                                });
                                // Carried on until the channel's next event moves it.
                                kept.positions.insert(c.to_string(), at.clone());
                            }
                        }
                        serde_json::json!({"event": "pusher:subscribe", "data": data}).to_string()
                    })
                    .collect();
                *receiver.shared.positions.lock() = kept;
                // The channel is new and empty: the first message always fits.
                if !subscribes.is_empty() {
                    let len: usize = subscribes.iter().map(String::len).sum();
                    let shared = &receiver.shared;
                    shared.inbound_bytes.fetch_add(len, Ordering::AcqRel);
                    if shared.inbound.try_send(subscribes).is_err() {
                        shared.inbound_bytes.fetch_sub(len, Ordering::AcqRel);
                    }
                }
                let mut resp = stream(receiver, Vec::new(), heartbeat);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                resp
            }
        },
    }
}

#[derive(serde::Deserialize)]
struct SubscribeBody {
    channel: String,
    auth: Option<String>,
    channel_data: Option<String>,
}

/// `subscribe`: `{"channel", "auth", "channel_data"}` as pusher-js sends in
/// `pusher:subscribe`, with `auth` from the app's backend for the session's `socket_id`. The
/// signature is checked here (401 when wrong) before the subscription is handed to the
/// session, whose answer (`subscription_succeeded`, or an error) arrives on the stream.
async fn subscribe(
    req: Request<Incoming>,
    state: &Arc<ServerState>,
    table_key: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let Some(shared) = state.fallback.get(table_key) else {
        return Err(ApiError::NotFound("Unknown session".into()));
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !shared.app.origin_allowed(origin) {
        return Err(ApiError::Forbidden("Origin not allowed".into()));
    }
    let body = read_body(req.into_body(), state.server.fallback.max_send_bytes, state).await?;
    let sub: SubscribeBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest("Body must be {\"channel\", \"auth\", \"channel_data\"}".into())
    })?;
    let name = ChannelName::parse(&sub.channel, shared.app.settings.max_channel_name_length)
        .map_err(|_| ApiError::BadRequest("Invalid channel name".into()))?;
    if name.kind().requires_signature() {
        let to_sign = channel_string_to_sign(
            shared.conn.socket_id,
            name.as_str(),
            sub.channel_data.as_deref(),
        );
        let app = &shared.app;
        let valid = sub.auth.as_deref().is_some_and(|token| {
            app.secrets_at(std::time::SystemTime::now())
                .any(|secret| verify_token(app.key.as_str(), secret, &to_sign, token))
        });
        if !valid {
            return Err(ApiError::Unauthorized("Invalid signature".into()));
        }
    }
    let mut data = serde_json::Map::new();
    data.insert("channel".into(), sub.channel.into());
    if let Some(auth) = sub.auth {
        data.insert("auth".into(), auth.into());
    }
    if let Some(channel_data) = sub.channel_data {
        data.insert("channel_data".into(), channel_data.into());
    }
    let msg = serde_json::json!({"event": "pusher:subscribe", "data": data});
    forward(&shared, state, vec![msg.to_string()]).await?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// Hands messages to the session task: 429 when what waits for it would exceed twice
/// `max_send_bytes` (one body always gets through an empty queue), or when no room frees
/// within `server.body_timeout`.
async fn forward(
    shared: &Shared,
    state: &ServerState,
    messages: Vec<String>,
) -> Result<(), ApiError> {
    let limit = state.server.fallback.max_send_bytes * session::INBOUND_BODIES_BYTES;
    let wait = Duration::from_secs(state.server.body_timeout);
    hand_over(shared, limit, wait, messages).await
}

/// `forward` with its bounds given: `limit` bytes waiting, `wait` for room in the queue.
async fn hand_over(
    shared: &Shared,
    limit: usize,
    wait: Duration,
    messages: Vec<String>,
) -> Result<(), ApiError> {
    let busy =
        || ApiError::TooManyRequests("The session is not keeping up with its messages".into());
    let len: usize = messages.iter().map(String::len).sum();
    let before = shared.inbound_bytes.fetch_add(len, Ordering::AcqRel);
    if before > 0 && before + len > limit {
        shared.inbound_bytes.fetch_sub(len, Ordering::AcqRel);
        return Err(busy());
    }
    let sent = tokio::time::timeout(wait, shared.inbound.send(messages)).await;
    if !matches!(sent, Ok(Ok(()))) {
        shared.inbound_bytes.fetch_sub(len, Ordering::AcqRel);
    }
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ApiError::NotFound("Unknown session".into())),
        Err(_) => Err(busy()),
    }
}

/// Creates a session: the WebSocket's handshake checks, the app's session cap, then the
/// connection (registered, told `connection_established`) and its task.
async fn open(
    req: &Request<Incoming>,
    state: &Arc<ServerState>,
    key: &str,
    table_key: String,
    kind: Kind,
) -> Result<(Receiver, bool), ErrorKind> {
    let mut admission = ws::admit(req, key, state);
    let edge = req.extensions().get::<EdgeConn>();
    if matches!(admission, Admission::Accepted { .. }) {
        if let Some(conn) = edge {
            conn.trusted();
        }
    }
    if let Admission::Accepted { slot, .. } = &mut admission {
        if let Err(kind) = slot.reserve_cluster().await {
            admission = Admission::Refused(kind);
        }
    }
    let (app, slot) = match admission {
        Admission::Refused(kind) => return Err(kind),
        Admission::Accepted { app, slot } => (app, slot),
    };
    if !state.fallback.try_count(&app.id) {
        slot.release().await;
        return Err(ErrorKind::OverCapacity);
    }
    let mut bounds = state.budgets.queue_bounds();
    let transport = match kind {
        Kind::Streaming => Transport::XhrStreaming,
        Kind::EventStream => Transport::EventSource,
        Kind::Polling => {
            bounds.bytes = bounds.bytes.min(state.server.fallback.max_poll_queue_bytes);
            Transport::XhrPolling
        }
    };
    let (tx, rx) = mpsc::channel(session::INBOUND_BODIES);
    let socket_id = SocketId::random();
    // Debug-level, as for a WebSocket (`connection::run`).
    let span = tracing::debug_span!("connection", app_id = %app.id, socket_id = %socket_id);
    let hub = slot.hub().clone();
    // Inserted and opened without an await between: a concurrent request for the same id
    // finds the session complete, or not at all.
    let shared = {
        let entry = state.fallback.map.entry(table_key.clone());
        match entry {
            dashmap::Entry::Occupied(occupied) => {
                let existing = occupied.get().clone();
                drop(occupied);
                state.fallback.uncount(&app.id);
                slot.release().await;
                return if existing.kind == kind && kind != Kind::EventStream {
                    Ok((existing.attach(), false))
                } else {
                    Err(ErrorKind::WebSocketProtocol)
                };
            }
            dashmap::Entry::Vacant(vacant) => {
                let conn = ConnHandle::bounded(socket_id, bounds);
                let shared = Arc::new(Shared::new(table_key, app.clone(), kind, conn, tx));
                vacant.insert(shared.clone());
                shared
            }
        }
    };
    let est = {
        let _entered = span.enter();
        Established::open(state.clone(), app, hub, shared.conn.clone(), transport)
    };
    // Attached before the task runs: a session never starts without its receiving request.
    let receiver = shared.attach();
    let task = session::run(shared.clone(), est, slot, rx, state.clone()).instrument(span);
    match edge {
        Some(conn) => drop(conn.edge().spawn(task)),
        None => drop(tokio::spawn(task)),
    }
    debug!("http session opened");
    Ok((receiver, true))
}

/// One poll: what is queued now, or what arrives within a heartbeat interval, or `h`.
async fn poll(receiver: Receiver, heartbeat: Duration) -> Response<Body> {
    match receiver.next(heartbeat).await {
        Some((buf, taken)) => {
            receiver.shared.conn.written(taken);
            full(buf)
        }
        // A newer poll took over.
        None => full(frames::HEARTBEAT.to_vec()),
    }
}

struct Streaming {
    receiver: Receiver,
    first: Option<Vec<u8>>,
    /// Taken from the queue for the last chunk: written once hyper asks for the next one.
    taken: usize,
    heartbeat: Duration,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // What the last chunk took no longer counts against the queue's bounds.
        self.receiver.shared.conn.written(self.taken);
    }
}

/// A stream: `first`, then frames as they come, until the close sequence or a newer
/// request. The response never ends otherwise: pusher-js treats the end of a stream as a
/// lost connection, and reopens one itself past 256 KiB.
fn stream(receiver: Receiver, first: Vec<u8>, heartbeat: Duration) -> Response<Body> {
    let st = Streaming {
        receiver,
        first: Some(first),
        taken: 0,
        heartbeat,
    };
    let chunks = futures_util::stream::unfold(st, |mut st| async move {
        if let Some(first) = st.first.take().filter(|f| !f.is_empty()) {
            return Some((Bytes::from(first), st));
        }
        let conn = &st.receiver.shared.conn;
        conn.written(std::mem::take(&mut st.taken));
        if st.receiver.is_closed() && conn.is_closing() {
            return None;
        }
        let (buf, taken) = st.receiver.next(st.heartbeat).await?;
        st.taken = taken;
        Some((Bytes::from(buf), st))
    });
    let body = StreamBody::new(futures_util::StreamExt::map(chunks, |b| {
        Ok::<_, Infallible>(Frame::data(b))
    }));
    frames_response(BodyExt::boxed_unsync(body))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::session::{Kind, Shared, INBOUND_BODIES};
    use super::{hand_over, ApiError};
    use crate::app::{App, AppId, AppKey, AppSecret, AppSettings};
    use crate::connection::handle::ConnHandle;
    use crate::protocol::SocketId;

    fn shared() -> (Shared, mpsc::Receiver<Vec<String>>) {
        let app = App {
            id: AppId(Arc::from("1")),
            key: AppKey(Arc::from("k")),
            secret: AppSecret(Arc::from("s")),
            settings: AppSettings::default(),
            webhooks: None,
            streams: None,
        };
        let (tx, rx) = mpsc::channel(INBOUND_BODIES);
        let conn = ConnHandle::new(SocketId::random(), 16);
        (
            Shared::new("k".into(), Arc::new(app), Kind::Polling, conn, tx),
            rx,
        )
    }

    fn body(n: usize) -> Vec<String> {
        vec!["x".repeat(n)]
    }

    /// A session whose task does not keep up: what waits is bounded in bytes (429 beyond it,
    /// one body always admitted into an empty queue), in bodies (429 after `wait`), and
    /// taking the waiting bodies makes room again.
    #[tokio::test]
    async fn messages_waiting_for_a_slow_session_are_bounded_and_refused_with_429() {
        let (s, mut rx) = shared();
        let wait = Duration::from_millis(50);
        let too_many = |r: Result<(), ApiError>| matches!(r, Err(ApiError::TooManyRequests(_)));

        // Larger than the limit, but the queue is empty: admitted.
        assert!(hand_over(&s, 2000, wait, body(3000)).await.is_ok());
        assert!(too_many(hand_over(&s, 2000, wait, body(10)).await));
        assert_eq!(
            s.inbound_bytes.load(Ordering::Acquire),
            3000,
            "a refusal holds nothing"
        );

        // The task takes it (as `session::run` does): room again, up to the byte limit.
        let taken: usize = rx.recv().await.into_iter().flatten().map(|m| m.len()).sum();
        s.inbound_bytes.fetch_sub(taken, Ordering::AcqRel);
        assert!(hand_over(&s, 2000, wait, body(1500)).await.is_ok());
        assert!(hand_over(&s, 2000, wait, body(500)).await.is_ok());
        assert!(too_many(hand_over(&s, 2000, wait, body(1)).await));

        // Small bodies fill the queue's slots; the next waits `wait`, then is refused.
        let (s, _rx) = shared();
        for _ in 0..INBOUND_BODIES {
            assert!(hand_over(&s, 1 << 20, wait, body(1)).await.is_ok());
        }
        let started = tokio::time::Instant::now();
        assert!(too_many(hand_over(&s, 1 << 20, wait, body(1)).await));
        assert!(started.elapsed() >= wait);
        assert_eq!(s.inbound_bytes.load(Ordering::Acquire), INBOUND_BODIES);
    }

    /// A session that ended (its task dropped the receiver) answers 404, as pusher-js expects
    /// of an unknown session.
    #[tokio::test]
    async fn a_session_whose_task_ended_is_unknown() {
        let (s, rx) = shared();
        drop(rx);
        let r = hand_over(&s, 1000, Duration::from_millis(50), body(5)).await;
        assert!(matches!(r, Err(ApiError::NotFound(_))));
        assert_eq!(s.inbound_bytes.load(Ordering::Acquire), 0);
    }
}
