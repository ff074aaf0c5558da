//! Channel queries (spec 5.6.3–5.6.5) and Reverb's `GET /apps/{id}/connections`.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tracing::warn;

use super::{ok_json, ApiError, ApiRequest};
use crate::protocol::ChannelName;
use crate::state::ServerState;

/// A backend error while answering `query`: logged here, answered with the fixed 503.
fn unavailable<E: std::fmt::Display>(query: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| {
        warn!(query, error = %e, "cluster backend unavailable; answering 503");
        ApiError::Unavailable
    }
}

fn attributes(r: &ApiRequest) -> Vec<String> {
    r.query
        .get("info")
        .map(|i| {
            i.split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /apps/{id}/channels`: occupied channels, `{}` when none.
pub(super) async fn list(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let prefix = r.query.get("filter_by_prefix").unwrap_or("");
    let info = attributes(r);
    let want_users = info.iter().any(|a| a == "user_count");
    let want_subs = info.iter().any(|a| a == "subscription_count");
    if want_users && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "info=user_count requires filter_by_prefix to start with presence-".into(),
        ));
    }
    let mut channels = Map::new();
    let mut occupied = state
        .cluster
        .occupied(&r.hub, prefix)
        .await
        .map_err(unavailable("occupied channels"))?;
    occupied.sort();
    for (name, count) in occupied {
        let mut attrs = Map::new();
        if want_users && name.starts_with("presence-") {
            let n = state
                .presence
                .members(&r.app.id, &name)
                .await
                .map_or(0, |m| m.len());
            attrs.insert("user_count".into(), json!(n));
        }
        if want_subs {
            attrs.insert("subscription_count".into(), json!(count));
        }
        channels.insert(name, Value::Object(attrs));
    }
    Ok(ok_json(&json!({ "channels": channels })))
}

fn parse_name(r: &ApiRequest, name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, r.app.settings.max_channel_name_length)
        .map_err(|e| ApiError::BadRequest(format!("Invalid channel name {name:?}: {e}")))
}

/// `GET /apps/{id}/channels/{name}`: `occupied` always, plus the requested attributes.
pub(super) async fn show(
    state: &ServerState,
    r: &ApiRequest,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let channel = parse_name(r, name)?;
    let info = attributes(r);
    if info.iter().any(|a| a == "user_count") && !channel.kind().is_presence() {
        return Err(ApiError::BadRequest(
            "user_count is only available for presence channels".into(),
        ));
    }
    let count = state
        .cluster
        .subscription_count(&r.hub, channel.as_str())
        .await
        .map_err(unavailable("subscription count"))?;
    let mut out = Map::new();
    out.insert("occupied".into(), json!(count > 0));
    for a in &info {
        match a.as_str() {
            "user_count" => {
                let n = state
                    .presence
                    .members(&r.app.id, channel.as_str())
                    .await
                    .map_or(0, |m| m.len());
                out.insert("user_count".into(), json!(n));
            }
            "subscription_count" => {
                out.insert("subscription_count".into(), json!(count));
            }
            "cache" => {
                let cached = state
                    .cluster
                    .cached(&r.hub, channel.as_str())
                    .await
                    .map_err(unavailable("cached event"))?
                    .map(|c| {
                        let ttl = c
                            .expires
                            .saturating_duration_since(std::time::Instant::now());
                        json!({"data": &*c.data, "ttl": ttl.as_secs()})
                    });
                out.insert("cache".into(), cached.unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    Ok(ok_json(&Value::Object(out)))
}

/// `GET /apps/{id}/channels/{name}/users`: presence members, one per distinct user.
pub(super) async fn users(
    state: &ServerState,
    r: &ApiRequest,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let channel = parse_name(r, name)?;
    if !channel.kind().is_presence() {
        return Err(ApiError::BadRequest(
            "Users are only available for presence channels".into(),
        ));
    }
    let members = state
        .presence
        .members(&r.app.id, channel.as_str())
        .await
        .map_err(unavailable("presence members"))?;
    let users: Vec<Value> = members
        .iter()
        .map(|m| json!({"id": m.user_id.as_str()}))
        .collect();
    Ok(ok_json(&json!({ "users": users })))
}

/// `GET /apps/{id}/connections` (Reverb): open connections of the app, cluster-wide.
pub(super) async fn connections(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let n = state
        .cluster
        .connections(&r.hub)
        .await
        .map_err(unavailable("connection count"))?;
    Ok(ok_json(&json!({ "connections": n })))
}
