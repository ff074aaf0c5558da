//! The debug console (docs/operations.md, "Debug console"): a page served from the binary
//! (`page/`: one HTML file, a script and a style sheet, embedded: no network needed), the
//! live feed of one app as Server-Sent Events from its `Tap`, and an event creator that
//! publishes as `POST /apps/{id}/events` does.
//!
//! Routes, under `/console` on the console's own listener (or on the main listener when
//! `console.on_main_listener` asks for it):
//!
//! - `GET /console/` the page, `GET /console/console.js`, `GET /console/console.css`;
//! - `POST /console/session` `{app_id, token}`: signs in (a cookie for that app), `DELETE`
//!   signs out;
//! - `GET /console/apps/{id}/stream`: the feed (`text/event-stream`, one JSON record per
//!   `data:` line);
//! - `POST /console/apps/{id}/events` `{channel, name, data}`: the event creator.
//!
//! A request for an app carries the admin token (`console.token`, every app) or the app's
//! secret, as `Authorization: Bearer …` or as the sign-in cookie (an HMAC of the credential
//! and the app id, so the cookie never holds the secret itself). None: 401; a wrong one: 403.
//!
//! The feed samples: one viewer is sent at most `max_entries_per_second`; what the tap
//! overwrote before the viewer read it, and what the rate left out, is counted and reported
//! as `{"kind":"skipped","count":n}` before the next entry (or within a second).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use super::error::json_response;
use super::{read_body, ApiError, Body};
use crate::app::App;
use crate::config::ConsoleConfig;
use crate::ratelimit::TokenBucket;
use crate::state::ServerState;
use crate::tap::Watch;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/console.js");
const STYLE: &str = include_str!("page/console.css");

/// The sign-in cookie's name.
const COOKIE: &str = "resound_console";
/// The largest body the console accepts (sign-in, an event from the creator).
const MAX_BODY: usize = 64 * 1024;
/// How often a viewer hears of what was skipped when nothing else is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Idle flushes after which the stream sends a comment, so that proxies keep it open.
const KEEPALIVE_TICKS: u32 = 15;

/// The console's settings and its count of viewers.
#[derive(Debug)]
pub struct Console {
    config: ConsoleConfig,
    viewers: Arc<AtomicUsize>,
}

impl Console {
    pub fn new(config: ConsoleConfig) -> Console {
        Console {
            config,
            viewers: Arc::default(),
        }
    }

    /// Served under `/console` on the main listener (rather than on its own).
    pub fn on_main_listener(&self) -> bool {
        self.config.on_main_listener
    }

    /// `host:port` of its own listener.
    pub fn listen(&self) -> &str {
        &self.config.listen
    }

    /// Streams open now.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Acquire)
    }
}

/// Whether `path` (the prefix stripped) is one of the console's.
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// One console request. `base` is the path the console lives under (`/console`, or with the
/// server's prefix on the main listener), for the cookie's `Path`.
pub async fn handle(
    req: Request<Incoming>,
    state: &Arc<ServerState>,
    path: &str,
    base: &str,
) -> Response<Body> {
    let Some(console) = &state.console else {
        return error(ApiError::NotFound("Not found".into()));
    };
    let rest = path.strip_prefix("/console").unwrap_or(path);
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let result = match (method, segs.as_slice()) {
        (Method::GET, [""]) if rest.is_empty() => Ok(redirect(&format!("{base}/"))),
        (Method::GET, [""]) => Ok(asset(INDEX, "text/html; charset=utf-8")),
        (Method::GET, ["console.js"]) => Ok(asset(SCRIPT, "text/javascript; charset=utf-8")),
        (Method::GET, ["console.css"]) => Ok(asset(STYLE, "text/css; charset=utf-8")),
        (Method::POST, ["session"]) => sign_in(req, state, console, base).await,
        (Method::DELETE, ["session"]) => Ok(sign_out(base)),
        (Method::GET, ["apps", id, "stream"]) => {
            let id = super::decode_segment(id);
            match authorise(&req, state, console, &id) {
                Ok(app) => stream(state, console, &app),
                Err(e) => Err(e),
            }
        }
        (Method::POST, ["apps", id, "events"]) => {
            let id = super::decode_segment(id);
            match authorise(&req, state, console, &id) {
                Ok(app) => create_event(req, state, &app).await,
                Err(e) => Err(e),
            }
        }
        (_, ["" | "console.js" | "console.css" | "session"] | ["apps", _, "stream" | "events"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(ApiError::NotFound("Not found".into())),
    };
    result.unwrap_or_else(error)
}

fn error(e: ApiError) -> Response<Body> {
    e.into_response().map(BodyExt::boxed_unsync)
}

/// Headers every console answer carries: nothing but the console's own origin may load,
/// frame or be reached from it.
fn guarded(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    guarded(resp)
}

fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    guarded(resp)
}

/// The cookie's value for `credential` and `app_id`: an HMAC, so that the browser never
/// holds the credential itself, and a cookie for one app opens no other.
fn cookie_value(credential: &str, app_id: &str) -> String {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(credential.as_bytes()) else {
        // Unreachable: HMAC takes a key of any length.
        return String::new();
    };
    mac.update(b"resound console\n");
    mac.update(app_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The credentials that open `app`: the admin token (when set) and the app's secret.
fn credentials<'a>(console: &'a Console, app: &'a App) -> impl Iterator<Item = &'a str> {
    [console.config.token.as_str(), app.secret.as_str()]
        .into_iter()
        .filter(|c| !c.is_empty())
}

/// The app `id` if the request carries a credential that opens it.
fn authorise(
    req: &Request<Incoming>,
    state: &ServerState,
    console: &Console,
    id: &str,
) -> Result<Arc<App>, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value);
    if bearer.is_none() && cookie.is_none() {
        return Err(ApiError::Unauthorized(
            "Sign in with the console token or the app's secret".into(),
        ));
    }
    let refused = || ApiError::Forbidden("This credential does not open this app".into());
    let app = state.apps.find_by_id(id).ok_or_else(refused)?;
    let opens = credentials(console, &app).any(|c| {
        bearer.is_some_and(|b| same(b, c)) || cookie.is_some_and(|k| same(k, &cookie_value(c, id)))
    });
    if opens {
        Ok(app)
    } else {
        Err(refused())
    }
}

async fn json_body(req: Request<Incoming>, state: &ServerState) -> Result<Value, ApiError> {
    let body = read_body(req.into_body(), MAX_BODY, state).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("Malformed JSON body: {e}")))
}

