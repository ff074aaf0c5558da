//! HTTP: routing, the WebSocket upgrade, the signed HTTP API (one file per endpoint group),
//! health and metrics. Every route works at the root and under the configured prefix.

mod channels;
pub mod console;
pub mod edge;
mod error;
mod events;
mod fallback;
mod health;
pub(crate) mod signature;
mod users;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::app::App;
use crate::hub::AppHub;
use crate::state::ServerState;
use edge::{EdgeConn, TimeoutPhase};
use error::json_response;
pub use error::ApiError;

/// A response body: complete (`Full`), or a stream (the HTTP fallback's `xhr_streaming`).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub use console::Console;
pub use fallback::Sessions as FallbackSessions;

/// The TCP peer of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);
pub use health::metrics_only;
use signature::Query;

/// The context of one signed API request, after verification.
pub(crate) struct ApiRequest {
    pub app: Arc<App>,
    pub hub: Arc<AppHub>,
    pub query: Query,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The route a path names (after the prefix is stripped): the one route table.
#[derive(Debug)]
enum Route<'a> {
    Root,
    Up,
    Ready,
    Metrics,
    WebSocket {
        key: &'a str,
    },
    /// pusher-js's HTTP transports (protocol.md 1.9): `/pusher/app/{key}/{server}/{session}/{op}`.
    Fallback {
        key: &'a str,
        session: [&'a str; 2],
        op: fallback::Op,
    },
    Api {
        app_id: &'a str,
        endpoint: Endpoint<'a>,
    },
    /// pusher-http-python 3.3's terminate path without `/apps/{id}` (protocol.md 5.6.6, D35).
    BareTerminate {
        user_id: &'a str,
    },
    NotFound,
}

/// An endpoint of the signed API under `/apps/{id}/`, with its path parameters (still
/// percent-encoded).
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Events,
    BatchEvents,
    Channels,
    Channel(&'a str),
    ChannelUsers(&'a str),
    TerminateUser(&'a str),
    Connections,
}

impl Endpoint<'_> {
    /// The `endpoint` label of the HTTP metrics.
    fn label(&self) -> &'static str {
        match self {
            Endpoint::Events => "events",
            Endpoint::BatchEvents => "batch_events",
            Endpoint::Channels => "channels",
            Endpoint::Channel(_) => "channel",
            Endpoint::ChannelUsers(_) => "channel_users",
            Endpoint::TerminateUser(_) => "terminate_connections",
            Endpoint::Connections => "connections",
        }
    }

    /// The one method the endpoint answers (405 otherwise).
    fn method(&self) -> Method {
        match self {
            Endpoint::Events | Endpoint::BatchEvents | Endpoint::TerminateUser(_) => Method::POST,
            _ => Method::GET,
        }
    }
}

fn route(path: &str) -> Route<'_> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        [""] => Route::Root,
        ["up"] => Route::Up,
        ["ready"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["app", key] if !key.is_empty() => Route::WebSocket { key },
        ["pusher", "app", key, server, session, op] | ["app", key, server, session, op]
            if !key.is_empty() && !server.is_empty() && !session.is_empty() =>
        {
            match fallback::Op::parse(op) {
                Some(op) => Route::Fallback {
                    key,
                    session: [server, session],
                    op,
                },
                None => Route::NotFound,
            }
        }
        ["apps", app_id, rest @ ..] if !app_id.is_empty() => {
            let endpoint = match rest {
                ["events"] => Endpoint::Events,
                ["batch_events"] => Endpoint::BatchEvents,
                ["channels"] => Endpoint::Channels,
                ["channels", name] => Endpoint::Channel(name),
                ["channels", name, "users"] => Endpoint::ChannelUsers(name),
                ["users", user, "terminate_connections"] => Endpoint::TerminateUser(user),
                ["connections"] => Endpoint::Connections,
                _ => return Route::NotFound,
            };
            Route::Api { app_id, endpoint }
        }
        ["users", user_id, "terminate_connections"] => Route::BareTerminate { user_id },
        _ => Route::NotFound,
    }
}

