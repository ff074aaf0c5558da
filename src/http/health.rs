//! `GET /up` (alive), `GET /ready` (accepting traffic) and `GET /metrics`.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::error::json_response;
use crate::state::ServerState;

pub(super) fn up() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({"health": "OK"}))
}

/// Not ready while draining or while the cluster adapter cannot reach its peers.
pub(super) fn ready(state: &ServerState) -> Response<Full<Bytes>> {
    let draining = state.is_draining();
    let adapter = state.broadcaster.adapter().is_healthy();
    let ok = !draining && adapter;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        &json!({"ready": ok, "draining": draining, "adapter_healthy": adapter}),
    )
}

pub(super) fn metrics(state: &ServerState) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// The metrics-only listener's handler.
pub fn metrics_only(state: &ServerState, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => metrics(state),
        "/up" => up(),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "Not found", "code": 404}),
        ),
    }
}