async fn sign_in(
    req: Request<Incoming>,
    state: &ServerState,
    console: &Console,
    base: &str,
) -> Result<Response<Body>, ApiError> {
    let body = json_body(req, state).await?;
    let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    let (id, token) = (field("app_id"), field("token"));
    if token.is_empty() {
        return Err(ApiError::Unauthorized(
            "Sign in with the console token or the app's secret".into(),
        ));
    }
    let refused = || ApiError::Forbidden("This credential does not open this app".into());
    let app = state.apps.find_by_id(id).ok_or_else(refused)?;
    let credential = credentials(console, &app)
        .find(|c| same(token, c))
        .ok_or_else(refused)?;
    let cookie = format!(
        "{COOKIE}={}; Path={base}; HttpOnly; SameSite=Strict",
        cookie_value(credential, id)
    );
    let mut resp = no_content();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn sign_out(base: &str) -> Response<Body> {
    let mut resp = no_content();
    let cookie = format!("{COOKIE}=; Path={base}; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn create_event(
    req: Request<Incoming>,
    state: &ServerState,
    app: &Arc<App>,
) -> Result<Response<Body>, ApiError> {
    let body = json_body(req, state).await?;
    let hub = state.hub(app);
    super::events::trigger_from_console(state, &hub, &body).await?;
    Ok(guarded(
        json_response(StatusCode::OK, &json!({})).map(BodyExt::boxed_unsync),
    ))
}

/// A viewer's place among the node's `max_viewers`, given back when its stream ends.
struct ViewerSlot(Arc<AtomicUsize>);

impl ViewerSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<ViewerSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ViewerSlot(count.clone()))
    }
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open feed.
struct Viewer {
    watch: Watch,
    rate: TokenBucket,
    /// Entries not sent since the last `skipped` record.
    skipped: u64,
    first: Option<Bytes>,
    flush: tokio::time::Interval,
    idle_ticks: u32,
    _slot: ViewerSlot,
}

/// One SSE record of `value`.
fn sse(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    // A record is always serialisable (strings, numbers, options); `{}` would be shown as an
    // unknown record rather than break the stream.
    out.extend(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()));
    out.extend_from_slice(b"\n\n");
    out
}

impl Viewer {
    /// Takes what is skipped so far as a record (nothing when none).
    fn skipped_record(&mut self) -> Vec<u8> {
        match std::mem::take(&mut self.skipped) {
            0 => Vec::new(),
            n => sse(&json!({"kind": "skipped", "count": n})),
        }
    }

    /// The next bytes of the stream; `None` ends it (the tap is gone).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            tokio::select! {
                r = self.watch.rx.recv() => match r {
                    Ok(record) => {
                        if self.rate.try_take(1) {
                            let mut out = self.skipped_record();
                            out.extend(sse(&*record));
                            self.idle_ticks = 0;
                            return Some(Bytes::from(out));
                        }
                        self.skipped += 1;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.skipped += n,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.flush.tick() => {
                    let out = self.skipped_record();
                    if !out.is_empty() {
                        self.idle_ticks = 0;
                        return Some(Bytes::from(out));
                    }
                    self.idle_ticks += 1;
                    if self.idle_ticks >= KEEPALIVE_TICKS {
                        self.idle_ticks = 0;
                        return Some(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
            }
        }
    }
}

fn stream(
    state: &ServerState,
    console: &Console,
    app: &Arc<App>,
) -> Result<Response<Body>, ApiError> {
    let hub = state.hub(app);
    let slot = ViewerSlot::take(&console.viewers, console.config.max_viewers)
        .ok_or_else(|| ApiError::TooManyRequests("Too many console viewers".into()))?;
    let watch = hub
        .tap
        .subscribe()
        .ok_or_else(|| ApiError::NotFound("Not found".into()))?;
    let per_second = console.config.max_entries_per_second;
    let ready = sse(&json!({
        "kind": "ready",
        "app_id": app.id.as_str(),
        "max_entries_per_second": per_second,
    }));
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let viewer = Viewer {
        watch,
        rate: TokenBucket::new(per_second),
        skipped: 0,
        first: Some(Bytes::from(ready)),
        flush,
        idle_ticks: 0,
        _slot: slot,
    };
    let chunks = futures_util::stream::unfold(viewer, |mut v| async move {
        let chunk = v.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), v))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(chunks)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // Proxies that buffer responses (nginx) would hold the feed back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(guarded(resp))
}