/// Handles one HTTP request (hyper service).
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<ServerState>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let raw_path = req.uri().path().to_string();
    let prefix = state.server.path.clone();
    let path = match prefix.as_str() {
        "" => raw_path.as_str(),
        p => raw_path
            .strip_prefix(p)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or(raw_path.as_str()),
    }
    .to_string();
    if state.console.as_ref().is_some_and(|c| c.on_main_listener())
        && console::is_console_path(&path)
    {
        let base = if raw_path.len() > path.len() {
            format!("{prefix}/console")
        } else {
            "/console".to_string()
        };
        let resp = console::handle(req, &state, &path, &base).await;
        state.metrics.http_call("console", &resp.status());
        return Ok(resp);
    }
    let (endpoint, result) = match route(&path) {
        Route::Root => ("root", Ok(plain("OK"))),
        Route::Up => ("up", Ok(health::up())),
        Route::Ready => ("ready", Ok(health::ready(&state))),
        Route::Metrics => ("metrics", Ok(health::metrics(&state))),
        Route::WebSocket { key } => {
            return Ok(ws::upgrade(req, key, state)
                .await
                .map(BodyExt::boxed_unsync))
        }
        Route::Fallback { key, session, op } => {
            if !state.server.fallback.enabled {
                ("not_found", Err(ApiError::NotFound("Not found".into())))
            } else {
                let resp = fallback::handle(req, &state, key, session, op).await;
                state.metrics.http_call(op.label(), &resp.status());
                return Ok(resp);
            }
        }
        Route::Api { app_id, endpoint } => (
            endpoint.label(),
            api(req, &state, app_id, &endpoint, &raw_path, &path).await,
        ),
        Route::BareTerminate { user_id } => (
            "terminate_connections",
            bare_terminate(req, &state, user_id, &raw_path, &path).await,
        ),
        Route::NotFound => ("not_found", Err(ApiError::NotFound("Not found".into()))),
    };
    let resp = result.unwrap_or_else(ApiError::into_response);
    state.metrics.http_call(endpoint, &resp.status());
    state
        .metrics
        .http_request_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
    if let Some(len) = http_body::Body::size_hint(resp.body()).exact() {
        state.metrics.http_transmitted_bytes.inc_by(len);
    }
    Ok(resp.map(BodyExt::boxed_unsync))
}

/// Handles one request on the console's own listener (`console.listen`): the console's
/// routes, and `/` sends the browser to it; nothing of the Pusher API is served there.
pub async fn handle_console(
    req: Request<Incoming>,
    state: Arc<ServerState>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = if console::is_console_path(&path) {
        console::handle(req, &state, &path, "/console").await
    } else if path == "/" {
        let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *r.status_mut() = http::StatusCode::FOUND;
        r.headers_mut().insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("/console/"),
        );
        r
    } else {
        ApiError::NotFound("Not found".into())
            .into_response()
            .map(BodyExt::boxed_unsync)
    };
    state.metrics.http_call("console", &resp.status());
    Ok(resp)
}

fn plain(text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the body under the app's limit (413 above it, before reading when the declared
/// length says so) within `server.body_timeout` (408).
async fn read_body(body: Incoming, limit: usize, state: &ServerState) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("Request body is larger than {limit} bytes"));
    if http_body::Body::size_hint(&body).lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(too_large());
    }
    let timeout = Duration::from_secs(state.server.body_timeout);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::BadRequest(
            "Could not read the request body".into(),
        )),
        Err(_) => Err(ApiError::RequestTimeout),
    }
}

/// Looks up the app, verifies the query's signature, then reads the body and checks it
/// against the signed `body_md5`: a caller without the secret never makes us read its body.
async fn signed(
    req: Request<Incoming>,
    state: &ServerState,
    app: Arc<App>,
    raw_path: &str,
    path: &str,
) -> Result<(Method, ApiRequest), ApiError> {
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let mut candidates: Vec<&str> = vec![raw_path];
    if path != raw_path {
        candidates.push(path);
    }
    if decoded != raw_path {
        candidates.push(&decoded);
    }
    signature::verify_query(&app, parts.method.as_str(), &candidates, &query, now_unix())?;
    let conn = parts.extensions.get::<EdgeConn>();
    if let Some(conn) = conn {
        conn.trusted();
    }
    let body = match read_body(body, app.settings.max_http_body_bytes, state).await {
        Err(ApiError::RequestTimeout) => {
            if let Some(conn) = conn {
                conn.edge().timed_out(TimeoutPhase::Body);
            }
            return Err(ApiError::RequestTimeout);
        }
        other => other?,
    };
    state.metrics.http_received_bytes.inc_by(body.len() as u64);
    signature::verify_body(&query, &body)?;
    let hub = state.hub(&app);
    if parts.method == Method::GET && !hub.take_read_request() {
        hub.metrics.read_rate_limited.inc();
        return Err(ApiError::TooManyRequests(
            "Read request rate limit exceeded".into(),
        ));
    }
    Ok((
        parts.method,
        ApiRequest {
            app,
            hub,
            query,
            headers: parts.headers,
            body,
        },
    ))
}

