//! The WebSocket endpoint `GET /app/{key}`: the handshake checks of protocol.md 1.2 in order, then the
//! upgrade. A refused connection is still upgraded so the client reads `pusher:error` and the
//! close code (pusher-js decides whether to retry from them). An admitted client's
//! `permessage-deflate` offer is answered here (`connection::deflate::negotiate`) when its app
//! has compression on.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::debug;

use super::edge::EdgeConn;
use super::error::ApiError;
use super::signature::Query;
use super::Peer;
use crate::connection::{self, deflate, Admission, ConnectionSlot};
use crate::protocol::ErrorKind;
use crate::state::ServerState;

pub(super) fn admit(req: &Request<Incoming>, key: &str, state: &Arc<ServerState>) -> Admission {
    if state.is_draining() {
        return Admission::Refused(ErrorKind::ShuttingDown);
    }
    let Some(app) = state.apps.find_by_key(key) else {
        return Admission::Refused(ErrorKind::AppNotFound);
    };
    if !app.settings.enabled {
        return Admission::Refused(ErrorKind::AppDisabled);
    }
    if app.settings.tls_only && req.extensions().get::<crate::tls::Secure>().is_none() {
        let forwarded_tls = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
        if !forwarded_tls {
            return Admission::Refused(ErrorKind::TlsOnly);
        }
    }
    let query = Query::parse(req.uri().query());
    if let Some(p) = query.get("protocol") {
        match p.parse::<u32>() {
            Err(_) => return Admission::Refused(ErrorKind::InvalidVersionFormat),
            Ok(v) if !(4..=7).contains(&v) => {
                return Admission::Refused(ErrorKind::UnsupportedProtocol)
            }
            Ok(_) => {}
        }
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !app.origin_allowed(origin) {
        return Admission::Refused(ErrorKind::OriginNotAllowed);
    }
    match ConnectionSlot::reserve(state, state.hub(&app), client_ip(req, state)) {
        Ok(slot) => Admission::Accepted { app, slot },
        Err(kind) => Admission::Refused(kind),
    }
}

/// The client address counted against `server.max_connections_per_ip`: the last address in
/// `server.client_ip_header` (the one the proxy in front added), else the TCP peer's.
fn client_ip(req: &Request<Incoming>, state: &ServerState) -> Option<IpAddr> {
    state.server.max_connections_per_ip?;
    let from_header = state.server.client_ip_header.as_deref().and_then(|name| {
        let value = req.headers().get(name)?.to_str().ok()?;
        value
            .rsplit(',')
            .map(str::trim)
            .find(|a| !a.is_empty())?
            .parse()
            .ok()
    });
    from_header.or_else(|| req.extensions().get::<Peer>().map(|p| p.0.ip()))
}

pub(super) async fn upgrade(
    mut req: Request<Incoming>,
    key: &str,
    state: Arc<ServerState>,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return ApiError::UpgradeRequired.into_response();
    }
    let mut admission = admit(&req, key, &state);
    if matches!(admission, Admission::Accepted { .. }) {
        // An admitted socket holds connection slots, bounded by the connection limits; it
        // must not be shed while the awaits below hold them, which would leak them.
        if let Some(conn) = req.extensions().get::<EdgeConn>() {
            conn.trusted();
        }
    }
    // The app's connection quota is cluster-wide.
    if let Admission::Accepted { slot, .. } = &mut admission {
        if let Err(kind) = slot.reserve_cluster().await {
            admission = Admission::Refused(kind);
        }
    }
    if let Admission::Refused(kind) = &admission {
        state.metrics.refused(kind.code());
    }
    let extensions = match &admission {
        Admission::Accepted { app, .. } if app.settings.deflate_threshold.is_some() => {
            deflate::negotiate(
                req.headers()
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
        }
        _ => None,
    };
    let (mut response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            if let Admission::Accepted { slot, .. } = admission {
                slot.release().await;
            }
            debug!(error = %e, "bad upgrade request");
            return ApiError::BadRequest("Invalid WebSocket upgrade request".into())
                .into_response();
        }
    };
    if let Some(answer) = extensions {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            header::HeaderValue::from_static(answer),
        );
    }
    let deflate = extensions.is_some();
    let task = connection::run(fut, admission, deflate, state);
    // The socket's task belongs to the edge that accepted it, so a drain waits for it.
    match req.extensions().get::<EdgeConn>() {
        Some(conn) => drop(conn.edge().spawn(task)),
        None => drop(tokio::spawn(task)),
    }
    response.map(|_| Full::new(Bytes::new()))
}