async fn api(
    req: Request<Incoming>,
    state: &ServerState,
    app_id: &str,
    endpoint: &Endpoint<'_>,
    raw_path: &str,
    path: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if req.method() != endpoint.method() {
        return Err(ApiError::MethodNotAllowed);
    }
    let Some(app) = state.apps.find_by_id(app_id) else {
        return Err(ApiError::NotFound(format!(
            "No matching application for ID [{app_id}]"
        )));
    };
    if !app.settings.enabled {
        return Err(ApiError::Forbidden("Application disabled".into()));
    }
    let (_, r) = signed(req, state, app, raw_path, path).await?;
    match endpoint {
        Endpoint::Events => events::trigger(state, &r).await,
        Endpoint::BatchEvents => events::batch(state, &r).await,
        Endpoint::Channels => channels::list(state, &r).await,
        Endpoint::Channel(name) => channels::show(state, &r, &decode_segment(name)).await,
        Endpoint::ChannelUsers(name) => channels::users(state, &r, &decode_segment(name)).await,
        Endpoint::TerminateUser(user) => users::terminate(state, &r, &decode_segment(user)),
        Endpoint::Connections => channels::connections(state, &r).await,
    }
}

async fn bare_terminate(
    req: Request<Incoming>,
    state: &ServerState,
    user_id: &str,
    raw_path: &str,
    path: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed);
    }
    let query = Query::parse(req.uri().query());
    let key = query
        .get("auth_key")
        .ok_or_else(|| ApiError::Unauthorized("Missing auth_key".into()))?;
    let app = state
        .apps
        .find_by_key(key)
        .ok_or_else(|| ApiError::Unauthorized("Unknown auth_key".into()))?;
    let (_, r) = signed(req, state, app, raw_path, path).await?;
    users::terminate(state, &r, &decode_segment(user_id))
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn ok_json(body: &serde_json::Value) -> Response<Full<Bytes>> {
    json_response(http::StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/app/key"), Route::WebSocket { key: "key" }));
        assert!(matches!(
            route("/apps/1/events"),
            Route::Api {
                app_id: "1",
                endpoint: Endpoint::Events
            }
        ));
        assert!(matches!(
            route("/apps/1/channels/presence-a%20b/users"),
            Route::Api {
                endpoint: Endpoint::ChannelUsers("presence-a%20b"),
                ..
            }
        ));
        assert!(matches!(
            route("/apps/1/users/7/terminate_connections"),
            Route::Api {
                endpoint: Endpoint::TerminateUser("7"),
                ..
            }
        ));
        assert!(matches!(route("/apps/1/nope"), Route::NotFound));
        assert!(matches!(route("/apps/1"), Route::NotFound));
        assert_eq!(Endpoint::Events.method(), Method::POST);
        assert_eq!(Endpoint::Connections.method(), Method::GET);
        assert!(matches!(
            route("/users/5/terminate_connections"),
            Route::BareTerminate { user_id: "5" }
        ));
        assert!(matches!(route("/up"), Route::Up));
        assert!(matches!(route("/pusher/app/key/xhr"), Route::NotFound));
        assert!(matches!(
            route("/pusher/app/key/123/abcdefgh/xhr_streaming"),
            Route::Fallback {
                key: "key",
                session: ["123", "abcdefgh"],
                op: fallback::Op::Streaming
            }
        ));
        assert!(matches!(
            route("/app/key/1/a/xhr_send"),
            Route::Fallback {
                op: fallback::Op::Send,
                ..
            }
        ));
        assert!(matches!(route("/pusher/app/key/1/a/nope"), Route::NotFound));
        assert!(matches!(route("/app/"), Route::NotFound));
    }
}
